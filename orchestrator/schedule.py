"""Scheduled sessions: an endpoint answering at the window's start, gone at its end.

`add` books a window (a task, a start in a time zone, a length, an optional cron repeat);
`tick` does what is due at `now` and is safe to run often and concurrently (cron, a
systemd loop, CI, a person):

- ends every running session whose window has closed (destroy, verify, close the bill);
- marks missed every upcoming session whose window closed before any tick started it;
- starts every upcoming session whose start minus lead has come and whose window is still
  open — a late tick (the machine was asleep) still starts it, with a shorter ttl;
- after a session ends, misses or fails, creates the schedule's next occurrence (croniter,
  in the schedule's time zone, so 14:00 stays 14:00 across DST).

Ready on time: the lead is measured (`auto_lead_s`: p90 of the task's recorded cold starts,
on the planned GPU when there are some, plus one tick interval; 10 minutes without
history). Gone on time without any later tick: the deployment's ttl is set to end of
window + grace - the moment each attempt is specified, and keep-alive to the same, so a
demo without traffic is not idled out early and the guard destroys it by the end even if
no tick ever runs again.

Budget and limits are checked at `add` (the whole window's projected cost against the
month's budget; a clash with `limits.max_deployments`) and again at start, through
`schedule_money`. Storage and the concurrency rules are in `schedule_store`; time is
always passed in (`now`), so tests drive the clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import schedule_money as money
from . import schedule_store as store
from .errors import BadInputError, DeployctlError, GuardrailRefusedError
from .models import Deployment, DeploymentStatus, Offer, TaskSpec
from .schedule_store import Schedule, Session
from .schedule_time import (
    auto_lead_s,
    check_cron,
    cron_after,
    lead_s,
    local_tz_name,
    next_window,
    parse_at,
    show_local,
    zone,
)
from .state import State
from .units import parse_duration_s

__all__ = ["Action", "Added", "TickReport", "add", "tick"]

DEFAULT_GRACE_S = 120
MAX_START_TRIES = 3  # failed launches of one session before it is given up
OTHER_HOST_STALE_S = 3 * 3600  # a claim by a tick on another host we cannot ask about
_LIVE = (DeploymentStatus.PLANNING, DeploymentStatus.LAUNCHING, DeploymentStatus.READY)

Starter = Callable[[State, Schedule, Session, datetime], Deployment]
Ender = Callable[[State, Deployment, str], None]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- add ---------------------------------------------------------------------------------


@dataclass
class Added:
    schedule: Schedule
    session: Session
    lead_s: int
    lead_why: str
    projected_cost_usd: float | None
    warnings: list[str] = field(default_factory=list)


PriceProbe = Callable[[TaskSpec, tuple[str, ...]], "Offer | None"]


def add(
    state: State, *, task: str, at: str | None, duration: str, tz: str | None = None,
    lead: str = "auto", repeat: str | None = None, grace: str | None = None,
    providers: tuple[str, ...] = (), now: datetime | None = None,
    price_probe: PriceProbe | None = None,
) -> Added:
    """Validate and book a schedule and its first session; refuse (exit 3) what the budget
    or `limits.max_deployments` will not allow."""
    from .search import parse_provider_names
    from .taskfile import load_task

    now = now or _utcnow()
    spec = load_task(task)
    if (Path(task).expanduser().is_file() or "/" in task or task.endswith((".yaml", ".yml"))):
        task = str(Path(task).expanduser().resolve())
    names = parse_provider_names(providers, ())
    tz_name = tz or local_tz_name()
    zone(tz_name)
    length_s = _duration("--for", duration)
    if length_s < 1:
        raise BadInputError("--for", "the window must last at least 1 s (e.g. 30s, 3h)")
    grace_s = DEFAULT_GRACE_S if grace is None else _duration("--grace", grace)
    lead_fixed = None if lead.strip().lower() == "auto" else _duration("--lead", lead)
    cron = check_cron(repeat) if repeat else None
    if at:
        starts_at = parse_at(at, tz_name)
    elif cron:
        starts_at = next(cron_after(cron, tz_name, now - timedelta(seconds=1)))
    else:
        raise BadInputError("--at", "give the start (e.g. --at \"2026-12-01 14:00\") or --repeat")
    ends_at = starts_at + timedelta(seconds=length_s)
    if ends_at <= now:
        raise BadInputError("--at", f"that window ended at {show_local(ends_at, tz_name)}; "
                                    "give a future start")
    offer = (price_probe or _probe_price)(spec, names)
    warnings: list[str] = []
    price = offer.price_per_hour_usd if offer else spec.max_price_per_hour_usd
    if offer is None:
        warnings.append("no offer priced it now: " + ("projected at the task's price cap"
                        if price else "its cost is checked when it starts"))
    gpu = offer.gpu if offer else None
    lead_value, lead_why = ((lead_fixed, "fixed") if lead_fixed is not None
                            else auto_lead_s(state, spec.name, gpu))
    draft = Schedule(
        id="(new)", task=task, task_name=spec.name, providers=names, first_start_at=starts_at,
        duration_s=length_s, tz=tz_name, lead_s=lead_fixed, grace_s=grace_s, repeat_cron=cron,
        planned_gpu=gpu, planned_price_per_hour_usd=price, created_at=now, removed_at=None,
    )  # fmt: skip
    projected = money.check_booking(state, draft, lead_s=lead_value, offer=offer, spec=spec,
                                    now=now, warnings=warnings,
                                    lead_of=lambda sch: lead_s(state, sch))
    schedule, session = store.add_schedule(
        state, task=task, task_name=spec.name, providers=names, starts_at=starts_at,
        ends_at=ends_at, tz=tz_name, lead_s=lead_fixed, grace_s=grace_s, repeat_cron=cron,
        planned_gpu=gpu, planned_price_per_hour_usd=price, now=now,
    )  # fmt: skip
    return Added(schedule, session, lead_value, lead_why, projected, warnings)


def _duration(flag: str, text: str) -> int:
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise BadInputError(flag, f"{exc}") from None


def _probe_price(spec: TaskSpec, names: tuple[str, ...]) -> Offer | None:
    """The offer `up` would choose now, or None if nothing fits or answers."""
    from .config import load_settings
    from .models import OfferQuery
    from .planner import make_plan
    from .search import find_offers, parse_provider_names

    settings = load_settings()
    query = OfferQuery(spot=spec.spot, regions=spec.regions, max_gpu_count=spec.max_gpu_count)
    try:
        search = find_offers(parse_provider_names(names or spec.providers, settings.providers),
                             query, catalog_dir=None, deadline_s=settings.offer_deadline_s,
                             requested_by_name=False)
    except DeployctlError:
        return None
    chosen = make_plan(spec, search.offers).chosen
    return chosen.offer if chosen else None


# -- tick --------------------------------------------------------------------------------


@dataclass
class Action:
    """One thing a tick did to one session."""

    kind: str  # started | ended | missed | failed | retry | refused | recovered | error
    session_id: int
    schedule_id: str
    task: str
    detail: str = ""
    deployment_id: str | None = None
    endpoint_url: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class TickReport:
    now: datetime
    actions: list[Action] = field(default_factory=list)
    next_start_at: datetime | None = None  # the next (start - lead) still to come

    @property
    def exit_code(self) -> int:
        """1 when a session failed or could not be ended, 3 when a guardrail refused a
        start (retried at the next tick), else 0."""
        kinds = {a.kind for a in self.actions}
        return 1 if kinds & {"failed", "error"} else 3 if "refused" in kinds else 0


def tick(
    state: State, *, now: datetime | None = None, starter: Starter | None = None,
    ender: Ender | None = None, on_launch: Callable[[bool], None] | None = None,
) -> TickReport:
    """Do what is due at `now` (default: the clock). Idempotent; concurrent ticks share
    the work through conditional claims (`schedule_store.transition`). `on_launch(True)`
    and `on_launch(False)` bracket each launch (the CLI lets SIGTERM interrupt only
    those)."""
    store.ensure_tables(state)
    report = TickReport(now or _utcnow())
    now = report.now
    schedules = {s.id: s for s in store.list_schedules(state, include_removed=True)}
    if starter is None or ender is None:
        from .schedule_launch import end_deployment, launch_session

        starter, ender = starter or launch_session, ender or end_deployment
    for s in store.list_sessions(state, statuses=("running",)):
        _end_or_check(state, schedules[s.schedule_id], s, now, ender, report)
    for s in store.list_sessions(state, statuses=("starting",)):
        _recover(state, schedules[s.schedule_id], s, now, ender, report)
    leads: dict[str, int] = {}
    for s in store.list_sessions(state, statuses=("upcoming",)):
        schedule = schedules[s.schedule_id]
        if s.ends_at <= now:
            if _finish(state, schedule, s, "upcoming", "missed", now,
                       note=s.note or "its window closed before any tick started it"):
                report.actions.append(_action("missed", schedule, s, s.note or
                                              "window closed before any tick ran"))
            continue
        if schedule.id not in leads:
            leads[schedule.id] = lead_s(state, schedule)
        due_at = s.starts_at - timedelta(seconds=leads[schedule.id])
        if now < due_at:
            report.next_start_at = min(filter(None, (report.next_start_at, due_at)))
            continue
        _start(state, schedule, s, now, starter, ender, report, on_launch)
    return report


def _action(kind: str, schedule: Schedule, s: Session, detail: str = "",
            dep: Deployment | None = None) -> Action:
    url = f"{dep.endpoint_url.rstrip('/')}/v1" if dep and dep.endpoint_url else None
    return Action(kind, s.id, schedule.id, schedule.task_name, detail,
                  dep.id if dep else s.deployment_id, url)


def _finish(state: State, schedule: Schedule, s: Session, old: str, new: str, now: datetime,
            *, note: str, expect: dict | None = None) -> bool:
    """Close a session (ended, missed or failed) and create the next occurrence, at once."""
    follow = next_window(schedule, s.starts_at, now) if schedule.removed_at is None else None
    return store.transition(state, s.id, old, new, follow=follow, expect=expect,
                            ended_at=now, note=note)


def _start(state, schedule, s, now, starter, ender, report, on_launch) -> None:
    claimed_at = now
    if not store.transition(state, s.id, "upcoming", "starting", claimed_at=claimed_at,
                            tries=s.tries + 1, **store.claimer()):
        return  # another tick has it
    late = f" ({(now - s.starts_at).total_seconds():.0f} s late)" if now > s.starts_at else ""
    mine = {"claimed_at": claimed_at, "claimed_pid": store.claimer()["claimed_pid"]}
    try:
        if on_launch:
            on_launch(True)
        try:
            dep = starter(state, schedule, s, now)
        finally:
            if on_launch:
                on_launch(False)
    except GuardrailRefusedError as exc:
        store.transition(state, s.id, "starting", "upcoming", expect=mine, tries=s.tries,
                         note=f"refused: {exc}")
        report.actions.append(_action("refused", schedule, s, f"{exc} (retried next tick)"))
        return
    except DeployctlError as exc:
        final = isinstance(exc, BadInputError) or s.tries + 1 >= MAX_START_TRIES
        if not final:
            store.transition(state, s.id, "starting", "upcoming", expect=mine,
                             note=f"try {s.tries + 1} failed: {exc}")
            report.actions.append(_action("retry", schedule, s, f"{exc} (tried again next tick)"))
        else:
            _finish(state, schedule, s, "starting", "failed", now, note=str(exc), expect=mine)
            report.actions.append(_action("failed", schedule, s, str(exc)))
        return
    except BaseException:  # SIGTERM, Ctrl-C: the launcher destroyed what it made...
        _interrupted(state, s, mine)
        raise
    if not store.transition(state, s.id, "starting", "running", expect=mine,
                            deployment_id=dep.id, started_at=_utcnow(), note=""):
        # another tick took this session over while we launched: ours must not run twice
        ender(state, dep, "schedule: the session was taken over by another tick")
        report.actions.append(_action("error", schedule, s, "taken over while starting", dep))
        return
    report.actions.append(_action("started", schedule, s, f"ready{late}", dep))


def _interrupted(state: State, s: Session, mine: dict) -> None:
    """...unless the interruption came just after the deployment became ready: keep it."""
    row = [x for x in store.list_sessions(state, statuses=("starting",)) if x.id == s.id]
    dep = state.get_deployment(row[0].deployment_id) if row and row[0].deployment_id else None
    if dep is not None and dep.status is DeploymentStatus.READY:
        store.transition(state, s.id, "starting", "running", expect=mine,
                         started_at=dep.ready_at, note="")
    else:
        store.transition(state, s.id, "starting", "upcoming", expect=mine, tries=s.tries,
                         note="the tick starting it was interrupted")


def _end_or_check(state, schedule, s, now, ender, report) -> None:
    dep = state.get_deployment(s.deployment_id) if s.deployment_id else None
    if now >= s.ends_at:
        if not _finish(state, schedule, s, "running", "ended", now, note="window closed"):
            return
        if dep is not None and dep.status in _LIVE:
            try:
                ender(state, dep, "schedule: window closed")
            except DeployctlError as exc:
                store.transition(state, s.id, "ended", "running", note=f"end failed: {exc}")
                report.actions.append(_action("error", schedule, s, f"could not end: {exc}; "
                                              "its guard ends it at the window's end + grace"))
                return
        report.actions.append(_action("ended", schedule, s, "window closed", dep))
        return
    if dep is not None and dep.status in _LIVE:
        from .lifecycle import refresh

        dep, _ = refresh(state, dep)
    if dep is None or dep.status not in _LIVE:
        why = dep.end_reason if dep else "its deployment is unknown"
        if _finish(state, schedule, s, "running", "failed", now,
                   note=f"ended before the window closed: {why}"):
            report.actions.append(_action("failed", schedule, s, f"ended early: {why}", dep))


def _recover(state, schedule, s, now, ender, report) -> None:
    """A session left `starting` by a tick that died: adopt a deployment it made ready;
    otherwise end its half-made deployment (what cannot be ended now is `reap`'s, and its
    guard's ttl bounds it anyway) and give the session back."""
    age_s = (now - (s.claimed_at or now)).total_seconds()
    if s.claim_owner_alive and age_s < OTHER_HOST_STALE_S:
        return
    mine = {"claimed_at": s.claimed_at, "claimed_pid": s.claimed_pid}
    dep = state.get_deployment(s.deployment_id) if s.deployment_id else None
    if dep is not None and dep.status is DeploymentStatus.READY:
        if store.transition(state, s.id, "starting", "running", expect=mine,
                            started_at=dep.ready_at or now, note="adopted after its tick died"):
            report.actions.append(_action("recovered", schedule, s,
                                          "adopted the deployment its dead tick made ready", dep))
        return
    if not store.transition(state, s.id, "starting", "upcoming", expect=mine,
                            note="the tick starting it died; started again"):
        return
    if dep is not None and dep.status in _LIVE:
        with contextlib.suppress(DeployctlError):
            ender(state, dep, "schedule: the tick launching it died")
    report.actions.append(_action("recovered", schedule, s, "its tick died; retrying"))
