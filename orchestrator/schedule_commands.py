"""What the `schedule` commands do, between the CLI and `schedule`: output, signals, the
foreground loop and the snippets `schedule export` prints."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import datetime, timezone
from typing import Any

from . import schedule as sched
from . import schedule_store as store
from .errors import BadInputError, DeployctlError
from .render import console, print_json
from .schedule_time import lead_s, show_local
from .state import State, load_key
from .units import format_duration

__all__ = [
    "add_command",
    "export_command",
    "list_command",
    "rm_command",
    "run_command",
    "session_rows",
    "show_sessions",
    "tick_command",
]


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(timezone.utc).isoformat(timespec="seconds") if when else None


def _session_json(state: State, schedule: store.Schedule, s: store.Session, *,
                  show_key: bool = False) -> dict[str, Any]:
    dep = state.get_deployment(s.deployment_id) if s.deployment_id else None
    doc = {
        "id": s.id, "schedule_id": schedule.id, "task": schedule.task_name,
        "status": s.status, "starts_at": _iso(s.starts_at), "ends_at": _iso(s.ends_at),
        "starts_local": show_local(s.starts_at, schedule.tz),
        "ends_local": show_local(s.ends_at, schedule.tz),
        "deployment_id": s.deployment_id,
        "endpoint_url": f"{dep.endpoint_url.rstrip('/')}/v1" if dep and dep.endpoint_url
        else None,
        "note": s.note or None,
    }  # fmt: skip
    if show_key and s.status == "running" and s.deployment_id:
        doc["key"] = load_key(s.deployment_id)
    return doc


def _schedule_json(state: State, schedule: store.Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id, "task": schedule.task_name, "task_ref": schedule.task,
        "providers": list(schedule.providers), "tz": schedule.tz,
        "duration_s": schedule.duration_s, "lead": "auto" if schedule.lead_s is None
        else schedule.lead_s, "lead_s": lead_s(state, schedule), "grace_s": schedule.grace_s,
        "repeat": schedule.repeat_cron, "planned_gpu": schedule.planned_gpu,
        "planned_price_per_hour_usd": schedule.planned_price_per_hour_usd,
        "removed_at": _iso(schedule.removed_at),
    }  # fmt: skip


# -- add / list / rm ----------------------------------------------------------------------


def add_command(*, task: str, at: str | None, duration: str, tz: str | None, lead: str,
                repeat: str | None, grace: str | None, providers: tuple[str, ...],
                as_json: bool) -> None:
    with State.open() as state:
        added = sched.add(state, task=task, at=at, duration=duration, tz=tz, lead=lead,
                          repeat=repeat, grace=grace, providers=providers)
        doc = {
            "schema_version": 1, "schedule": _schedule_json(state, added.schedule),
            "session": _session_json(state, added.schedule, added.session),
            "lead_s": added.lead_s, "lead_why": added.lead_why,
            "projected_cost_usd": None if added.projected_cost_usd is None
            else round(added.projected_cost_usd, 4),
            "warnings": added.warnings,
        }  # fmt: skip
    if as_json:
        print_json(doc)
        return
    out, err = console(), console(stderr=True)
    s, sch = doc["session"], added.schedule
    out.print(f"Booked {sch.id}: {sch.task_name} from {s['starts_local']} to "
              f"{s['ends_local']}" + (f", repeating {sch.repeat_cron!r}" if sch.repeat_cron
                                      else ""))
    out.print(f"Starts:   {format_duration(added.lead_s)} before ({added.lead_why})")
    out.print(f"Ends:     at the window's end; its guard destroys it by +"
              f"{format_duration(sch.grace_s)} even if no tick runs")
    if added.projected_cost_usd is not None:
        out.print(f"Cost:     up to ${added.projected_cost_usd:.4f} a window"
                  + (f" ({sch.planned_gpu})" if sch.planned_gpu else ""))
    out.print("Ticks:    run `deployctl schedule tick` every minute (see `deployctl schedule "
              "export --cron`) or keep `deployctl schedule run` running")
    for warning in added.warnings:
        err.print(f"warning: {warning}", markup=False)


def list_command(*, show_all: bool, as_json: bool, show_key: bool) -> None:
    with State.open() as state:
        docs = []
        for schedule in store.list_schedules(state, include_removed=show_all):
            sessions = store.list_sessions(state, schedule_id=schedule.id)
            if not show_all:  # the active ones and the last few that are over
                done = [x for x in sessions if x.status in store.FINAL][-3:]
                sessions = [x for x in sessions if x.status in store.ACTIVE or x in done]
            doc = _schedule_json(state, schedule)
            doc["sessions"] = [_session_json(state, schedule, x, show_key=show_key)
                               for x in sessions]
            docs.append(doc)
    if as_json:
        print_json({"schema_version": 1, "schedules": docs})
        return
    _print_sessions(
        [dict(x, repeat=d["repeat"], lead=d["lead"], lead_s=d["lead_s"])
         for d in docs for x in d["sessions"]],
        empty="no schedules (add one with `deployctl schedule add`)", show_key=show_key,
    )


def _print_sessions(rows: list[dict], *, empty: str, show_key: bool = False,
                    title: str | None = None) -> None:
    from .render import table

    out = console()
    if not rows:
        out.print(empty)
        return
    t = table("schedule", "session", "task", "window", "lead", "repeat", "status",
              "deployment", "endpoint / note", title=title)
    for r in rows:
        lead = "-"
        if "lead_s" in r:
            lead = ("auto " if r.get("lead") == "auto" else "") + format_duration(r["lead_s"])
        window = f"{r['starts_local']} → {r['ends_local'].split(' ', 1)[1]}"
        detail = r["endpoint_url"] or r["note"] or ""
        if show_key and r.get("key"):
            detail += f"  key {r['key']}"
        t.add_row(r["schedule_id"], str(r["id"]), r["task"], window, lead,
                  r.get("repeat") or "-", r["status"], r["deployment_id"] or "-", detail)
    out.print(t)


def rm_command(*, ref: str, as_json: bool) -> None:
    with State.open() as state:
        schedule = store.get_schedule(state, ref)
        deleted, left = store.remove_schedule(state, schedule.id, datetime.now(timezone.utc))
        still = [_session_json(state, schedule, x) for x in left]
    if as_json:
        print_json({"schema_version": 1, "removed": schedule.id, "cancelled_sessions": deleted,
                    "still_running": still})
        return
    out = console()
    out.print(f"removed {schedule.id} ({schedule.task_name}): {deleted} upcoming session"
              f"{'' if deleted == 1 else 's'} cancelled")
    for x in still:
        out.print(f"session {x['id']} is {x['status']} (deployment {x['deployment_id']}): it "
                  f"still ends at {x['ends_local']}; `deployctl down {x['deployment_id']}` "
                  "ends it now")


# -- status --------------------------------------------------------------------------------


def session_rows(state: State) -> list[dict[str, Any]]:
    """Upcoming and ongoing sessions (upcoming, starting, running), soonest first, as
    `deployctl status` shows them."""
    schedules = {s.id: s for s in store.list_schedules(state, include_removed=True)}
    return [_session_json(state, schedules[x.schedule_id], x)
            for x in store.list_sessions(state, statuses=store.ACTIVE)]


def show_sessions(rows: list[dict[str, Any]]) -> None:
    """Print `session_rows` under the deployments table (nothing when there are none)."""
    if rows:
        _print_sessions(rows, empty="", title="scheduled sessions")


# -- tick / run ------------------------------------------------------------------------------


class _Stopper:
    """SIGTERM: stop after the current tick; while a launch is in flight, interrupt it (the
    launcher destroys what it made, the session is given back) and exit 143."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.launching = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop.set()
        if self.launching:
            raise SystemExit(143)

    def on_launch(self, launching: bool) -> None:
        self.launching = launching
        if launching and self.stop.is_set():
            raise SystemExit(143)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def _report_json(report: sched.TickReport) -> dict[str, Any]:
    return {"schema_version": 1, "now": _iso(report.now),
            "actions": [a.as_dict() for a in report.actions],
            "next_start_at": _iso(report.next_start_at)}


