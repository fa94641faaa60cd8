"""Budget and limits for a booking, at `schedule add` (the start is checked again by the
same guardrails `up` uses, in `schedule_launch`).

- `limits.max_ttl`: the session's deployment lives lead + window + grace; above the limit
  the booking is refused.
- Budget: the whole window is projected with `guardrails.project` (price x (lead + window
  + grace) + storage) at the price of the offer `up` would choose now. The window's month
  must hold it together with what that month already carries: for the current month,
  its spend and what live deployments may still cost (`guardrails.current_spend`); for
  any month, the other bookings in it (every active schedule's windows and repeats, at
  their planned price) and this schedule's own repeats. Over the budget: refused, exit 3.
- `limits.max_deployments`: over the next 31 days, the most sessions that overlap any of
  this schedule's windows (each from start - lead to end + grace). More than the limit
  with other bookings: refused, exit 3. More only with deployments live now (they may be
  gone by then): a warning. The limit is checked again, against live deployments, at
  start.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from . import schedule_store as store
from .models import Offer, TaskSpec
from .schedule_store import Schedule
from .schedule_time import active_windows, occurrences, show_local
from .state import State
from .units import format_duration

__all__ = ["CLASH_HORIZON", "check_booking"]

CLASH_HORIZON = timedelta(days=31)
Interval = tuple[datetime, datetime, str]  # (from, to, what)


def check_booking(
    state: State, draft: Schedule, *, lead_s: int, offer: Offer | None, spec: TaskSpec,
    now: datetime, warnings: list[str], lead_of: Callable[[Schedule], int],
) -> float | None:
    """Refuse (guardrails.Refusal, exit 3) a booking the limits or the budget cannot hold;
    append warnings; return the projected cost of one window in USD (None: not priced).
    `offer`: what `up` would rent now (None: priced at the draft's planned price, if any)."""
    from .config import load_config
    from .guardrails import Refusal

    config = load_config()
    limits = config.limits
    life_s = lead_s + draft.duration_s + draft.grace_s
    if limits.max_ttl is not None and life_s > limits.max_ttl:
        raise Refusal(
            "max_ttl", f"limits.max_ttl: a session's deployment lives lead + window + grace = "
            f"{format_duration(life_s)}, above the limit of {format_duration(limits.max_ttl)}",
            hint="book a shorter window or a shorter --lead, or raise limits.max_ttl",
        )
    others = [(s, store.list_sessions(state, schedule_id=s.id)) for s in
              store.list_schedules(state)]
    projected = None
    if offer is not None or draft.planned_price_per_hour_usd is not None:
        projected = _check_budget(state, config, draft, offer, spec, life_s, others, now,
                                  lead_of)
    if limits.max_deployments is not None:
        _check_clash(state, draft, lead_s, limits.max_deployments, others, now, warnings,
                     lead_of)
    return projected


def _check_budget(state, config, draft, offer, spec, life_s, others, now, lead_of) -> float:
    from .guardrails import Refusal, current_spend, project
    from .ledger import month_bounds

    budget = config.budget
    month_start, month_end = month_bounds(None, draft.first_start_at)
    if offer is not None:
        one = project(offer, spec.model_copy(update={"ttl_s": life_s}), now, month_end).total_usd
        priced = f"{offer.gpu} on {offer.provider} at ${offer.price_per_hour_usd:.3f}/h"
    else:
        one = (draft.planned_price_per_hour_usd or 0.0) * life_s / 3600
        priced = f"at the task's price cap ${draft.planned_price_per_hour_usd:.3f}/h"
    budget_usd = budget.monthly_usd
    if budget_usd is None:
        return one
    first = draft.first_start_at
    mine = len(occurrences(draft, [(first, first + timedelta(seconds=draft.duration_s))],
                           month_end))
    booked = 0.0
    for schedule, sessions in others:
        price = schedule.planned_price_per_hour_usd or 0.0
        windows = [w for w in occurrences(schedule, active_windows(sessions), month_end)
                   if w[0] >= month_start]
        per_window_s = lead_of(schedule) + schedule.duration_s + schedule.grace_s
        booked += price * per_window_s / 3600 * len(windows)
    spend = committed = 0.0
    if month_start <= now < month_end:
        current = current_spend(state, now)
        spend, committed = current.spend_usd, current.committed_usd
    total = spend + committed + booked + one * mine
    if total <= budget_usd:
        return one
    show = budget.show
    repeats = f" x {mine} windows this month" if mine > 1 else ""
    raise Refusal(
        "budget",
        f"budget: {spec.name} from {show_local(first, draft.tz)} for "
        f"{format_duration(draft.duration_s)} is projected at {show(one)}{repeats} "
        f"({priced} x "
        f"{format_duration(life_s)} with lead and grace); with {first:%B}'s spend "
        f"{show(spend)}, {show(committed)} committed to live deployments and {show(booked)} "
        f"of other bookings, the month reaches {show(total)}, above the monthly budget of "
        f"{show(budget_usd)}; nothing was booked",
        hint="book a shorter window, raise budget.monthly, or remove another schedule",
        spend_usd=spend, projected_usd=one * mine, budget_usd=budget_usd,
    )


def _check_clash(state, draft, lead_s, limit, others, now, warnings, lead_of) -> None:
    from .guardrails import Refusal

    first = draft.first_start_at
    horizon = max(now, first) + CLASH_HORIZON
    mine = [_span(w, lead_s, draft.grace_s, "this booking") for w in
            occurrences(draft, [(first, first + timedelta(seconds=draft.duration_s))], horizon)]
    booked: list[Interval] = []
    for schedule, sessions in others:
        lead = lead_of(schedule)
        booked += [_span(w, lead, schedule.grace_s, f"schedule {schedule.id} "
                         f"({schedule.task_name}, {show_local(w[0], draft.tz)})")
                   for w in occurrences(schedule, active_windows(sessions), horizon)]
    live = [(d.created_at, d.created_at + timedelta(seconds=d.ttl_s or 10**9),
             f"deployment {d.id} ({d.task_name})")
            for d in state.list_deployments(live_only=True)]
    for window in mine:
        peak, names = _peak(window, booked)
        if 1 + peak > limit:
            raise Refusal(
                "max_deployments",
                f"limits.max_deployments: the session from {show_local(window[0], draft.tz)} "
                f"(with its lead) overlaps {', '.join(names)}: {1 + peak} deployments at once, "
                f"above the limit of {limit}; nothing was booked",
                hint="book another time, remove the other schedule, or raise "
                "limits.max_deployments",
            )
        with_live, live_names = _peak(window, booked + live)
        if 1 + with_live > limit:
            warnings.append(
                f"clash: the session from {show_local(window[0], draft.tz)} overlaps "
                f"{', '.join(live_names)} (limits.max_deployments {limit}); it will be "
                "refused at its start unless they have ended by then"
            )
            return


def _span(window: tuple[datetime, datetime], lead_s: int, grace_s: int, what: str) -> Interval:
    return window[0] - timedelta(seconds=lead_s), window[1] + timedelta(seconds=grace_s), what


def _peak(window: Interval, others: list[Interval]) -> tuple[int, list[str]]:
    """The most `others` that overlap at one moment inside `window`, and which."""
    inside = [o for o in others if o[0] < window[1] and o[1] > window[0]]
    events = sorted([(max(o[0], window[0]), 1, o[2]) for o in inside]
                    + [(min(o[1], window[1]), -1, o[2]) for o in inside],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same moment
    peak, count, current, names = 0, 0, [], []
    for _, step, what in events:
        count += step
        if step > 0:
            current.append(what)
        else:
            current.remove(what)
        if count > peak:
            peak, names = count, list(current)
    return peak, names
