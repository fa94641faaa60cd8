"""The state database: deployments, attempts, the launch journal, events and the ledger.

One SQLite file (WAL, busy timeout 10 s, mode 0600) under the data dir:
`$DEPLOYCTL_STATE_DIR`, else `$XDG_DATA_HOME/deployctl`, else ~/.local/share/deployctl
(mode 0700). Several deployctl processes may use it at once, so every write is one short
`BEGIN IMMEDIATE` transaction. The journal's intent row is written *before* a provider
call and resolved after it: `reap` trusts it to tell live instances from leaks.

The money tables (budget decisions, guard observations, alerts sent) are in
`state_money.py`, mixed into `State`; the ledger's arithmetic is in `ledger.py`.

Secrets never go into the database: endpoint keys live apart, one 0600 file per
deployment under `<data dir>/keys/` (`save_key`, `load_key`, `delete_key`). Free text
(reasons, details, event messages) is passed through `errors.redact` on the way in.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import BadInputError, DeployctlError, redact
from .models import Attempt, Deployment, DeploymentStatus
from .paths import data_dir, private_dir
from .state_money import MONEY_SCHEMA, BudgetEvent, MoneyTables, Observation

__all__ = [
    "Bill",
    "BudgetEvent",
    "Event",
    "JournalEntry",
    "Observation",
    "State",
    "data_dir",
    "delete_key",
    "load_key",
    "save_key",
]

BUSY_TIMEOUT_S = 10.0
_LIVE_SQL = "('planning', 'launching', 'ready')"  # the statuses that may hold an instance
_HOST = socket.gethostname()
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Schema migrations, applied in order; PRAGMA user_version counts those applied.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY, task_name TEXT NOT NULL, task_json TEXT NOT NULL DEFAULT '{}',
            provider TEXT, offer_key TEXT, gpu TEXT, gpu_count INTEGER NOT NULL DEFAULT 1,
            instance_id TEXT, endpoint_url TEXT, model_name TEXT, status TEXT NOT NULL,
            keep_alive_s INTEGER NOT NULL, ttl_s INTEGER NOT NULL,
            price_per_hour_usd REAL NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
            ready_at TEXT, ended_at TEXT, end_reason TEXT NOT NULL DEFAULT '',
            cost_usd REAL NOT NULL DEFAULT 0, labels_json TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX deployments_task ON deployments(task_name, created_at)",
        "CREATE INDEX deployments_status ON deployments(status)",
        """CREATE TABLE attempts (
            deployment_id TEXT NOT NULL REFERENCES deployments(id), n INTEGER NOT NULL,
            provider TEXT NOT NULL, offer_key TEXT NOT NULL, gpu TEXT NOT NULL,
            price_per_hour_usd REAL NOT NULL, instance_id TEXT, outcome TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '', started_at TEXT NOT NULL, ended_at TEXT,
            PRIMARY KEY (deployment_id, n))""",
        """CREATE TABLE journal (
            id INTEGER PRIMARY KEY, deployment_id TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('rent', 'terminate')),
            provider TEXT NOT NULL, offer_key TEXT, instance_id TEXT,
            state TEXT NOT NULL CHECK (state IN ('intent', 'done', 'failed')),
            detail TEXT NOT NULL DEFAULT '', pid INTEGER, host TEXT,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        "CREATE INDEX journal_deployment ON journal(deployment_id)",
        "CREATE INDEX journal_state ON journal(state)",
        "CREATE INDEX journal_instance ON journal(provider, instance_id)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY, deployment_id TEXT NOT NULL, at TEXT NOT NULL,
            kind TEXT NOT NULL, message TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX events_deployment ON events(deployment_id, id)",
        """CREATE TABLE ledger (
            deployment_id TEXT PRIMARY KEY REFERENCES deployments(id),
            billed_s REAL NOT NULL, price_per_hour_usd REAL NOT NULL, cost_usd REAL NOT NULL,
            provider_cost_usd REAL, requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cold_start_s REAL, idle_s REAL, closed_at TEXT NOT NULL)""",
    ],
    MONEY_SCHEMA,  # 2: budget decisions, guard observations, alerts, failed instances
]
SCHEMA_VERSION = len(MIGRATIONS)

