"""`deployctl up` end to end against the fake Vast and RunPod clouds: the real CLI, guard
and journal.

The fake really runs each instance's bootstrap (the guard plus a fake engine), so the
guard's self-destroy call reaches the fake's API with the instance-scoped key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.state import State
from tests.fakes import DEFAULT_RUNPOD_KEY, DEFAULT_VAST_KEY, serve_runpod, serve_vast

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TASK = "qwen2.5-7b"


@pytest.fixture(params=["vast", "runpod"])
def vast(request, monkeypatch, tmp_path):
    """A fake cloud (named `vast` for history: it is Vast, then RunPod), wired by env."""
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    serve = serve_vast if request.param == "vast" else serve_runpod
    with serve() as (api, url):
        api.fleet.boot_delay_s = 0.5
        api.provider_name = request.param
        if request.param == "vast":
            monkeypatch.setenv("VAST_URL", url)
            monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
        else:
            monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
            monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_RUNPOD_KEY)
            monkeypatch.setenv("RUNPOD_PROXY_URL", api.proxy_url)
        yield api
        # Nothing may be left running on the fake cloud, or as a process here.
        leftover = [i.instance_id for i in api.fleet.live()]
        assert leftover == [], f"instances leaked: {leftover}"
    assert api.fleet.runner.stray_pids() == []


def cli_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def wait_for(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def chat(endpoint: str, key: str) -> dict:
    import httpx

    r = httpx.post(f"{endpoint}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": TASK, "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 8}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_up_request_idle_self_destroy_then_reap_finds_nothing(vast, capsys):
    code, up = cli_json(capsys, "up", TASK, "--provider", vast.provider_name, "--keep-alive", "3s",
                        "--show-key", "--ready-timeout", "60")
    assert code == 0
    assert chat(up["endpoint_url"], up["key"])["usage"]["completion_tokens"] > 0
    iid = up["instance_id"]
    wait_for(lambda: iid in vast.fleet.destroyed, 30, "the guard's idle self-destroy")
    assert vast.fleet.destroyed[iid].destroyed_by == "scoped"  # the instance-scoped key
    code, reaped = cli_json(capsys, "reap")
    assert code == 0 and reaped["orphans"] == [] and reaped["failed"] == []
    code, status = cli_json(capsys, "status", "--all")
    (row,) = status["deployments"]
    assert row["status"] == "ended"


def test_fallback_when_first_two_offers_vanish_at_rent(vast, capsys):
    vast.fleet.vanish_next(2)
    code, up = cli_json(
        capsys, "up", TASK, "--provider", vast.provider_name, "--ready-timeout", "60"
    )
    assert code == 0
    with State.open() as state:
        attempts = state.attempts(up["deployment_id"])
    assert [a.outcome for a in attempts] == ["unavailable", "unavailable", "ready"]
    assert attempts[2].instance_id == up["instance_id"]
    assert len({a.offer_key for a in attempts}) == 3
    code, down = cli_json(capsys, "down", up["deployment_id"])
    assert code == 0 and down["ended"][0]["status"] == "ended"


def test_readiness_never_comes_instances_destroyed_and_next_offer_tried(vast, capsys):
    vast.fleet.engine_args = "--never-ready"
    code = main(["up", TASK, "--provider", vast.provider_name, "--ready-timeout", "3",
                 "--max-attempts", "2", "--json"])
    assert code == 1
    with State.open() as state:
        (dep,) = state.list_deployments()
        attempts = state.attempts(dep.id)
        terminations = [j for j in state.journal(dep.id) if j.action == "terminate"]
    assert [a.outcome for a in attempts] == ["failed", "failed"]
    assert all("not ready" in a.reason for a in attempts)
    assert sorted(j.instance_id for j in terminations) == sorted(a.instance_id for a in attempts)
    assert all(j.state == "done" for j in terminations)  # verified gone
    assert dep.status.value == "failed"


def _up_subprocess(provider: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up", TASK, "--provider", provider,
         "--ready-timeout", "60", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_sigkill_after_rent_then_reap_destroys_the_orphan(vast, capsys):
    vast.fleet.boot_delay_s = 3.0  # long enough to kill the launcher while it waits
    proc = _up_subprocess(vast.provider_name)
    wait_for(lambda: vast.fleet.live(), 30, "the rent")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    (iid,) = [i.instance_id for i in vast.fleet.live()]
    code, reaped = cli_json(capsys, "reap")
    assert code == 0
    assert [o["instance_id"] for o in reaped["orphans"]] == [iid]
    assert [d["instance_id"] for d in reaped["destroyed"]] == [iid]
    assert vast.fleet.live() == []
    with State.open() as state:
        (dep,) = state.list_deployments()
        assert dep.status.value not in ("planning", "launching", "ready")
        assert state.live_instances() == []


def test_sigkill_after_rent_without_reap_the_guard_ttl_destroys_it(vast):
    proc = _up_subprocess(vast.provider_name, "--ttl", "6s", "--keep-alive", "1h")
    wait_for(lambda: vast.fleet.live(), 30, "the rent")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    (iid,) = [i.instance_id for i in vast.fleet.live()]
    wait_for(lambda: iid in vast.fleet.destroyed, 30, "the guard's ttl self-destroy")
    assert vast.fleet.destroyed[iid].destroyed_by == "scoped"


def test_sigterm_during_boot_cleans_up_and_exits_143(vast):
    vast.fleet.boot_delay_s = 5.0
    proc = _up_subprocess(vast.provider_name)
    wait_for(lambda: vast.fleet.live(), 30, "the rent")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert vast.fleet.live() == []
