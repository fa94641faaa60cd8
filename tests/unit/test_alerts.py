"""Alerts to a Slack-compatible webhook on loopback: once per threshold per month, and a
failing or slow webhook never blocks."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator import alerts
from orchestrator import state as state_mod
from orchestrator.config import validate
from orchestrator.state import State
from tests.receiver import webhook_receiver


@pytest.fixture
def receiver():
    with webhook_receiver() as r:
        yield r


@pytest.fixture
def state(tmp_path):
    with State.open(tmp_path / "state.db") as s:
        yield s


def cfg(url: str | None, **budget):
    return validate({"alerts": {"webhook_url": url, "timeout_s": 0.5},
                     "budget": budget or {"monthly": 10}})


def test_budget_ratio_alert_is_sent_once_a_month(state, receiver):
    c = cfg(receiver.url)
    assert alerts.check_budget(state, c, 7.9) == []
    assert receiver.posts == []
    assert alerts.check_budget(state, c, 8.1) == []
    assert alerts.check_budget(state, c, 9.0) == []  # already sent this month
    (text,) = receiver.texts
    assert text.startswith("deployctl: this month's spend 8.10 USD reached 81% of the 10.00 USD")
    assert receiver.paths == ["/services/T0/B0/hook-secret-42"]
    alerts.check_budget(state, c, 10.5)  # the second threshold: the whole budget
    assert len(receiver.posts) == 2 and "105%" in receiver.texts[1]
    kinds = {(a["kind"], a["subject"], a["delivered"]) for a in state.alerts(
        f"{datetime.now(timezone.utc):%Y-%m}")}
    assert kinds == {("budget_ratio", "0.8", 1), ("budget_exceeded", "1", 1)}


def test_a_failing_webhook_is_a_warning_and_is_retried_later(state, receiver):
    receiver.status = 500
    c = cfg(receiver.url)
    (line,) = alerts.check_budget(state, c, 8.5)
    assert line == "warning: the alert webhook failed (HTTP 500); a later command will retry"
    assert "hook-secret" not in line and "127.0.0.1" not in line
    receiver.status = 200
    assert alerts.check_budget(state, c, 8.5) == []
    assert len(receiver.posts) == 2  # retried once, then delivered
    alerts.check_budget(state, c, 8.6)
    assert len(receiver.posts) == 2


def test_a_slow_webhook_never_blocks(state, receiver):
    receiver.delay_s = 3.0
    started = time.monotonic()
    (line,) = alerts.check_budget(state, cfg(receiver.url), 9.0)
    assert time.monotonic() - started < 1.5  # timeout_s 0.5
    assert "ReadTimeout" in line or "no answer within 0.5 s" in line


def test_an_unreachable_webhook_never_fails_the_command(state):
    (line,) = alerts.check_budget(state, cfg("http://127.0.0.1:9/hook"), 9.0)
    assert line.startswith("warning: the alert webhook failed (")


def test_no_webhook_no_alert_and_nothing_recorded(state):
    assert alerts.check_budget(state, cfg(None), 50.0) == []
    assert state.alerts(f"{datetime.now(timezone.utc):%Y-%m}") == []


def test_a_deployment_past_its_ttl_is_alerted_once(state, receiver, monkeypatch):
    past = datetime.now(timezone.utc) - timedelta(hours=5)
    monkeypatch.setattr(state_mod, "_now", lambda: past)
    dep = state.new_deployment("qwen-14b", "{}", 900, 3600)
    state.update_deployment(dep.id, status="ready", ready_at=past, provider="vast", gpu="A10")
    young = state.new_deployment("qwen-14b", "{}", 900, 10 * 3600)
    monkeypatch.undo()
    deps = state.list_deployments(live_only=True)
    lines = alerts.check_ttl(state, cfg(receiver.url), deps)
    assert len(lines) == 1 and dep.id in lines[0] and young.id not in lines[0]
    assert "past its ttl of 1.0 h" in receiver.texts[0]
    alerts.check_ttl(state, cfg(receiver.url), deps)
    assert len(receiver.posts) == 1  # once per deployment per month


def test_claims_retry_an_undelivered_alert_three_times_and_a_delivered_one_never(state):
    claims = []
    for _ in range(4):
        claims.append(state.claim_alert("2026-03", "ttl", "d1"))
        assert not state.claim_alert("2026-03", "ttl", "d1")  # in flight: nobody else
        state.alert_done("2026-03", "ttl", "d1", delivered=False)
    assert claims == [True, True, True, False]
    assert state.claim_alert("2026-03", "refusal", "budget")
    state.alert_delivered("2026-03", "refusal", "budget")
    assert not state.claim_alert("2026-03", "refusal", "budget")
    assert state.claim_alert("2026-04", "refusal", "budget")  # a new month
