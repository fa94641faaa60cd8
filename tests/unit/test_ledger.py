"""Ledger arithmetic against hand-computed cases: per-instance billing from the journal,
failed attempts, the guard's ttl cap, month attribution, cost per request and token."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from orchestrator import ledger
from orchestrator import state as state_mod
from orchestrator.cost_report import group_bills
from orchestrator.lifecycle import GuardStatus, close_deployment
from orchestrator.models import Attempt, DeploymentStatus
from orchestrator.state import State

T0 = datetime(2026, 3, 10, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, monkeypatch) -> None:
        self.now = T0
        monkeypatch.setattr(state_mod, "_now", lambda: self.now)

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def state(tmp_path):
    with State.open(tmp_path / "state.db") as s:
        yield s


def rent(state: State, clock: Clock, dep_id: str, n: int, t: float, iid: str, price: float):
    """Attempt n: rent intent at T0+t, instance `iid` created at `price`."""
    clock.at(t)
    state.add_attempt(dep_id, Attempt(n=n, provider="vast", offer_key=f"vast:{n}", gpu="A10",
                                      price_per_hour_usd=price, outcome="trying",
                                      started_at=clock.now))
    jid = state.journal_intent(dep_id, "rent", "vast", offer_key=f"vast:{n}")
    state.journal_done(jid, iid)
    state.update_deployment(dep_id, provider="vast", gpu="A10", instance_id=iid,
                            price_per_hour_usd=price)


def terminate(state: State, clock: Clock, dep_id: str, t: float, iid: str) -> None:
    clock.at(t)
    jid = state.journal_intent(dep_id, "terminate", "vast", instance_id=iid)
    state.journal_done(jid, iid, "verified gone")


def new_dep(state: State, clock: Clock, ttl_s: int = 4 * 3600, task: str = "qwen-14b"):
    clock.at(0)
    return state.new_deployment(task, "{}", 900, ttl_s)


def test_one_instance_billed_from_rent_to_verified_terminate(state, clock):
    dep = new_dep(state, clock)
    rent(state, clock, dep.id, 1, 1, "i1", 0.90)
    clock.at(101)
    state.update_deployment(dep.id, status="ready", ready_at=clock.now, gpu_count=2)
    terminate(state, clock, dep.id, 3601, "i1")
    clock.at(3602)
    close_deployment(state, state.get_deployment(dep.id), "down",
                     GuardStatus(requests=600, prompt_tokens=400_000, completion_tokens=200_000,
                                 idle_s=900.0))
    bill = state.bill(dep.id)
    assert bill.billed_s == pytest.approx(3600.0)  # rent (t=1) -> verified gone (t=3601)
    assert bill.cost_usd == pytest.approx(0.90)  # 0.90 $/h x 1 h
    assert bill.gpu_count == 2 and bill.gpu_s == pytest.approx(7200.0)
    assert bill.cold_start_s == pytest.approx(100.0)  # rent -> ready
    assert bill.failed_instances == 0 and bill.failed_instances_cost_usd == 0
    assert (bill.requests, bill.tokens, bill.idle_s) == (600, 600_000, 900.0)
    assert state.get_deployment(dep.id).cost_usd == pytest.approx(0.90)


def test_instances_of_failed_attempts_are_billed_too(state, clock):
    dep = new_dep(state, clock)
    rent(state, clock, dep.id, 1, 0, "i1", 0.50)
    clock.at(590)
    state.finish_attempt(dep.id, 1, "failed", "not ready", instance_id="i1")
    terminate(state, clock, dep.id, 600, "i1")  # 600 s x 0.50 $/h = 0.083333
    rent(state, clock, dep.id, 2, 610, "i2", 1.20)
    clock.at(700)
    state.update_deployment(dep.id, status="ready", ready_at=clock.now)
    terminate(state, clock, dep.id, 4210, "i2")  # 3600 s x 1.20 $/h = 1.20
    close_deployment(state, state.get_deployment(dep.id), "down")
    bill = state.bill(dep.id)
    assert bill.billed_s == pytest.approx(3600.0)
    assert bill.price_per_hour_usd == pytest.approx(1.20)
    assert bill.failed_instances == 1
    assert bill.failed_instances_s == pytest.approx(600.0)
    assert bill.failed_instances_cost_usd == pytest.approx(600 * 0.50 / 3600, abs=1e-6)
    assert bill.cost_usd == pytest.approx(1.20 + 600 * 0.50 / 3600, abs=1e-6)
    assert bill.cold_start_s == pytest.approx(90.0)  # the serving rent (t=610) -> ready


def test_a_launch_whose_attempts_all_failed_is_settled_with_its_instances_cost(state, clock):
    dep = new_dep(state, clock)
    rent(state, clock, dep.id, 1, 0, "i1", 0.60)
    terminate(state, clock, dep.id, 300, "i1")
    rent(state, clock, dep.id, 2, 310, "i2", 0.80)
    terminate(state, clock, dep.id, 610, "i2")
    clock.at(611)
    state.mark_ended(dep.id, "no candidate became ready", status=DeploymentStatus.FAILED)
    assert ledger.settle(state) == [dep.id]
    bill = state.bill(dep.id)
    assert bill.billed_s == 0 and bill.failed_instances == 2
    assert bill.cost_usd == pytest.approx(300 * 0.60 / 3600 + 300 * 0.80 / 3600, abs=1e-6)
    assert ledger.settle(state) == []  # idempotent


def test_an_instance_its_guard_destroyed_bills_until_ttl_not_until_seen_gone(state, clock):
    dep = new_dep(state, clock, ttl_s=3600)
    rent(state, clock, dep.id, 1, 0, "i1", 2.0)
    clock.at(100)
    state.update_deployment(dep.id, status="ready", ready_at=clock.now)
    clock.at(10_000)  # `status` notices only now that the instance is gone
    close_deployment(state, state.get_deployment(dep.id), "instance gone")
    bill = state.bill(dep.id)
    expected_s = 100 + 3600 + ledger.TTL_GRACE_S  # ready + ttl + grace, from rent at t=0
    assert bill.billed_s == pytest.approx(expected_s)
    assert bill.cost_usd == pytest.approx(2.0 * expected_s / 3600)


def test_open_bill_runs_until_now_and_the_month_counts_live_deployments(state, clock):
    old = new_dep(state, clock, task="old")
    rent(state, clock, old.id, 1, 0, "i0", 1.0)
    state.update_deployment(old.id, status="ready", ready_at=clock.now)
    terminate(state, clock, old.id, 3600, "i0")
    close_deployment(state, state.get_deployment(old.id), "down")
    live = new_dep(state, clock, task="live")
    rent(state, clock, live.id, 1, 3600, "i1", 0.5)
    clock.at(3660)
    state.update_deployment(live.id, status="ready", ready_at=clock.now)
    now = clock.at(3600 + 1800)
    bills = {b.task: b for b in ledger.month_bills(state, "2026-03", now)}
    assert bills["old"].closed and bills["old"].cost_usd == pytest.approx(1.0)
    assert not bills["live"].closed and bills["live"].billed_s == pytest.approx(1800)
    assert bills["live"].cost_usd == pytest.approx(0.25)
    assert ledger.month_bills(state, "2026-02", now) == []
    assert ledger.month_bills(state, "2026-04", now) == []  # not the current month
    # what the live one may still cost: 0.5 $/h until ready + ttl (4 h) + grace
    remaining_s = 60 + 4 * 3600 + ledger.TTL_GRACE_S - 1800
    month_end = ledger.month_bounds("2026-03")[1]
    assert ledger.committed_usd(state, state.get_deployment(live.id), now, month_end) == (
        pytest.approx(0.5 * remaining_s / 3600)
    )


def test_month_bounds_cross_the_year():
    assert ledger.month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc)
    )


def test_cost_per_request_per_token_cold_start_and_idle_waste(state, clock):
    for n, (task, price, requests) in enumerate((("a", 1.2, 600), ("a", 0.6, 0), ("b", 3.6, 10))):
        dep = new_dep(state, clock, task=task)
        rent(state, clock, dep.id, 1, n * 10_000, f"i{n}", price)
        clock.at(n * 10_000 + 60)
        state.update_deployment(dep.id, status="ready", ready_at=clock.now)
        terminate(state, clock, dep.id, n * 10_000 + 3600, f"i{n}")
        close_deployment(state, state.get_deployment(dep.id), "down",
                         GuardStatus(requests=requests, prompt_tokens=requests * 500,
                                     completion_tokens=requests * 500, idle_s=900.0))
    bills = ledger.month_bills(state, "2026-03", clock.now)
    rows, total = group_bills(bills, "task")
    a = next(r for r in rows if r.key == "a")
    assert a.deployments == 2 and a.cost_usd == pytest.approx(1.8)  # 1.2 + 0.6, 1 h each
    assert a.usd_per_1000_requests == pytest.approx(1.8 / 600 * 1000)  # 3.00
    assert a.usd_per_1m_tokens == pytest.approx(1.8 / 600_000 * 1e6)  # 3.00
    assert a.usd_per_1m_output_tokens == pytest.approx(1.8 / 300_000 * 1e6)  # 6.00
    assert a.cold_start_avg_s == pytest.approx(60.0)
    assert a.idle_waste_ratio == pytest.approx(1800 / 7200)  # 900 s idle of each hour
    assert [r.key for r in rows] == ["b", "a"]  # most expensive first
    assert total.cost_usd == pytest.approx(5.4) and total.requests == 610
    assert total.gpu_s == pytest.approx(3 * 3600)


def test_provider_reported_cost_is_kept_beside_the_estimate(state, clock):
    from orchestrator.models import Instance, InstanceState

    inst = Instance(provider="vast", instance_id="i1", state=InstanceState.RUNNING,
                    raw={"total_cost": 0.97})
    assert ledger.provider_cost_usd(inst) == 0.97
    assert ledger.provider_cost_usd(inst.model_copy(update={"raw": {"dph_total": 1}})) is None
    dep = new_dep(state, clock)
    rent(state, clock, dep.id, 1, 0, "i1", 0.9)
    state.update_deployment(dep.id, status="ready", ready_at=clock.now)
    state.observe(dep.id, provider_cost_usd=0.97, requests=3)
    state.observe(dep.id, idle_s=12.0)  # None keeps what was seen before
    terminate(state, clock, dep.id, 3600, "i1")
    close_deployment(state, state.get_deployment(dep.id), "instance gone")
    bill = state.bill(dep.id)
    assert bill.provider_cost_usd == 0.97 and bill.cost_usd == pytest.approx(0.9)
    assert bill.requests == 3 and bill.idle_s == 12.0  # the last counters status saw
