"""Schedules and their sessions, kept in the state database beside the deployments.

The two tables live in the same SQLite file as `State` (WAL, busy timeout, mode 0600) but
are not among state.py's numbered migrations: this module creates them itself with
`CREATE TABLE IF NOT EXISTS` on first use (`ensure_tables`), so state.py's schema version
is untouched and either side can evolve on its own.

    schedules  one row per `deployctl schedule add`: task, window length, time zone, lead
               (NULL: auto), grace, cron repeat, the price planned at add; `removed_at`
               once `schedule rm` cancelled it.
    sessions   one row per occurrence: its window [starts_at, ends_at) in UTC, its status
               and the deployment serving it. UNIQUE (schedule_id, starts_at): an
               occurrence exists once, however many ticks create it at the same time.

A session's life (every arrow is one conditional UPDATE, see `transition`):

    upcoming -> starting -> running -> ended
        |           |          `-----> failed   (its deployment died before the end)
        |           `--> upcoming  (retry: refused by a guardrail, a failed launch, a
        |                           tick that died while starting it), or failed
        `--> missed                (its window closed before any tick started it)

Several ticks (cron, systemd, CI, a person) may run at once on one database. Each status
change is `UPDATE sessions SET status = new ... WHERE id = ? AND status = old` inside a
`BEGIN IMMEDIATE` transaction: SQLite serialises the writers, so exactly one tick sees
rowcount 1 and owns the session; the others see 0 and leave it alone. That is how two
ticks at once start one deployment, not two.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import BadInputError, redact
from .state import State, _dt, _ts  # one time format for the whole state database

__all__ = [
    "ACTIVE",
    "FINAL",
    "Schedule",
    "Session",
    "add_schedule",
    "claimer",
    "ensure_tables",
    "get_schedule",
    "insert_session",
    "list_schedules",
    "list_sessions",
    "remove_schedule",
    "set_deployment",
    "transition",
]

ACTIVE = ("upcoming", "starting", "running")
FINAL = ("ended", "missed", "failed")
_HOST = socket.gethostname()

_TABLES = [
    """CREATE TABLE IF NOT EXISTS schedules (
        id TEXT PRIMARY KEY, task TEXT NOT NULL, task_name TEXT NOT NULL,
        providers_json TEXT NOT NULL DEFAULT '[]', first_start_at TEXT NOT NULL,
        duration_s INTEGER NOT NULL CHECK (duration_s > 0), tz TEXT NOT NULL,
        lead_s INTEGER, grace_s INTEGER NOT NULL, repeat_cron TEXT,
        planned_gpu TEXT, planned_price_per_hour_usd REAL,
        created_at TEXT NOT NULL, removed_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id INTEGER PRIMARY KEY, schedule_id TEXT NOT NULL REFERENCES schedules(id),
        starts_at TEXT NOT NULL, ends_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('upcoming', 'starting', 'running', 'ended', 'missed', 'failed')),
        deployment_id TEXT, tries INTEGER NOT NULL DEFAULT 0,
        claimed_pid INTEGER, claimed_host TEXT, claimed_at TEXT,
        started_at TEXT, ended_at TEXT, note TEXT NOT NULL DEFAULT '',
        UNIQUE (schedule_id, starts_at))""",
    "CREATE INDEX IF NOT EXISTS sessions_status ON sessions(status, starts_at)",
]
_SESSION_SETTABLE = frozenset((
    "deployment_id", "tries", "claimed_pid", "claimed_host", "claimed_at", "started_at",
    "ended_at", "note",
))  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """What `schedule add` booked: a task, a window length, and when it recurs."""

    id: str
    task: str  # built-in task name, or the absolute path of the user's task file
    task_name: str
    providers: tuple[str, ...]
    first_start_at: datetime
    duration_s: int
    tz: str  # IANA name: where wall-clock times (--at, --repeat) are read
    lead_s: int | None  # None: auto (measured cold starts)
    grace_s: int
    repeat_cron: str | None
    planned_gpu: str | None
    planned_price_per_hour_usd: float | None
    created_at: datetime
    removed_at: datetime | None


@dataclass(frozen=True)
class Session:
    """One occurrence of a schedule: a window [starts_at, ends_at) in UTC."""

    id: int
    schedule_id: str
    starts_at: datetime
    ends_at: datetime
    status: str  # upcoming | starting | running | ended | missed | failed
    deployment_id: str | None
    tries: int
    claimed_pid: int | None  # the tick process that claimed it, and its host
    claimed_host: str | None
    claimed_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    note: str

    @property
    def claim_owner_alive(self) -> bool:
        """False when the tick that claimed it died (known on this host only)."""
        if not self.claimed_pid or self.claimed_host != _HOST:
            return True
        try:
            os.kill(self.claimed_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _schedule(row: sqlite3.Row) -> Schedule:
    d = dict(row)
    d["providers"] = tuple(json.loads(d.pop("providers_json")))
    for k in ("first_start_at", "created_at", "removed_at"):
        d[k] = _dt(d[k])
    return Schedule(**d)


def _session(row: sqlite3.Row) -> Session:
    d = dict(row)
    for k in ("starts_at", "ends_at", "claimed_at", "started_at", "ended_at"):
        d[k] = _dt(d[k])
    return Session(**d)


def ensure_tables(state: State) -> None:
    """Create the schedule tables in the state database if they are not there yet."""
    if len(state._rows(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('schedules', 'sessions')"
    )) == 2:  # fmt: skip
        return
    with state._tx() as db:
        for statement in _TABLES:
            db.execute(statement)


def add_schedule(
    state: State, *, task: str, task_name: str, providers: tuple[str, ...],
    starts_at: datetime, ends_at: datetime, tz: str, lead_s: int | None, grace_s: int,
    repeat_cron: str | None, planned_gpu: str | None,
    planned_price_per_hour_usd: float | None, now: datetime,
) -> tuple[Schedule, Session]:
    """Record a schedule and its first session (upcoming), in one transaction."""
    ensure_tables(state)
    with state._tx() as db:
        sid = "s" + secrets.token_hex(3)
        while db.execute("SELECT 1 FROM schedules WHERE id = ?", (sid,)).fetchone():
            sid = "s" + secrets.token_hex(3)
        db.execute(
            "INSERT INTO schedules (id, task, task_name, providers_json, first_start_at,"
            " duration_s, tz, lead_s, grace_s, repeat_cron, planned_gpu,"
            " planned_price_per_hour_usd, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (sid, task, task_name, json.dumps(list(providers)), _ts(starts_at),
             int((ends_at - starts_at).total_seconds()), tz, lead_s, grace_s, repeat_cron,
             planned_gpu, planned_price_per_hour_usd, _ts(now)),
        )  # fmt: skip
        cur = db.execute(
            "INSERT INTO sessions (schedule_id, starts_at, ends_at, status) VALUES (?,?,?,?)",
            (sid, _ts(starts_at), _ts(ends_at), "upcoming"),
        )
        session_id = int(cur.lastrowid)
    return get_schedule(state, sid), _get_session(state, session_id)


def get_schedule(state: State, ref: str) -> Schedule:
    """A schedule by id or unique id prefix; BadInputError otherwise."""
    ensure_tables(state)
    rows = state._rows("SELECT * FROM schedules WHERE id = ?", ref)
    if not rows and re.fullmatch(r"[A-Za-z0-9]{1,16}", ref or ""):
        rows = state._rows("SELECT * FROM schedules WHERE id LIKE ? ORDER BY id LIMIT 3",
                           ref + "%")
        if len(rows) > 1:
            raise BadInputError("schedule", f"{ref!r} matches several schedules; give more")
    if not rows:
        raise BadInputError("schedule", f"no schedule {ref!r}; see `deployctl schedule list`")
    return _schedule(rows[0])


def list_schedules(state: State, *, include_removed: bool = False) -> list[Schedule]:
    """Schedules, oldest first."""
    ensure_tables(state)
    where = "" if include_removed else "WHERE removed_at IS NULL"
    return [_schedule(r) for r in state._rows(f"SELECT * FROM schedules {where} ORDER BY"
                                              " created_at, rowid")]


def _get_session(state: State, session_id: int) -> Session:
    return _session(state._rows("SELECT * FROM sessions WHERE id = ?", session_id)[0])


def list_sessions(
    state: State, *, statuses: tuple[str, ...] | None = None, schedule_id: str | None = None
) -> list[Session]:
    """Sessions in start order, filtered by status and schedule."""
    ensure_tables(state)
    sql, args = "SELECT * FROM sessions WHERE 1", []
    if statuses:
        sql += f" AND status IN ({', '.join('?' * len(statuses))})"
        args += list(statuses)
    if schedule_id:
        sql, args = sql + " AND schedule_id = ?", [*args, schedule_id]
    return [_session(r) for r in state._rows(sql + " ORDER BY starts_at, id", *args)]


def transition(
    state: State, session_id: int, from_status: str, to_status: str, *,
    follow: tuple[datetime, datetime] | None = None, expect: dict[str, Any] | None = None,
    **sets: Any,
) -> bool:
    """Move a session from `from_status` to `to_status` (setting `sets` columns) if and
    only if it is still in `from_status` (and its columns equal `expect`). Returns True
    for the one caller that made the change. `follow`: the next occurrence's window,
    inserted in the same transaction (at most once, whoever inserts it)."""
    if unknown := set(sets) - _SESSION_SETTABLE:
        raise ValueError(f"transition: unknown columns {sorted(unknown)}")
    if "note" in sets:
        sets["note"] = redact(sets["note"] or "")
    values = {k: _ts(v) if isinstance(v, datetime) else v for k, v in sets.items()}
    assignments = "".join(f", {k} = ?" for k in values)
    where, args = "id = ? AND status = ?", [session_id, from_status]
    for k, v in (expect or {}).items():
        where += f" AND {k} IS ?"
        args.append(_ts(v) if isinstance(v, datetime) else v)
    with state._tx() as db:
        cur = db.execute(
            f"UPDATE sessions SET status = ?{assignments} WHERE {where}",
            [to_status, *values.values(), *args],
        )
        won = cur.rowcount == 1
        if won and follow is not None:
            row = db.execute("SELECT schedule_id FROM sessions WHERE id = ?", (session_id,))
            _insert_session(db, row.fetchone()[0], *follow)
    return won


def _insert_session(db: sqlite3.Connection, schedule_id: str, starts_at: datetime,
                    ends_at: datetime) -> None:
    removed = db.execute("SELECT removed_at FROM schedules WHERE id = ?", (schedule_id,))
    if removed.fetchone()[0] is not None:
        return
    db.execute(
        "INSERT INTO sessions (schedule_id, starts_at, ends_at, status) VALUES (?,?,?,?)"
        " ON CONFLICT (schedule_id, starts_at) DO NOTHING",
        (schedule_id, _ts(starts_at), _ts(ends_at), "upcoming"),
    )


def insert_session(state: State, schedule_id: str, starts_at: datetime,
                   ends_at: datetime) -> None:
    """Create an upcoming occurrence unless it exists (or the schedule was removed)."""
    with state._tx() as db:
        _insert_session(db, schedule_id, starts_at, ends_at)


def set_deployment(state: State, session_id: int, deployment_id: str) -> None:
    """Attach the deployment being launched to its (starting) session, before any rent."""
    with state._tx() as db:
        db.execute("UPDATE sessions SET deployment_id = ? WHERE id = ?",
                   (deployment_id, session_id))


def remove_schedule(state: State, schedule_id: str, now: datetime) -> tuple[int, list[Session]]:
    """Cancel a schedule: its upcoming sessions are deleted and no occurrence follows.
    Returns (sessions deleted, sessions still starting or running, left to end on time)."""
    with state._tx() as db:
        db.execute("UPDATE schedules SET removed_at = ? WHERE id = ? AND removed_at IS NULL",
                   (_ts(now), schedule_id))
        cur = db.execute("DELETE FROM sessions WHERE schedule_id = ? AND status = 'upcoming'",
                         (schedule_id,))
        deleted = cur.rowcount
    left = list_sessions(state, statuses=("starting", "running"), schedule_id=schedule_id)
    return deleted, left


def claimer() -> dict[str, Any]:
    """Columns that name this process as a session's claimant."""
    return {"claimed_pid": os.getpid(), "claimed_host": _HOST}
