"""When scheduled sessions happen: wall clocks in a time zone, cron repeats, and the lead.

Times are stored in UTC and read or written in the schedule's IANA zone (zoneinfo); cron
expressions are expanded by croniter in that zone, so "0 14 * * 2" stays 14:00 local
across daylight-saving changes. The lead (how long before its start a session's
deployment is launched) is measured: `auto_lead_s`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import schedule_store as store
from .errors import BadInputError
from .schedule_store import Schedule, Session
from .state import State

__all__ = [
    "NO_HISTORY_LEAD_S",
    "TICK_SLACK_S",
    "active_windows",
    "auto_lead_s",
    "check_cron",
    "cron_after",
    "lead_s",
    "local_tz_name",
    "next_window",
    "occurrences",
    "parse_at",
    "show_local",
    "window_ttl_s",
    "zone",
]

NO_HISTORY_LEAD_S = 600  # 10 minutes when the task has never been measured
TICK_SLACK_S = 60  # one cron interval: a start may be seen this late


def local_tz_name() -> str:
    """This machine's IANA zone name ($TZ, else /etc/localtime's target), else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink("/etc/localtime")
        candidates.append(target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "")
    except OSError:
        pass
    for name in candidates:
        if name and zone(name, quiet=True):
            return name
    return "UTC"


def zone(name: str, *, quiet: bool = False) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if quiet:
            return None
        raise BadInputError(
            "--tz", f"{name!r} is not a time zone; use an IANA name such as Europe/Paris, "
            "America/New_York or UTC",
        ) from None


def parse_at(text: str, tz_name: str) -> datetime:
    """A start given as "2026-12-01 14:00" (wall clock in `tz_name`) or with an explicit
    offset, in UTC. A wall time the clocks skip (spring forward) is refused; one they pass
    twice (autumn) means the first."""
    try:
        wall = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInputError(
            "--at", f"{text!r} is not a date and time; use e.g. \"2026-12-01 14:00\""
        ) from None
    if wall.tzinfo is not None:
        return wall.astimezone(timezone.utc)
    tzinfo = zone(tz_name)
    local = wall.replace(tzinfo=tzinfo)
    if local.astimezone(timezone.utc).astimezone(tzinfo).replace(tzinfo=None) != wall:
        raise BadInputError(
            "--at", f"{wall:%Y-%m-%d %H:%M} does not exist in {tz_name} (the clocks jump "
            "forward then); choose another time",
        )
    return local.astimezone(timezone.utc)


def check_cron(expr: str) -> str:
    from croniter import croniter

    expr = " ".join(expr.split())
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise BadInputError(
            "--repeat", f"{expr!r} is not a cron expression; use five fields, e.g. "
            "\"0 14 * * 2\" (Tuesdays at 14:00)",
        )
    return expr


def cron_after(expr: str, tz_name: str, after: datetime) -> Iterator[datetime]:
    """Cron times strictly after `after`, in UTC, read in `tz_name`. A wall time that the
    autumn fold makes occur twice starts once (as cron does)."""
    from croniter import croniter

    tzinfo = zone(tz_name)
    local = after.astimezone(tzinfo)
    last_wall = local.replace(tzinfo=None)
    it = croniter(expr, local)
    while True:
        nxt = it.get_next(datetime)
        if nxt.tzinfo is None:
            nxt = nxt.replace(tzinfo=tzinfo)
        wall = nxt.astimezone(tzinfo).replace(tzinfo=None)
        if wall <= last_wall:
            continue
        last_wall = wall
        yield nxt.astimezone(timezone.utc)


def next_window(
    schedule: Schedule, after_start: datetime, now: datetime
) -> tuple[datetime, datetime] | None:
    """The repeat's next window after the occurrence that started at `after_start`: the
    first cron time after it whose window is still open at `now` (occurrences slept
    through are skipped). None when the schedule does not repeat."""
    if not schedule.repeat_cron:
        return None
    length = timedelta(seconds=schedule.duration_s)
    after = max(after_start, now - length)
    for start in cron_after(schedule.repeat_cron, schedule.tz, after):
        if start > after_start and start + length > now:
            return start, start + length
    return None  # pragma: no cover (the generator is endless)


def occurrences(
    schedule: Schedule, active: list[tuple[datetime, datetime]], until: datetime
) -> list[tuple[datetime, datetime]]:
    """The schedule's windows before `until`: its `active` ones (upcoming, starting or
    running sessions) and the repeats that will follow the last of them (at most 500)."""
    active = sorted(active)
    out = [w for w in active if w[0] < until]
    if schedule.repeat_cron and schedule.removed_at is None and active:
        length = timedelta(seconds=schedule.duration_s)
        for start in cron_after(schedule.repeat_cron, schedule.tz, active[-1][0]):
            if start >= until or len(out) >= 500:
                break
            out.append((start, start + length))
    return out


def active_windows(sessions: list[Session]) -> list[tuple[datetime, datetime]]:
    return [(s.starts_at, s.ends_at) for s in sessions if s.status in store.ACTIVE]


def window_ttl_s(schedule: Schedule, session: Session, now: datetime) -> int:
    """The ttl (and keep-alive) of a session's deployment launched at `now`: until the
    window's end + grace, so its guard ends it on time even if no tick ever runs again."""
    deadline = session.ends_at + timedelta(seconds=schedule.grace_s)
    return max(int((deadline - now).total_seconds()), 1)


def show_local(when: datetime, tz_name: str) -> str:
    return when.astimezone(zone(tz_name)).strftime("%Y-%m-%d %H:%M %Z")


def auto_lead_s(state: State, task_name: str, gpu: str | None = None) -> tuple[int, str]:
    """(lead, why): p90 of the task's measured cold starts (rent -> ready, from the ledger),
    on `gpu` when it has been measured there, plus one tick interval; 10 min without."""
    rows = state._rows(
        "SELECT l.cold_start_s, d.gpu FROM ledger l JOIN deployments d ON d.id = l.deployment_id"
        " WHERE d.task_name = ? AND l.cold_start_s IS NOT NULL AND l.cold_start_s > 0"
        " ORDER BY l.closed_at DESC LIMIT 50",
        task_name,
    )
    on_gpu = [r[0] for r in rows if gpu and r[1] == gpu]
    samples, where = (on_gpu, f" on {gpu}") if on_gpu else ([r[0] for r in rows], "")
    if not samples:
        return NO_HISTORY_LEAD_S, "no measured cold start yet: 10 min"
    ordered = sorted(samples)
    p90 = ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]
    lead = math.ceil(p90) + TICK_SLACK_S
    return lead, f"p90 of {len(samples)} cold starts{where} ({p90:.0f} s) + {TICK_SLACK_S} s"


def lead_s(state: State, schedule: Schedule) -> int:
    """The schedule's lead: fixed, or measured now (history grows between sessions)."""
    if schedule.lead_s is not None:
        return schedule.lead_s
    return auto_lead_s(state, schedule.task_name, schedule.planned_gpu)[0]
