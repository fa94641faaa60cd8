"""The warm agent (`deployctl agent start`): the same commands, streams, exit codes and
signals as the cold path, and a fall back to the cold path whenever it cannot serve."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import ROOT, needs_local_engine

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def agent_env():
    """A short state dir (a unix socket path has ~100 characters) with a running agent."""
    state = tempfile.mkdtemp(prefix="dca")
    env = {**os.environ, "DEPLOYCTL_STATE_DIR": state, "PYTHONPATH": str(ROOT)}
    for var in ("VAST_API_KEY", "RUNPOD_API_KEY", "DEPLOYCTL_NO_AGENT"):
        env.pop(var, None)
    started = _cold(env, "agent", "start", "--idle", "5m")
    assert started.returncode == 0, started.stderr
    yield env
    _cold(env, "agent", "stop")
    _cold(env, "down", "--all", timeout=120)
    reaped = _cold(env, "reap", "--provider", "local", "--json", timeout=120)
    assert reaped.returncode == 0, reaped.stderr
    shutil.rmtree(state, ignore_errors=True)


def _cold(env, *args, timeout=120, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _warm(env, *args, timeout=120, cwd=ROOT):
    """The `deployctl` program (orchestrator.entry): through the agent when it runs."""
    return subprocess.run([sys.executable, "-m", "orchestrator.entry", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _status(env) -> str:
    return _cold(env, "agent", "status").stdout


def _agent_log(env) -> str:
    path = Path(env["DEPLOYCTL_STATE_DIR"]) / "agent.log"
    return path.read_text() if path.exists() else ""


def test_same_output_streams_and_exit_codes_as_cold(agent_env, catalog_dir):
    args = ("plan", "qwen-14b", "--catalog", str(catalog_dir), "--json")
    warm, cold = _warm(agent_env, *args), _cold(agent_env, *args)
    assert warm.returncode == cold.returncode == 0, warm.stderr
    assert json.loads(warm.stdout)["chosen"] == json.loads(cold.stdout)["chosen"]
    assert "command(s) in flight" in _status(agent_env)

    bad = _warm(agent_env, "plan", "no-such-task")
    assert bad.returncode == _cold(agent_env, "plan", "no-such-task").returncode == 2
    assert bad.stdout == "" and "no-such-task" in bad.stderr and "Traceback" not in bad.stderr


def test_child_runs_with_the_callers_env_and_cwd(agent_env, tmp_path):
    """The agent started with another environment and in /: the command must not see it."""
    env = {**agent_env, "DEPLOYCTL_BUDGET_MONTHLY": "17", "RUNPOD_API_KEY": "rp-secret-2x9"}
    shown = json.loads(_warm(env, "config", "show", "--json").stdout)
    assert shown["settings"]["budget.monthly"] == 17.0
    assert shown["sources"]["budget.monthly"] == "env"
    assert "rp-secret-2x9" not in _agent_log(env)  # a request is never logged

    task = tmp_path / "mine.yaml"
    task.write_text((ROOT / "tasks" / "smollm2-135m.yaml").read_text())
    relative = _warm(agent_env, "plan", "./mine.yaml", "--provider", "local", "--json",
                     cwd=tmp_path)  # fmt: skip
    assert relative.returncode == 0, relative.stderr


def test_stale_agent_refuses_and_the_command_runs_cold(agent_env, catalog_dir):
    source = ROOT / "orchestrator" / "units.py"
    before = source.stat()
    try:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        done = _warm(agent_env, "plan", "qwen-14b", "--catalog", str(catalog_dir), "--json")
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["chosen"]
    assert "stale" in _agent_log(agent_env)
    deadline = time.monotonic() + 10
    while "no agent is running" not in _status(agent_env):
        assert time.monotonic() < deadline, "a stale agent kept running"
        time.sleep(0.2)


def test_no_agent_and_too_long_paths_run_cold(tmp_path):
    env = {**os.environ, "DEPLOYCTL_STATE_DIR": str(tmp_path / ("x" * 120)),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    assert _warm(env, "--help").returncode == 0
    refused = _cold(env, "agent", "start")
    assert refused.returncode == 2
    assert "longer than" in refused.stderr and "DEPLOYCTL_STATE_DIR" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _cold(env, "agent", "start", "--idle", "soon").returncode == 2


def test_idle_agent_exits_and_socket_is_private():
    state = tempfile.mkdtemp(prefix="dca")
    env = {**os.environ, "DEPLOYCTL_STATE_DIR": state, "PYTHONPATH": str(ROOT)}
    try:
        assert _cold(env, "agent", "start", "--idle", "1s").returncode == 0
        sock = Path(state) / "agent.sock"
        assert sock.stat().st_mode & 0o077 == 0 and Path(state).stat().st_mode & 0o077 == 0
        deadline = time.monotonic() + 15
        while "no agent is running" not in _status(env):
            assert time.monotonic() < deadline, "the agent did not exit when idle"
            time.sleep(0.2)
        assert not sock.exists()
    finally:
        _cold(env, "agent", "stop")
        shutil.rmtree(state, ignore_errors=True)


def _start_up(env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.entry", "up", "smollm2-135m", "--provider",
         "local", "--keep-alive", "5m", "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _registered(env) -> list[Path]:
    return list((Path(env["DEPLOYCTL_STATE_DIR"]) / "local").glob("deployctl-*.json"))


def _wait_loading(proc: subprocess.Popen, env) -> None:
    """Until the child has rented and the instance's guard runs (it wrote leader.pid)."""
    local = Path(env["DEPLOYCTL_STATE_DIR"]) / "local"
    deadline = time.monotonic() + 60
    while not any(local.glob("deployctl-*/leader.pid")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _live(env) -> list:
    return json.loads(_cold(env, "status", "--json").stdout)["deployments"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_caller_stops_the_child_and_destroys(agent_env, sig, code):
    needs_local_engine()
    proc = _start_up(agent_env)
    _wait_loading(proc, agent_env)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert _live(agent_env) == []
    assert _registered(agent_env) == []


@pytest.mark.slow
def test_caller_killed_kills_the_child_and_reap_cleans_up(agent_env):
    needs_local_engine()
    proc = _start_up(agent_env)
    _wait_loading(proc, agent_env)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15  # the child dies with its caller, as a cold `up` would
    while "0 command(s) in flight" not in _status(agent_env):
        assert time.monotonic() < deadline, _status(agent_env)
        time.sleep(0.1)
    assert len(_registered(agent_env)) == 1  # left behind, as a SIGKILLed cold `up` leaves it
    reaped = json.loads(_cold(agent_env, "reap", "--provider", "local", "--json").stdout)
    assert len(reaped["destroyed"]) == 1, reaped
    assert _registered(agent_env) == []
