"""The spend ledger: what each deployment cost and served, from the journal and the guard.

Billing is reconstructed per *instance* from the journal, because every instance bills,
including those of failed attempts:

- an instance bills from its rent intent (written just before the provider call, so
  billing cannot have started earlier) until its terminate was verified (the journal's
  `terminate ... done` row); one that vanished on its own (its guard destroyed it at
  keep-alive or ttl, or the host preempted it) bills until the deployment was seen ended,
  but never past ready + ttl + TTL_GRACE_S, when its guard destroyed it; a live one bills
  until now;
- the serving instance (the one that became ready) bills at the deployment's actual price;
  an instance of a failed attempt at the price of its attempt;
- cost_usd = serving price x billed_s / 3600 + the failed instances' cost;
  GPU-seconds = billed_s x gpu_count; cold start = serving rent -> ready.

Requests, tokens and idle seconds are the guard's counters, read at `down` (or the last
ones `status` saw, for a deployment its guard ended). The provider-reported cost is shown
beside our estimate where an API reports accrued cost (`provider_cost_usd`). A bill is
attributed to the month in which it closed; live deployments count in the current month.
All amounts are USD.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .models import Attempt, Deployment, DeploymentStatus, Instance
from .state import Bill, JournalEntry, Observation, Served, State

__all__ = [
    "DeploymentBill",
    "InstanceSpan",
    "committed_usd",
    "compute_bill",
    "instance_spans",
    "month_bills",
    "month_bounds",
    "provider_cost_usd",
    "settle",
]

TTL_GRACE_S = 120.0  # a guard destroys its instance within this after its ttl
LIVE = (DeploymentStatus.PLANNING, DeploymentStatus.LAUNCHING, DeploymentStatus.READY)
# Fields in which a provider API reports the accrued cost of one instance. Neither Vast's
# instance rows nor RunPod's pod objects carry one today (both report only a rate), so for
# them the provider-reported cost stays None and the ledger shows our estimate alone.
_ACCRUED_COST_FIELDS = ("total_cost", "totalCost", "accrued_cost_usd")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class InstanceSpan:
    """One rented instance's billed interval."""

    instance_id: str
    price_per_hour_usd: float
    start: datetime
    end: datetime
    verified_gone: bool  # end is a verified terminate

    @property
    def billed_s(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0)

    @property
    def cost_usd(self) -> float:
        return self.price_per_hour_usd * self.billed_s / 3600.0


@dataclass(frozen=True)
class DeploymentBill(Served):
    """One deployment's bill: closed (from the ledger) or open (computed up to now)."""

    deployment_id: str
    task: str
    provider: str
    gpu: str
    gpu_count: int
    status: str
    closed: bool
    at: datetime  # closed_at, or now while open
    price_per_hour_usd: float
    billed_s: float  # the serving instance
    cost_usd: float  # serving + failed instances
    failed_instances: int
    failed_instances_s: float
    failed_instances_cost_usd: float
    provider_cost_usd: float | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cold_start_s: float | None
    idle_s: float | None

    def as_json(self) -> dict[str, Any]:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__}
        doc["at"] = self.at.isoformat()
        doc.update(gpu_s=self.gpu_s, tokens=self.tokens)
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in doc.items()}


def instance_spans(
    dep: Deployment, journal: list[JournalEntry], attempts: list[Attempt], now: datetime
) -> list[InstanceSpan]:
    """Every instance the deployment rented, with its billed interval (see module doc)."""
    price_of = {a.offer_key: a.price_per_hour_usd for a in attempts}
    price_of.update((a.instance_id, a.price_per_hour_usd) for a in attempts if a.instance_id)
    terminated: dict[str, datetime] = {}
    for entry in journal:
        if entry.action == "terminate" and entry.state == "done" and entry.instance_id:
            terminated.setdefault(entry.instance_id, entry.updated_at)
    spans, seen = [], set()
    for entry in journal:
        iid = entry.instance_id
        if entry.action != "rent" or not iid or iid in seen:
            continue
        seen.add(iid)
        serving = iid == dep.instance_id and dep.ready_at is not None
        fallback = price_of.get(entry.offer_key or "", dep.price_per_hour_usd)
        price = dep.price_per_hour_usd if serving else price_of.get(iid, fallback)
        if iid in terminated:
            end, verified = terminated[iid], True
        else:
            end, verified = dep.ended_at or now, False
            if dep.ended_at and serving and dep.ttl_s:
                end = min(end, dep.ready_at + timedelta(seconds=dep.ttl_s + TTL_GRACE_S))
        spans.append(InstanceSpan(iid, price, entry.created_at, max(end, entry.created_at),
                                  verified))
    return spans


