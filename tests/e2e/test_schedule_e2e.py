"""Scheduled sessions end to end: the real CLI (`schedule add`, `tick`, `list`, `status`)
on the local provider with the real engine, and on the fake Vast and RunPod clouds whose
instances run the real guard. Windows are seconds long, on the real clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from orchestrator.state import State

from .conftest import needs_local_engine

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
fake_cloud_boot_delay_s = 0.3
ROOT = Path(__file__).resolve().parents[2]


def _at(seconds_from_now: float) -> tuple[str, datetime]:
    when = (datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)).replace(
        microsecond=0)
    return when.isoformat(sep=" "), when


def _wait_for(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _health_down(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return True
    return False


def _status_sessions(doc: dict) -> list[str]:
    """The statuses of the upcoming and ongoing sessions `deployctl status` lists."""
    return [s["status"] for s in doc["sessions"]]


def test_local_session_ready_at_its_start_gone_at_its_end_without_another_tick(cli):
    needs_local_engine()
    at, start = _at(12)
    added = cli.json("schedule", "add", "smollm2-135m", "--at", at, "--for", "10s",
                     "--lead", "12s", "--grace", "2s", "--provider", "local")
    assert added["session"]["status"] == "upcoming"
    tick = cli.json("schedule", "tick")  # start - lead has come: it starts now
    (action,) = tick["actions"]
    assert action["kind"] == "started"
    ready_at = datetime.now(timezone.utc)
    assert ready_at <= start, "the endpoint must answer by the window's start"

    (schedule,) = cli.json("schedule", "list", "--show-key")["schedules"]
    (session,) = schedule["sessions"]
    endpoint, key = session["endpoint_url"], session["key"]
    r = httpx.post(f"{endpoint}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                   timeout=60)
    assert r.status_code == 200, r.text
    guard = httpx.get(endpoint.removesuffix("/v1") + "/deployctl/status",
                      headers={"Authorization": f"Bearer {key}"}, timeout=5).json()
    assert guard["keep_alive_s"] >= 10 and guard["keep_alive_s"] == guard["ttl_s"]
    assert _status_sessions(cli.json("status")) == ["running"]

    # No tick from now on: its guard must end it at the window's end + grace.
    health = endpoint.removesuffix("/v1") + "/health"
    _wait_for(lambda: _health_down(health), 40, "the guard's ttl teardown")
    gone_at = datetime.now(timezone.utc)
    end = start + timedelta(seconds=10)
    assert end - timedelta(seconds=1) <= gone_at <= end + timedelta(seconds=2 + 4), gone_at

    late = cli.json("schedule", "tick")  # whenever a tick comes, the session is closed
    assert [a["kind"] for a in late["actions"]] == ["ended"]
    (dep,) = cli.json("status", "--all")["deployments"]
    assert dep["status"] == "ended"


def _deployctl(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def _json(*args: str) -> dict:
    proc = _deployctl(*args, "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_two_ticks_at_once_start_one_deployment_and_its_guard_ends_it(fake_cloud):
    at, start = _at(3)
    _json("schedule", "add", "qwen2.5-7b", "--at", at, "--for", "4s", "--lead", "1m",
          "--grace", "2s", "--provider", fake_cloud.provider_name)
    ticks = [_deployctl("schedule", "tick", "--json") for _ in range(3)]
    results = [(p.communicate(timeout=120), p.returncode) for p in ticks]
    assert all(code == 0 for _, code in results), results
    actions = [a for (out, _), _ in results for a in json.loads(out)["actions"]]
    assert [a["kind"] for a in actions] == ["started"]
    (inst,) = fake_cloud.fleet.live()
    ttl = int(inst.env["DEPLOYCTL_TTL_S"])
    left = (start + timedelta(seconds=4 + 2) - datetime.now(timezone.utc)).total_seconds()
    assert left - 1 <= ttl <= left + 10  # window end + grace, counted from the launch
    assert inst.env["DEPLOYCTL_KEEP_ALIVE_S"] == inst.env["DEPLOYCTL_TTL_S"]
    with State.open() as state:
        assert len(state.list_deployments()) == 1

    _wait_for(lambda: inst.instance_id in fake_cloud.fleet.destroyed, 30, "the guard's ttl")
    assert fake_cloud.fleet.destroyed[inst.instance_id].destroyed_by == "scoped"
    assert [a["kind"] for a in _json("schedule", "tick")["actions"]] == ["ended"]
    (session,) = _json("schedule", "list")["schedules"][0]["sessions"]
    assert session["status"] == "ended"


def test_a_tick_at_the_end_ends_it_on_time_and_a_late_one_finds_it_missed(fake_cloud):
    at, start = _at(2)
    added = _json("schedule", "add", "qwen2.5-7b", "--at", at, "--for", "3s", "--lead", "1m",
                  "--grace", "5m", "--provider", fake_cloud.provider_name, "--repeat",
                  "0 9 * * *", "--tz", "Europe/Paris")
    assert [a["kind"] for a in _json("schedule", "tick")["actions"]] == ["started"]
    assert _status_sessions(_json("status")) == ["running"]
    time.sleep(max((start + timedelta(seconds=3) - datetime.now(timezone.utc))
                   .total_seconds(), 0))
    report = _json("schedule", "tick")
    assert [a["kind"] for a in report["actions"]] == ["ended"]
    assert fake_cloud.fleet.live() == []  # destroyed by the tick, long before the guard's grace
    # the repeat's next occurrence: tomorrow 09:00 in Paris; a tick after it is over
    sessions = _json("schedule", "list")["schedules"][0]["sessions"]
    nxt = [s for s in sessions if s["status"] == "upcoming"]
    assert len(nxt) == 1 and nxt[0]["starts_local"].endswith("09:00 CET")
    after = datetime.fromisoformat(nxt[0]["ends_at"]) + timedelta(minutes=1)
    late = _json("schedule", "tick", "--now", after.isoformat())
    assert [a["kind"] for a in late["actions"]] == ["missed"]
    assert added["schedule"]["id"] == late["actions"][0]["schedule_id"]
    assert fake_cloud.fleet.live() == []


def test_sigterm_stops_schedule_run_and_a_launch_in_flight_leaves_nothing(fake_cloud):
    if fake_cloud.provider_name != "vast":
        pytest.skip("one cloud is enough for the signal path")
    fake_cloud.fleet.boot_delay_s = 30.0  # still booting when SIGTERM comes
    at, _ = _at(30)
    _json("schedule", "add", "qwen2.5-7b", "--at", at, "--for", "1m", "--lead", "1m",
          "--provider", "vast")
    run = _deployctl("schedule", "run", "--interval", "0.5")
    _wait_for(lambda: fake_cloud.fleet.live(), 30, "the rent")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 143
    assert fake_cloud.fleet.live() == []  # the launcher destroyed what it rented
    (session,) = _json("schedule", "list")["schedules"][0]["sessions"]
    assert session["status"] == "upcoming"  # given back: the next tick starts it again
    _json("schedule", "rm", session["schedule_id"])
    idle = _deployctl("schedule", "run", "--interval", "0.2")  # nothing to do: it just ticks
    time.sleep(1.5)
    idle.send_signal(signal.SIGTERM)
    assert idle.wait(timeout=10) == 0 and "stopped" in idle.communicate()[1]