_DEPLOYMENT_COLUMNS = frozenset((
    "task_name", "task_json", "provider", "offer_key", "gpu", "gpu_count", "instance_id",
    "endpoint_url", "model_name", "status", "keep_alive_s", "ttl_s", "price_per_hour_usd",
    "ready_at", "ended_at", "end_reason", "cost_usd", "labels_json",
))  # fmt: skip
_ATTEMPT_COLUMNS = (
    "n", "provider", "offer_key", "gpu", "price_per_hour_usd", "instance_id", "outcome",
    "reason", "started_at", "ended_at",
)  # fmt: skip


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ts(value: datetime | None) -> str | None:
    """ISO-8601 UTC at fixed width, so that text order is time order. Naive means UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _db_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _ts(value)
    return value.value if isinstance(value, Enum) else value


def _pid_alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that wrote a journal row still runs (other hosts: assume so)."""
    if not pid or host != _HOST:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@dataclass(frozen=True)
class JournalEntry:
    """One journal row: an intended or finished provider call (rent or terminate)."""

    id: int
    deployment_id: str
    action: str  # rent | terminate
    provider: str
    offer_key: str | None
    instance_id: str | None
    state: str  # intent | done | failed
    detail: str
    pid: int | None  # the process that wrote the intent, and its host
    host: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def owner_alive(self) -> bool:
        """False when the process that wrote the row has died (checked on this host only)."""
        return _pid_alive(self.pid, self.host)


@dataclass(frozen=True)
class Event:
    """One line of a deployment's history (phase changes, warnings, errors)."""

    id: int
    deployment_id: str
    at: datetime
    kind: str
    message: str


class Served:
    """What a bill derives from its columns (billed_s, gpu_count, prompt/completion tokens):
    shared by the ledger's closed rows (Bill) and open ones (ledger.DeploymentBill)."""

    billed_s: float
    gpu_count: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def gpu_s(self) -> float:
        """GPU-seconds of the serving instance: billed seconds x GPU count."""
        return self.billed_s * self.gpu_count

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Bill(Served):
    """A closed ledger row: what one deployment cost and what it served."""

    deployment_id: str
    billed_s: float
    price_per_hour_usd: float
    cost_usd: float
    provider_cost_usd: float | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cold_start_s: float | None
    idle_s: float | None
    closed_at: datetime
    gpu_count: int = 1
    failed_instances: int = 0  # instances of failed attempts: they billed too
    failed_instances_s: float = 0.0
    failed_instances_cost_usd: float = 0.0


def _from_row(cls: type, row: sqlite3.Row) -> Any:
    """A dataclass from a row, with its timestamp columns (at, *_at) parsed."""
    return cls(**{k: _dt(v) if k == "at" or k.endswith("_at") else v for k, v in dict(row).items()})


