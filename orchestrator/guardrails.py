"""Money guardrails, checked before anything is rented: limits, then the monthly budget.

In `up`, nothing is created before these pass:
1. before the offer search: `limits.max_ttl` (every deployment has a ttl, unless the
   config says `limits.max_ttl: none`) and `limits.max_deployments` (live deployments);
2. after planning: `limits.max_price_per_hour`, then the budget; checked once to fail
   fast and warn, and again under an exclusive lock that is released as soon as the
   deployment row exists, so concurrent `up`s cannot both pass on the same money.

Projection of one candidate = price x planned hours + storage. Planned hours: the ttl
(no ttl: until the month ends), at least MIN_BILLED_S. Storage: disk GiB x the offer's
per-GiB-month price (Vast's `storage_cost`; 0 where an offer states none) x planned hours
/ 720 (Vast's 30-day month). The budget test: this month's spend (closed bills + live
deployments so far) + what live deployments may still cost until their ttl + the
projection > budget -> refused. The launcher falls back from the cheapest candidate to
dearer ones, so every candidate it may try is tested with the worst-case bill of the
failed attempts before it (boot + ready + verify timeouts at their price) added; those
that do not fit are dropped, and nothing that could break the budget is ever rented. If
the cheapest does not fit, `up` is refused (exit 3) unless `--override-budget`, which is
recorded in the ledger (`budget_events`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .config import Config
from .errors import DeployctlError, GuardrailRefusedError
from .ledger import committed_usd, month_bills, month_bounds
from .models import Offer, TaskSpec
from .planner import Candidate
from .state import State
from .units import format_duration

__all__ = ["Admission", "Gate", "Projection", "Refusal", "Spend", "disk_gib", "project"]

MIN_BILLED_S = 60.0  # per-minute billing on most clouds; Vast bills per second
STORAGE_HOURS_PER_MONTH = 720.0


class Refusal(GuardrailRefusedError):
    """A guardrail said no; `rule` names it (budget, max_deployments, max_ttl, ...)."""

    def __init__(self, rule: str, message: str, *, hint: str | None = None,
                 spend_usd: float | None = None, projected_usd: float | None = None,
                 budget_usd: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.rule = rule
        self.spend_usd, self.projected_usd, self.budget_usd = spend_usd, projected_usd, budget_usd


def disk_gib(task: TaskSpec) -> int:
    """The disk `engines.build_spec` asks for (a test keeps the two equal)."""
    return max(40, 20 + int(task.context_tokens / 1024))


def storage_usd_per_gib_month(offer: Offer) -> float:
    value = offer.raw.get("storage_cost") if offer.provider == "vast" else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


@dataclass(frozen=True)
class Projection:
    offer: Offer
    planned_s: float
    compute_usd: float
    storage_usd: float

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.storage_usd

    def describe(self) -> str:
        o = self.offer
        gpu = f"{o.gpu_count}x {o.gpu}" if o.gpu_count > 1 else o.gpu
        text = (f"{gpu} on {o.provider} at ${o.price_per_hour_usd:.3f}/h x "
                f"{format_duration(self.planned_s)}")
        return text + (f" + storage ${self.storage_usd:.2f}" if self.storage_usd else "")


def project(offer: Offer, task: TaskSpec, now: datetime, month_end: datetime) -> Projection:
    planned_s = float(task.ttl_s) if task.ttl_s else (month_end - now).total_seconds()
    if offer.price_per_hour_usd > 0:
        planned_s = max(planned_s, MIN_BILLED_S)
    storage = disk_gib(task) * storage_usd_per_gib_month(offer) * planned_s / 3600
    return Projection(offer, planned_s, offer.price_per_hour_usd * planned_s / 3600,
                      storage / STORAGE_HOURS_PER_MONTH)


@dataclass(frozen=True)
class Spend:
    spend_usd: float  # this month so far: closed bills + live deployments' cost so far
    committed_usd: float  # what live deployments may still cost until their ttl
    live_ids: list[str]
    month_end: datetime


def current_spend(state: State, now: datetime) -> Spend:
    _, month_end = month_bounds(None, now)
    spend = sum(b.cost_usd for b in month_bills(state, now=now))
    live = state.list_deployments(live_only=True)
    committed = sum(committed_usd(state, d, now, month_end) for d in live)
    return Spend(spend, committed, [d.id for d in live], month_end)


@dataclass
class Admission:
    candidates: list[Candidate]
    projection: Projection  # of the cheapest candidate
    spend: Spend
    override: bool = False  # the budget refused and --override-budget let it through
    dropped: list[str] = field(default_factory=list)  # why fallbacks were left out


class Gate:
    """The guardrails of one `up`: the config, the task, and how long attempts may take."""

    def __init__(self, config: Config, task: TaskSpec, *, worst_attempt_s: float,
                 override_budget: bool = False) -> None:
        self.config, self.task = config, task
        self.worst_attempt_s = worst_attempt_s
        self.override_budget = override_budget
        self._lock_fd: int | None = None
        self.admission: Admission | None = None

    # -- the checks ---------------------------------------------------------------------
    def check_limits(self, live_ids: list[str]) -> None:
        limits, ttl_s = self.config.limits, self.task.ttl_s
        if limits.max_ttl is not None and ttl_s == 0:
            raise Refusal("max_ttl", f"limits.max_ttl: a deployment without a ttl is refused "
                          f"while limits.max_ttl is {format_duration(limits.max_ttl)}",
                          hint="give --ttl, or set `limits.max_ttl: none` to allow it")
        if limits.max_ttl is not None and ttl_s > limits.max_ttl:
            raise Refusal("max_ttl", f"limits.max_ttl: ttl {format_duration(ttl_s)} is above "
                          f"the limit of {format_duration(limits.max_ttl)}",
                          hint="give a shorter --ttl, or raise limits.max_ttl")
        if limits.max_deployments is not None and len(live_ids) >= limits.max_deployments:
            n = len(live_ids)
            raise Refusal("max_deployments", f"limits.max_deployments: {n} deployment"
                          f"{'s are' if n > 1 else ' is'} live ({', '.join(live_ids[:5])}) and "
                          f"the limit is {limits.max_deployments}",
                          hint="end one with `deployctl down`, or raise limits.max_deployments")

    def admit(self, state: State, feasible: list[Candidate]) -> Admission:
        """The candidates `up` may rent (a prefix of `feasible`); Refusal if none."""
        now = datetime.now(timezone.utc)
        spend = current_spend(state, now)
        self.check_limits(spend.live_ids)
        budget = self.config.budget
        cap_usd = self.config.limits.max_price_per_hour
        cap_usd = cap_usd * budget.usd_per_unit if cap_usd is not None else None
        first = project(feasible[0].offer, self.task, now, spend.month_end)
        if cap_usd is not None and feasible[0].offer.price_per_hour_usd > cap_usd + 1e-9:
            raise Refusal("max_price_per_hour", f"limits.max_price_per_hour: the cheapest offer "
                          f"that fits, {first.describe()}, is above the limit of "
                          f"{budget.show(cap_usd)}/h",
                          hint="raise limits.max_price_per_hour, or plan a smaller task")
        admission = Admission([], first, spend)
        budget_usd = budget.monthly_usd
        base = spend.spend_usd + spend.committed_usd
        failures_usd = 0.0
        for n, candidate in enumerate(feasible):
            p = project(candidate.offer, self.task, now, spend.month_end)
            if cap_usd is not None and candidate.offer.price_per_hour_usd > cap_usd + 1e-9:
                admission.dropped.append(f"{p.describe()}: above limits.max_price_per_hour")
                continue
            over = budget_usd is not None and base + failures_usd + p.total_usd > budget_usd
            if over and n == 0 and not self.override_budget:
                raise self._budget_refusal(spend, first, budget_usd)
            if over and n == 0:
                admission.override = True
            elif over and not admission.override:
                admission.dropped.append(f"{p.describe()}: the budget could not pay for it "
                                         "after the attempts before it")
                continue
            admission.candidates.append(candidate)
            failures_usd += candidate.offer.price_per_hour_usd * self.worst_attempt_s / 3600
        return admission

    def _budget_refusal(self, spend: Spend, p: Projection, budget_usd: float) -> Refusal:
        show = self.config.budget.show
        total = spend.spend_usd + spend.committed_usd + p.total_usd
        committed = (f" + {show(spend.committed_usd)} still committed to live deployments"
                     if spend.committed_usd > 0.005 else "")
        return Refusal(
            "budget",
            f"budget: this month's spend {show(spend.spend_usd)}{committed} + "
            f"{show(p.total_usd)} projected for {self.task.name} ({p.describe()}) = "
            f"{show(total)}, above the monthly budget of {show(budget_usd)}; nothing was rented",
            hint="shorten --ttl, raise budget.monthly, or pass --override-budget to launch "
            "anyway (recorded in the ledger)",
            spend_usd=spend.spend_usd, projected_usd=p.total_usd, budget_usd=budget_usd,
        )

    def warnings(self, admission: Admission) -> list[str]:
        """The budget lines every spending command prints at or above the alert ratio."""
        budget = self.config.budget
        budget_usd = budget.monthly_usd
        lines = [f"note: not a fallback: {why}" for why in admission.dropped]
        if admission.override:
            lines.append("warning: --override-budget: launching above the monthly budget "
                         "(recorded in the ledger)")
        if not budget_usd:
            return lines
        s = admission.spend
        now_ratio = s.spend_usd / budget_usd
        then_ratio = (s.spend_usd + s.committed_usd + admission.projection.total_usd) / budget_usd
        if now_ratio >= budget.alert_ratio:
            lines.append(f"warning: this month's spend {budget.show(s.spend_usd)} is "
                         f"{now_ratio:.0%} of the {budget.show(budget_usd)} budget "
                         f"(budget.alert_ratio {budget.alert_ratio:.0%})")
        elif then_ratio >= budget.alert_ratio:
            lines.append(f"warning: this launch may bring the month to {then_ratio:.0%} of the "
                         f"{budget.show(budget_usd)} budget (budget.alert_ratio "
                         f"{budget.alert_ratio:.0%})")
        return lines

    # -- the ledger ---------------------------------------------------------------------
    def record_refusal(self, state: State, refusal: Refusal) -> None:
        state.add_budget_event(
            "refusal", rule=refusal.rule, task_name=self.task.name, spend_usd=refusal.spend_usd,
            projected_usd=refusal.projected_usd, budget_usd=refusal.budget_usd,
            message=refusal.message,
        )  # fmt: skip

    def record_admission(self, state: State, deployment_id: str) -> None:
        a = self.admission
        if a is None:
            return
        budget_usd = self.config.budget.monthly_usd
        common = {
            "deployment_id": deployment_id, "task_name": self.task.name,
            "spend_usd": a.spend.spend_usd, "projected_usd": a.projection.total_usd,
            "budget_usd": budget_usd,
        }  # fmt: skip
        state.add_budget_event("projection", rule="budget", message=a.projection.describe(),
                               **common)
        if a.override:
            state.add_budget_event("override", rule="budget", message="--override-budget",
                                   **common)

    # -- one launch at a time through the gate -------------------------------------------
    @contextlib.contextmanager
    def locked_state(self, timeout_s: float = 30.0) -> Iterator[State]:
        """An exclusive lock (held from the final admission until the deployment row
        exists) and a State whose new_deployment records the admission, then unlocks."""
        from .paths import data_dir, private_dir

        path = private_dir(data_dir()) / "launch.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._lock_fd = fd
        try:
            _flock(fd, timeout_s)
            with _AdmittingState(gate=self) as state:
                yield state
        finally:
            self.unlock()

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def _flock(fd: int, timeout_s: float) -> None:
    import fcntl

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DeployctlError("another deployctl `up` held the launch lock for "
                                     f"{timeout_s:.0f} s; try again") from None
            time.sleep(0.02)


class _AdmittingState(State):
    """A State whose new_deployment (the launcher's first step, before any provider call)
    records the admission with the new row and releases the launch lock."""

    def __init__(self, path=None, *, gate: Gate) -> None:
        super().__init__(path)
        self._gate = gate

    def new_deployment(self, *args, **kwargs):
        dep = super().new_deployment(*args, **kwargs)
        try:
            self._gate.record_admission(self, dep.id)
        except BaseException:
            from .models import DeploymentStatus

            self.mark_ended(dep.id, "could not record its admission",
                            status=DeploymentStatus.FAILED)
            raise
        finally:
            self._gate.unlock()
        return dep
