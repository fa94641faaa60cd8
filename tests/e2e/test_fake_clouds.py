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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TASK = "qwen2.5-7b"


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


def test_up_request_idle_self_destroy_then_reap_finds_nothing(fake_cloud, capsys):
    code, up = cli_json(capsys, "up", TASK, "--provider", fake_cloud.provider_name,
                        "--keep-alive", "3s", "--show-key", "--ready-timeout", "60")
    assert code == 0
    assert chat(up["endpoint_url"], up["key"])["usage"]["completion_tokens"] > 0
    iid = up["instance_id"]
    wait_for(lambda: iid in fake_cloud.fleet.destroyed, 30, "the guard's idle self-destroy")
    assert fake_cloud.fleet.destroyed[iid].destroyed_by == "scoped"  # the instance-scoped key
    code, reaped = cli_json(capsys, "reap")
    assert code == 0 and reaped["orphans"] == [] and reaped["failed"] == []
    code, status = cli_json(capsys, "status", "--all")
    (row,) = status["deployments"]
    assert row["status"] == "ended"


def test_fallback_when_first_two_offers_vanish_at_rent(fake_cloud, capsys):
    fake_cloud.fleet.vanish_next(2)
    code, up = cli_json(
        capsys, "up", TASK, "--provider", fake_cloud.provider_name, "--ready-timeout", "60"
    )
    assert code == 0
    with State.open() as state:
        attempts = state.attempts(up["deployment_id"])
    assert [a.outcome for a in attempts] == ["unavailable", "unavailable", "ready"]
    assert attempts[2].instance_id == up["instance_id"]
    assert len({a.offer_key for a in attempts}) == 3
    code, down = cli_json(capsys, "down", up["deployment_id"])
    assert code == 0 and down["ended"][0]["status"] == "ended"


def test_readiness_never_comes_instances_destroyed_and_next_offer_tried(fake_cloud, capsys):
    fake_cloud.fleet.engine_args = "--never-ready"
    code = main(["up", TASK, "--provider", fake_cloud.provider_name, "--ready-timeout", "3",
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


def test_sigkill_after_rent_then_reap_destroys_the_orphan(fake_cloud, capsys):
    fake_cloud.fleet.boot_delay_s = 3.0  # long enough to kill the launcher while it waits
    proc = _up_subprocess(fake_cloud.provider_name)
    wait_for(lambda: fake_cloud.fleet.live(), 30, "the rent")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    (iid,) = [i.instance_id for i in fake_cloud.fleet.live()]
    code, reaped = cli_json(capsys, "reap")
    assert code == 0
    assert [o["instance_id"] for o in reaped["orphans"]] == [iid]
    assert [d["instance_id"] for d in reaped["destroyed"]] == [iid]
    assert fake_cloud.fleet.live() == []
    with State.open() as state:
        (dep,) = state.list_deployments()
        assert dep.status.value not in ("planning", "launching", "ready")
        assert state.live_instances() == []


def test_sigkill_after_rent_without_reap_the_guard_ttl_destroys_it(fake_cloud):
    proc = _up_subprocess(fake_cloud.provider_name, "--ttl", "6s", "--keep-alive", "1h")
    wait_for(lambda: fake_cloud.fleet.live(), 30, "the rent")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    (iid,) = [i.instance_id for i in fake_cloud.fleet.live()]
    wait_for(lambda: iid in fake_cloud.fleet.destroyed, 30, "the guard's ttl self-destroy")
    assert fake_cloud.fleet.destroyed[iid].destroyed_by == "scoped"


def test_sigterm_during_boot_cleans_up_and_exits_143(fake_cloud):
    fake_cloud.fleet.boot_delay_s = 5.0
    proc = _up_subprocess(fake_cloud.provider_name)
    wait_for(lambda: fake_cloud.fleet.live(), 30, "the rent")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert fake_cloud.fleet.live() == []
