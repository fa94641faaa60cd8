"""Guardrails before a rent: projection arithmetic, the budget test over every fallback
candidate, the limits, EUR budgets, and the records they leave."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from orchestrator import guardrails
from orchestrator.config import validate
from orchestrator.engines import build_spec
from orchestrator.guardrails import Gate, Refusal, disk_gib, project
from orchestrator.models import Offer
from orchestrator.planner import Candidate
from orchestrator.state import State
from orchestrator.taskfile import load_task

NOW = datetime(2026, 3, 31, 20, 0, tzinfo=timezone.utc)
MONTH_END = datetime(2026, 4, 1, tzinfo=timezone.utc)


def offer(price: float, n: int = 1, provider: str = "runpod", **raw) -> Offer:
    return Offer(provider=provider, offer_id=str(n), gpu="RTX 4090", gpu_count=1,
                 vram_gib=24, price_per_hour_usd=price, raw=raw)


def candidates(*prices: float) -> list[Candidate]:
    return [Candidate(offer=offer(p, n), sizing=None) for n, p in enumerate(prices, 1)]


def config(**sections):
    return validate(sections)


@pytest.fixture
def state(tmp_path):
    with State.open(tmp_path / "state.db") as s:
        yield s


def gate(cfg, ttl: str = "4h", override: bool = False, worst_attempt_s: float = 0) -> Gate:
    task = load_task("qwen-14b", {"ttl": ttl})
    return Gate(cfg, task, worst_attempt_s=worst_attempt_s, override_budget=override)


def test_projection_is_price_times_ttl_plus_storage():
    task = load_task("qwen-14b", {"ttl": "4h"})
    # Vast states storage_cost in $/GB/month: disk GiB x price x hours / 720
    p = project(offer(0.5, provider="vast", storage_cost=0.15), task, NOW, MONTH_END)
    assert p.compute_usd == pytest.approx(0.5 * 4)
    assert p.storage_usd == pytest.approx(disk_gib(task) * 0.15 * 4 / 720)
    assert p.total_usd == pytest.approx(2.0 + disk_gib(task) * 0.15 * 4 / 720)
    assert "x 4h" in p.describe() and "storage $" in p.describe()
    assert project(offer(0.5, storage_cost=9.0), task, NOW, MONTH_END).storage_usd == 0  # runpod


def test_projection_bills_a_minimum_and_a_deployment_without_ttl_until_month_end():
    short = load_task("qwen-14b", {"ttl": "10s"})
    assert project(offer(3.6), short, NOW, MONTH_END).compute_usd == pytest.approx(0.06)  # 60 s
    forever = load_task("qwen-14b", {"ttl": "0"})
    assert project(offer(1.0), forever, NOW, MONTH_END).planned_s == 4 * 3600  # 20:00 -> 24:00


def test_disk_projection_matches_what_the_launcher_asks_for():
    for name in ("qwen-14b", "smollm2-135m", "llama-3.1-70b"):
        task = load_task(name)
        spec = build_spec(task, gpu_count=1, endpoint_key="k", keep_alive_s=1, ttl_s=1,
                          teardown="none")
        assert disk_gib(task) == spec.disk_gib


def test_budget_refusal_names_every_number(state):
    cfg = config(budget={"monthly": 5})
    with pytest.raises(Refusal) as exc:
        gate(cfg, ttl="12h").admit(state, candidates(0.5))  # 6.00 USD > 5.00 USD
    refusal = exc.value
    assert refusal.rule == "budget" and refusal.exit_code == 3
    assert "0.00 USD" in refusal.message and "6.00 USD" in refusal.message
    assert "5.00 USD" in refusal.message and "$0.500/h x 12h" in refusal.message
    assert refusal.projected_usd == pytest.approx(6.0) and refusal.budget_usd == 5.0


def test_eur_budget_is_converted_with_the_configured_rate(state):
    cfg = config(budget={"monthly": 20, "currency": "EUR", "usd_per_eur": 1.25})  # 25 USD
    gate(cfg, ttl="12h").admit(state, candidates(2.0))  # 24 USD fits
    with pytest.raises(Refusal) as exc:
        gate(cfg, ttl="12h").admit(state, candidates(2.1))  # 25.20 USD = 20.16 EUR
    assert "20.16 EUR" in exc.value.message and "20.00 EUR" in exc.value.message


def test_fallbacks_the_budget_cannot_pay_for_are_dropped(state):
    cfg = config(budget={"monthly": 10})
    g = gate(cfg, ttl="4h", worst_attempt_s=3600)
    # 1.0 x 4 h = 4 fits; 2.0: 1 h of failed attempt 1 (1.0) + 8 = 9 fits; 2.2: 1 + 2 + 8.8 no
    admission = g.admit(state, candidates(1.0, 2.0, 2.2))
    assert [c.offer.price_per_hour_usd for c in admission.candidates] == [1.0, 2.0]
    assert len(admission.dropped) == 1 and "budget" in admission.dropped[0]


def test_override_launches_over_budget_and_is_flagged(state):
    cfg = config(budget={"monthly": 1})
    admission = gate(cfg, override=True).admit(state, candidates(1.0, 2.0))
    assert admission.override and len(admission.candidates) == 2
    assert any("--override-budget" in line for line in gate(cfg).warnings(admission))


def test_price_limit_refuses_when_the_cheapest_is_above_and_drops_dearer(state):
    cfg = config(limits={"max_price_per_hour": 1.5})
    admission = gate(cfg).admit(state, candidates(1.0, 2.0))
    assert [c.offer.price_per_hour_usd for c in admission.candidates] == [1.0]
    with pytest.raises(Refusal) as exc:
        gate(cfg).admit(state, candidates(1.6))
    assert exc.value.rule == "max_price_per_hour" and "1.50 USD/h" in str(exc.value)


def test_ttl_limits(state):
    with pytest.raises(Refusal, match=r"limits.max_ttl: ttl 1d is above the limit of 12h"):
        gate(config(), ttl="24h").check_limits([])
    with pytest.raises(Refusal, match="without a ttl"):
        gate(config(), ttl="0").check_limits([])
    gate(config(limits={"max_ttl": "none"}), ttl="0").check_limits([])  # said explicitly
    gate(config(limits={"max_ttl": "2d"}), ttl="24h").check_limits([])


def test_max_deployments_counts_live_ones(state):
    with pytest.raises(Refusal, match=r"1 deployment is live \(d1\) and the limit is 1"):
        gate(config()).check_limits(["d1"])
    gate(config(limits={"max_deployments": 2})).check_limits(["d1"])
    gate(config(limits={"max_deployments": "none"})).check_limits(["d1", "d2", "d3"])


def test_live_deployments_count_with_what_they_may_still_cost(state):
    dep = state.new_deployment("x", "{}", 60, 3600)
    state.update_deployment(dep.id, status="ready", ready_at=datetime.now(timezone.utc),
                            instance_id="i", price_per_hour_usd=3.0, provider="vast")
    cfg = config(budget={"monthly": 5}, limits={"max_deployments": 2})
    with pytest.raises(Refusal, match="still committed to live deployments"):
        gate(cfg, ttl="1h").admit(state, candidates(2.5))  # 3 (1 h left) + 2.5 > 5


def test_warning_at_the_alert_ratio(state):
    dep = state.new_deployment("x", "{}", 60, 3600)
    state.mark_ended(dep.id, "down")
    state.close_bill(dep.id, 8.5, 3600)  # 8.50 of 10.00 spent this month
    cfg = config(budget={"monthly": 10})
    admission = gate(cfg, ttl="1h").admit(state, candidates(0.5))
    (line,) = gate(cfg).warnings(admission)
    assert line == "warning: this month's spend 8.50 USD is 85% of the 10.00 USD budget " \
                   "(budget.alert_ratio 80%)"


def test_admission_and_override_are_recorded_with_the_deployment(state):
    cfg = config(budget={"monthly": 1})
    g = gate(cfg, override=True)
    g.admission = g.admit(state, candidates(1.0))
    dep = state.new_deployment("qwen-14b", "{}", 60, 4 * 3600)
    g.record_admission(state, dep.id)
    kinds = [(e.kind, e.deployment_id) for e in state.budget_events(deployment_id=dep.id)]
    assert kinds == [("projection", dep.id), ("override", dep.id)]
    override = state.budget_events(deployment_id=dep.id)[1]
    assert override.projected_usd == pytest.approx(4.0) and override.budget_usd == 1.0


def test_the_admitting_state_records_then_releases_the_launch_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "s"))
    g = gate(config())
    g.admission = guardrails.Admission([], project(offer(1.0), g.task, NOW, MONTH_END),
                                       guardrails.Spend(0, 0, [], MONTH_END))
    with g.locked_state() as state:
        assert g._lock_fd is not None
        dep = state.new_deployment("qwen-14b", "{}", 60, 3600)
        assert g._lock_fd is None  # released once the row exists
        assert [e.kind for e in state.budget_events(deployment_id=dep.id)] == ["projection"]
    with g.locked_state(timeout_s=1):  # and can be taken again
        pass