def compute_bill(
    dep: Deployment,
    journal: list[JournalEntry],
    observation: Observation | None = None,
    *,
    now: datetime | None = None,
    counters: Any = None,
) -> DeploymentBill:
    """The deployment's bill from its journal (open: up to `now`). `counters` (the guard's,
    with requests/prompt_tokens/completion_tokens/idle_s) win over the last observation."""
    now = now or _now()
    spans = instance_spans(dep, journal, dep.attempts, now)
    serving = [s for s in spans if s.instance_id == dep.instance_id and dep.ready_at]
    failed = [s for s in spans if s not in serving]
    if serving:
        billed_s, rent_at = serving[0].billed_s, serving[0].start
    elif dep.ready_at is not None:  # no journal rows (a state from before the journal)
        billed_s = max(((dep.ended_at or now) - dep.created_at).total_seconds(), 0.0)
        rent_at = dep.created_at
    else:
        billed_s, rent_at = 0.0, None
    failed_cost = sum(s.cost_usd for s in failed)
    c = counters or observation
    return DeploymentBill(
        deployment_id=dep.id, task=dep.task_name, provider=dep.provider or "-",
        gpu=dep.gpu or "-", gpu_count=dep.gpu_count, status=dep.status.value, closed=False,
        at=now, price_per_hour_usd=dep.price_per_hour_usd, billed_s=billed_s,
        cost_usd=dep.price_per_hour_usd * billed_s / 3600.0 + failed_cost,
        failed_instances=len(failed), failed_instances_s=sum(s.billed_s for s in failed),
        failed_instances_cost_usd=failed_cost,
        provider_cost_usd=observation.provider_cost_usd if observation else None,
        requests=int(getattr(c, "requests", 0) or 0),
        prompt_tokens=int(getattr(c, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(c, "completion_tokens", 0) or 0),
        cold_start_s=(dep.ready_at - rent_at).total_seconds() if dep.ready_at and rent_at
        else None,
        idle_s=getattr(c, "idle_s", None),
    )  # fmt: skip


def from_closed(dep: Deployment, bill: Bill) -> DeploymentBill:
    return DeploymentBill(
        deployment_id=dep.id, task=dep.task_name, provider=dep.provider or "-",
        gpu=dep.gpu or "-", gpu_count=bill.gpu_count, status=dep.status.value, closed=True,
        at=bill.closed_at, price_per_hour_usd=bill.price_per_hour_usd, billed_s=bill.billed_s,
        cost_usd=bill.cost_usd, failed_instances=bill.failed_instances,
        failed_instances_s=bill.failed_instances_s,
        failed_instances_cost_usd=bill.failed_instances_cost_usd,
        provider_cost_usd=bill.provider_cost_usd, requests=bill.requests,
        prompt_tokens=bill.prompt_tokens, completion_tokens=bill.completion_tokens,
        cold_start_s=bill.cold_start_s, idle_s=bill.idle_s,
    )  # fmt: skip


def close(state: State, dep: Deployment, counters: Any = None) -> Bill:
    """Close the bill of an ended deployment (idempotent: the first close wins)."""
    figures = compute_bill(dep, state.journal(dep.id), state.observation(dep.id),
                           now=dep.ended_at or _now(), counters=counters)
    return state.close_bill(
        dep.id, figures.price_per_hour_usd, figures.billed_s,
        provider_cost_usd=figures.provider_cost_usd, requests=figures.requests,
        prompt_tokens=figures.prompt_tokens, completion_tokens=figures.completion_tokens,
        cold_start_s=figures.cold_start_s, idle_s=figures.idle_s, closed_at=figures.at,
        gpu_count=figures.gpu_count, failed_instances=figures.failed_instances,
        failed_instances_s=figures.failed_instances_s,
        failed_instances_cost_usd=round(figures.failed_instances_cost_usd, 6),
    )  # fmt: skip


def settle(state: State) -> list[str]:
    """Close the bills of ended deployments that have none (every attempt failed, or a
    crash between end and bill); returns their ids."""
    closed = []
    for dep in state.unbilled():
        close(state, dep)
        closed.append(dep.id)
    return closed


def month_bounds(month: str | None = None, now: datetime | None = None) -> tuple[datetime,
                                                                                  datetime]:
    """[start, end) of a calendar month in UTC: `YYYY-MM`, or the month of `now`."""
    now = now or _now()
    if month:
        year, mon = (int(p) for p in month.split("-"))
    else:
        year, mon = now.year, now.month
    start = datetime(year, mon, 1, tzinfo=timezone.utc)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


def month_bills(
    state: State, month: str | None = None, now: datetime | None = None
) -> list[DeploymentBill]:
    """Bills closed in the month, plus (for the current month) live deployments so far."""
    now = now or _now()
    settle(state)
    start, end = month_bounds(month, now)
    out = []
    for dep in state.list_deployments(since=start):
        bill = state.bill(dep.id)
        if bill is not None:
            if start <= bill.closed_at < end:
                out.append(from_closed(dep, bill))
        elif dep.status in LIVE and start <= now < end:
            out.append(compute_bill(dep, state.journal(dep.id), state.observation(dep.id),
                                    now=now))
    return out


def committed_usd(state: State, dep: Deployment, now: datetime, month_end: datetime) -> float:
    """What a live deployment may still cost: its price until its ttl (a deployment without
    ttl: until the month ends); before its price is known, the projection it was admitted
    with."""
    if dep.price_per_hour_usd > 0 and dep.instance_id:
        if dep.ttl_s:
            ttl_end = (dep.ready_at or now) + timedelta(seconds=dep.ttl_s + TTL_GRACE_S)
        else:
            ttl_end = month_end
        return dep.price_per_hour_usd * max((ttl_end - now).total_seconds(), 0.0) / 3600.0
    events = state.budget_events(deployment_id=dep.id)
    return max((e.projected_usd or 0.0 for e in events if e.kind == "projection"), default=0.0)


def provider_cost_usd(instance: Instance | None) -> float | None:
    """The accrued cost the provider itself reports for `instance`, where its API has one."""
    if instance is None:
        return None
    for name in _ACCRUED_COST_FIELDS:
        value = instance.raw.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None