def _print_report(report: sched.TickReport, *, quiet_when_idle: bool = False) -> None:
    out = console()
    stamp = report.now.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    for a in report.actions:
        what = f" {a.deployment_id}" if a.deployment_id else ""
        where = f" {a.endpoint_url}" if a.endpoint_url else ""
        out.print(f"{stamp} {a.kind} session {a.session_id} ({a.task}, {a.schedule_id}){what}"
                  f"{where}{': ' + a.detail if a.detail else ''}", markup=False)
    if not report.actions and not quiet_when_idle:
        nxt = (f"; next start at {report.next_start_at.astimezone():%Y-%m-%d %H:%M:%S}"
               if report.next_start_at else "")
        out.print(f"{stamp} nothing due{nxt}")


def _parse_now(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadInputError("--now", f"{text!r} is not an ISO date and time") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def tick_command(*, as_json: bool, now: str | None = None) -> None:
    at = _parse_now(now)
    stopper = _Stopper()
    try:
        with State.open() as state:
            report = sched.tick(state, now=at, on_launch=stopper.on_launch)
    finally:
        stopper.restore()
    if as_json:
        print_json(_report_json(report))
    else:
        _print_report(report)
    if report.exit_code:
        raise SystemExit(report.exit_code)


def run_command(*, interval_s: float, as_json: bool) -> None:
    stopper = _Stopper()
    err = console(stderr=True)
    err.print(f"ticking every {interval_s:g} s; stop with SIGTERM or Ctrl-C", markup=False)
    try:
        while not stopper.stop.is_set():
            try:
                with State.open() as state:
                    report = sched.tick(state, on_launch=stopper.on_launch)
            except DeployctlError as exc:  # a busy database, a bad task: try next time
                err.print(f"tick failed: {exc}", markup=False)
            else:
                if as_json:
                    if report.actions:
                        import json

                        print(json.dumps(_report_json(report)), flush=True)
                else:
                    _print_report(report, quiet_when_idle=True)
                    sys.stdout.flush()
            stopper.stop.wait(interval_s)
    finally:
        stopper.restore()
    err.print("stopped", markup=False)


# -- export --------------------------------------------------------------------------------


def export_command(*, kind: str, interval_s: float) -> None:
    from .schedule_export import snippet

    with State.open() as state:
        schedules = store.list_schedules(state)
    print(snippet(kind, interval_s=interval_s, schedules=schedules), end="")