class State(MoneyTables):
    """A connection to the state database; use as `with State.open() as state: ...`.

    Safe to share between threads of one process; each process opens its own.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else private_dir(data_dir()) / "state.db"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # -wal/-shm copy the mode
        if self.path.stat().st_mode & 0o077:
            self.path.chmod(0o600)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._use_wal()
            # NORMAL in WAL mode: every commit survives a crashed or killed process; only an
            # OS crash can lose the last ones, and a lost row makes `reap` destroy, never keep.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _use_wal(self) -> None:
        """Switch to WAL (persistent in the file). On a fresh file several processes race
        for it, and SQLite answers "locked" at once instead of waiting: retry until the
        busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))
        if mode.lower() != "wal":
            raise DeployctlError(f"state database {self.path} cannot use WAL mode")

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> State:
        """Open the database at `path` (default `<data dir>/state.db`), creating the file
        and its schema on first use."""
        return cls(path)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; the write lock is taken at BEGIN, never mid-way."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise DeployctlError(
                    f"state database {self.path} stayed busy for {BUSY_TIMEOUT_S:.0f} s ({exc})",
                    hint="another deployctl process holds it; try again",
                ) from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _insert(
        self, db: sqlite3.Connection, table: str, suffix: str = "", *, verb="INSERT", **values: Any
    ) -> sqlite3.Cursor:
        names, marks = ", ".join(values), ", ".join("?" * len(values))
        sql = f"{verb} INTO {table} ({names}) VALUES ({marks}) {suffix}"
        return db.execute(sql, [_db_value(v) for v in values.values()])

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _migrate(self) -> None:
        if self.schema_version() >= SCHEMA_VERSION:
            return
        with self._tx() as db:  # read again under the lock: another process may have won
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DeployctlError(f"state database {self.path} is from a newer deployctl")
            for statement in (s for m in MIGRATIONS[version:] for s in m):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        """The schema version of the open database (PRAGMA user_version)."""
        return self._rows("PRAGMA user_version")[0][0]

    # -- deployments -------------------------------------------------------------------

    def new_deployment(
        self,
        task_name: str,
        task_json: str,
        keep_alive_s: int,
        ttl_s: int,
        labels: dict[str, str] | None = None,
    ) -> Deployment:
        """Record a new deployment in status `planning`, with a fresh id "d" + 8 hex."""
        with self._tx() as db:
            dep_id = "d" + secrets.token_hex(4)
            while db.execute("SELECT 1 FROM deployments WHERE id = ?", (dep_id,)).fetchone():
                dep_id = "d" + secrets.token_hex(4)
            self._insert(
                db, "deployments", id=dep_id, task_name=task_name, task_json=task_json,
                status=DeploymentStatus.PLANNING, keep_alive_s=keep_alive_s, ttl_s=ttl_s,
                created_at=_now(), labels_json=json.dumps(labels or {}, sort_keys=True),
            )  # fmt: skip
        return self._require(dep_id)

    def update_deployment(self, deployment_id: str, **fields: Any) -> Deployment:
        """Set columns of one deployment (`labels=` takes a dict); returns the new row."""
        if "labels" in fields:
            fields["labels_json"] = json.dumps(fields.pop("labels"), sort_keys=True)
        if unknown := set(fields) - _DEPLOYMENT_COLUMNS:
            raise ValueError(f"update_deployment: unknown fields {sorted(unknown)}")
        if "end_reason" in fields:
            fields["end_reason"] = redact(fields["end_reason"] or "")
        if fields:
            sets = ", ".join(f"{name} = ?" for name in fields)
            args = [*map(_db_value, fields.values()), deployment_id]
            with self._tx() as db:
                db.execute(f"UPDATE deployments SET {sets} WHERE id = ?", args)
        return self._require(deployment_id)

    def get_deployment(self, ref: str) -> Deployment | None:
        """Find a deployment by exact id, by task name (its newest live deployment, else its
        newest) or by unique id prefix. An ambiguous prefix raises BadInputError."""
        rows = self._rows("SELECT * FROM deployments WHERE id = ?", ref) or self._rows(
            f"SELECT * FROM deployments WHERE task_name = ? ORDER BY status IN {_LIVE_SQL} DESC,"
            " created_at DESC, rowid DESC LIMIT 1",
            ref,
        )
        if not rows and ref:
            pattern = re.sub(r"([\\%_])", r"\\\1", ref) + "%"
            rows = self._rows(
                "SELECT * FROM deployments WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 6", pattern
            )
            if len(rows) > 1:
                ids = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
                raise BadInputError(
                    "deployment",
                    f"{ref!r} matches several deployments ({ids}); give more of the id",
                )
        return self._deployment(rows[0]) if rows else None

    def list_deployments(
        self, live_only: bool = False, since: datetime | None = None
    ) -> list[Deployment]:
        """Deployments, oldest first. `live_only`: planning, launching or ready ones.
        `since`: only those running at or after that time (not ended before it)."""
        sql, args = "SELECT * FROM deployments WHERE 1", []
        if live_only:
            sql += f" AND status IN {_LIVE_SQL}"
        if since is not None:
            sql, args = sql + " AND (ended_at IS NULL OR ended_at >= ?)", [_ts(since)]
        return [self._deployment(r) for r in self._rows(sql + " ORDER BY created_at, rowid", *args)]

    def task_json(self, deployment_id: str) -> str | None:
        """The task the deployment was made from, as JSON."""
        rows = self._rows("SELECT task_json FROM deployments WHERE id = ?", deployment_id)
        return rows[0][0] if rows else None

    def labels(self, deployment_id: str) -> dict[str, str]:
        """The deployment's user labels."""
        rows = self._rows("SELECT labels_json FROM deployments WHERE id = ?", deployment_id)
        return json.loads(rows[0][0]) if rows else {}

    def mark_ended(
        self,
        deployment_id: str,
        reason: str,
        ended_at: datetime | None = None,
        *,
        status: DeploymentStatus = DeploymentStatus.ENDED,
    ) -> bool:
        """End a deployment (status `ended`, or `failed`). Idempotent: returns True only for
        the call that ended it; later calls change nothing."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE deployments SET status = ?, ended_at = ?, end_reason = ?"
                " WHERE id = ? AND ended_at IS NULL",
                (status.value, _ts(ended_at or _now()), redact(reason), deployment_id),
            )
        return cur.rowcount == 1

    def _require(self, deployment_id: str) -> Deployment:
        rows = self._rows("SELECT * FROM deployments WHERE id = ?", deployment_id)
        if not rows:
            raise DeployctlError(f"no deployment {deployment_id} in the state database")
        return self._deployment(rows[0])

    def _deployment(self, row: sqlite3.Row) -> Deployment:
        return Deployment(**dict(row), attempts=self.attempts(row["id"]))

    # -- attempts ----------------------------------------------------------------------

    def add_attempt(self, deployment_id: str, attempt: Attempt) -> None:
        """Record one try at one offer (replacing an attempt with the same number)."""
        values = {name: getattr(attempt, name) for name in _ATTEMPT_COLUMNS}
        values["reason"] = redact(values["reason"])
        with self._tx() as db:
            self._insert(db, "attempts", verb="REPLACE", deployment_id=deployment_id, **values)

    def finish_attempt(
        self,
        deployment_id: str,
        n: int,
        outcome: str,
        reason: str = "",
        instance_id: str | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """Set the outcome of attempt `n` (and its instance id, when one was created)."""
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET outcome = ?, reason = ?, ended_at = ?,"
                " instance_id = COALESCE(?, instance_id) WHERE deployment_id = ? AND n = ?",
                (outcome, redact(reason), _ts(ended_at or _now()), instance_id, deployment_id, n),
            )

    def attempts(self, deployment_id: str) -> list[Attempt]:
        """The deployment's attempts in order."""
        rows = self._rows(
            "SELECT * FROM attempts WHERE deployment_id = ? ORDER BY n", deployment_id
        )
        return [Attempt(**dict(row)) for row in rows]

    # -- journal -----------------------------------------------------------------------

    def journal_intent(
        self,
        deployment_id: str,
        action: str,
        provider: str,
        offer_key: str | None = None,
        instance_id: str | None = None,
    ) -> int:
        """Write the intent to `rent` or `terminate` BEFORE calling the provider; returns
        the journal id to resolve with `journal_done` or `journal_failed`."""
        if action not in ("rent", "terminate"):
            raise ValueError(f"journal action must be rent or terminate, not {action!r}")
        stamp = _now()
        with self._tx() as db:
            cur = self._insert(
                db, "journal", deployment_id=deployment_id, action=action, provider=provider,
                offer_key=offer_key, instance_id=instance_id, state="intent", pid=os.getpid(),
                host=_HOST, created_at=stamp, updated_at=stamp,
            )  # fmt: skip
        return int(cur.lastrowid)

    def journal_done(self, jid: int, instance_id: str | None = None, detail: str = "") -> None:
        """The provider call succeeded (for a rent, `instance_id` is what it created)."""
        self._resolve(jid, "done", instance_id, detail)

    def journal_failed(self, jid: int, detail: str, instance_id: str | None = None) -> None:
        """The provider call failed; `instance_id` if it created something all the same."""
        self._resolve(jid, "failed", instance_id, detail)

    def _resolve(self, jid: int, state: str, instance_id: str | None, detail: str) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE journal SET state = ?, instance_id = COALESCE(?, instance_id),"
                " detail = ?, updated_at = ? WHERE id = ?",
                (state, instance_id, redact(detail), _ts(_now()), jid),
            )
            if cur.rowcount == 0:
                raise DeployctlError(f"no journal row {jid}")

    def journal(self, deployment_id: str | None = None) -> list[JournalEntry]:
        """Journal rows in order, for one deployment or for all."""
        if deployment_id is None:
            return self._journal("")
        return self._journal("WHERE deployment_id = ?", deployment_id)

    def open_intents(self) -> list[JournalEntry]:
        """Intents never resolved: provider calls in flight, or cut short by a crash
        (`owner_alive` tells which, on this host)."""
        return self._journal("WHERE state = 'intent'")

    def _journal(self, where: str, *args: Any) -> list[JournalEntry]:
        rows = self._rows(f"SELECT * FROM journal {where} ORDER BY id", *args)
        return [_from_row(JournalEntry, r) for r in rows]

    def live_instances(self) -> list[tuple[str, str, str]]:
        """(deployment_id, provider, instance_id) that the journal holds as live: rented,
        never terminated, deployment not ended or failed. A launch whose process died (on
        this host) before its deployment became ready is not live: it is `reap`'s to destroy."""
        rows = self._rows(
            "SELECT r.deployment_id, r.provider, r.instance_id, r.pid, r.host, d.status"
            " FROM journal r JOIN deployments d ON d.id = r.deployment_id"
            " WHERE r.action = 'rent' AND r.state = 'done' AND r.instance_id IS NOT NULL"
            f" AND d.status IN {_LIVE_SQL} AND NOT EXISTS (SELECT 1 FROM journal t"
            "  WHERE t.action = 'terminate' AND t.state = 'done'"
            "  AND t.provider = r.provider AND t.instance_id = r.instance_id)"
            " ORDER BY r.id"
        )
        return [
            (r[0], r[1], r[2])
            for r in rows
            if r["status"] == DeploymentStatus.READY.value or _pid_alive(r["pid"], r["host"])
        ]

    # -- events ------------------------------------------------------------------------

    def add_event(self, deployment_id: str, kind: str, message: str = "") -> int:
        """Append an event to a deployment's history; returns its id."""
        with self._tx() as db:
            cur = self._insert(
                db, "events", deployment_id=deployment_id, at=_now(), kind=kind,
                message=redact(message),
            )  # fmt: skip
        return int(cur.lastrowid)

    def events(self, deployment_id: str) -> list[Event]:
        """The deployment's events, oldest first."""
        sql = "SELECT * FROM events WHERE deployment_id = ? ORDER BY id"
        return [_from_row(Event, r) for r in self._rows(sql, deployment_id)]

    # -- ledger ------------------------------------------------------------------------

    def close_bill(
        self,
        deployment_id: str,
        price_per_hour_usd: float,
        billed_s: float,
        *,
        provider_cost_usd: float | None = None,
        requests: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cold_start_s: float | None = None,
        idle_s: float | None = None,
        closed_at: datetime | None = None,
        gpu_count: int = 1,
        failed_instances: int = 0,
        failed_instances_s: float = 0.0,
        failed_instances_cost_usd: float = 0.0,
    ) -> Bill:
        """Close the deployment's bill: cost_usd = price_per_hour_usd * billed_s / 3600 +
        failed_instances_cost_usd (instances of failed attempts billed too), also set on the
        deployment. Idempotent: a second call returns the first bill unchanged."""
        cost_usd = round(price_per_hour_usd * billed_s / 3600.0 + failed_instances_cost_usd, 6)
        with self._tx() as db:
            cur = self._insert(
                db, "ledger", "ON CONFLICT (deployment_id) DO NOTHING",
                deployment_id=deployment_id, billed_s=billed_s,
                price_per_hour_usd=price_per_hour_usd, cost_usd=cost_usd,
                provider_cost_usd=provider_cost_usd, requests=requests,
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                cold_start_s=cold_start_s, idle_s=idle_s, closed_at=closed_at or _now(),
                gpu_count=gpu_count, failed_instances=failed_instances,
                failed_instances_s=failed_instances_s,
                failed_instances_cost_usd=failed_instances_cost_usd,
            )  # fmt: skip
            if cur.rowcount == 1:
                sql = "UPDATE deployments SET cost_usd = ? WHERE id = ?"
                db.execute(sql, (cost_usd, deployment_id))
            row = db.execute("SELECT * FROM ledger WHERE deployment_id = ?", (deployment_id,))
            return _from_row(Bill, row.fetchone())

    def bill(self, deployment_id: str) -> Bill | None:
        """The deployment's closed bill, or None while it is open."""
        rows = self._rows("SELECT * FROM ledger WHERE deployment_id = ?", deployment_id)
        return _from_row(Bill, rows[0]) if rows else None

    def bills(self, since: datetime | None = None) -> list[Bill]:
        """Closed bills (closed at or after `since`), oldest first."""
        sql = "SELECT * FROM ledger WHERE closed_at >= ? ORDER BY closed_at"
        return [_from_row(Bill, r) for r in self._rows(sql, _ts(since) or "")]

    def unbilled(self) -> list[Deployment]:
        """Ended or failed deployments whose bill is not closed yet (a crash between the
        two, or a launch whose every attempt failed: those instances billed too)."""
        rows = self._rows(
            "SELECT d.* FROM deployments d WHERE d.ended_at IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM ledger l WHERE l.deployment_id = d.id) ORDER BY d.created_at"
        )
        return [self._deployment(r) for r in rows]


# -- endpoint keys: one 0600 file per deployment, never in the database ------------------


def _key_path(deployment_id: str, base: Path | None) -> Path:
    if not _SAFE_ID.match(deployment_id):
        raise BadInputError("deployment", f"{deployment_id!r} is not a deployment id")
    return (base or data_dir()) / "keys" / deployment_id


def save_key(deployment_id: str, key: str, *, base: Path | None = None) -> Path:
    """Store a deployment's endpoint key in `<data dir>/keys/<id>` (0600, atomically)."""
    path = _key_path(deployment_id, base)
    private_dir(path.parent.parent)
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_key(deployment_id: str, *, base: Path | None = None) -> str | None:
    """The deployment's endpoint key, or None if none is stored."""
    try:
        return _key_path(deployment_id, base).read_text()
    except FileNotFoundError:
        return None


def delete_key(deployment_id: str, *, base: Path | None = None) -> None:
    """Forget a deployment's endpoint key (no error if there is none)."""
    _key_path(deployment_id, base).unlink(missing_ok=True)
