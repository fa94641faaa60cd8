"""The money tables of the state database: budget decisions, guard observations, alerts.

`MoneyTables` is mixed into `state.State` (it uses State's transaction helpers); its
tables come with schema migration 2 (`MONEY_SCHEMA`):

    budget_events  a projection a launch was admitted with, a budget override, a refusal
    observations   the last guard counters and provider-reported cost seen per deployment
    alerts_sent    which alert was sent (or tried) in which month: once per threshold
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import state as _state  # its helpers, looked up at call time (tests patch _now)
from .errors import redact

__all__ = ["MONEY_SCHEMA", "BudgetEvent", "MoneyTables", "Observation"]

MONEY_SCHEMA: list[str] = [
    """CREATE TABLE budget_events (
        id INTEGER PRIMARY KEY, at TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('projection', 'override', 'refusal')),
        rule TEXT NOT NULL DEFAULT '', deployment_id TEXT, task_name TEXT NOT NULL DEFAULT '',
        spend_usd REAL, projected_usd REAL, budget_usd REAL,
        message TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX budget_events_at ON budget_events(at)",
    "CREATE INDEX budget_events_deployment ON budget_events(deployment_id)",
    """CREATE TABLE observations (
        deployment_id TEXT PRIMARY KEY REFERENCES deployments(id),
        requests INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, idle_s REAL,
        provider_cost_usd REAL, seen_at TEXT NOT NULL)""",
    """CREATE TABLE alerts_sent (
        month TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL DEFAULT '',
        tries INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL, PRIMARY KEY (month, kind, subject))""",
    "ALTER TABLE ledger ADD COLUMN gpu_count INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE ledger ADD COLUMN failed_instances INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE ledger ADD COLUMN failed_instances_s REAL NOT NULL DEFAULT 0",
    "ALTER TABLE ledger ADD COLUMN failed_instances_cost_usd REAL NOT NULL DEFAULT 0",
]


@dataclass(frozen=True)
class BudgetEvent:
    """A guardrail decision: the projection a launch was admitted with, an override of
    the budget, or a refusal (then nothing was created and `deployment_id` is None)."""

    id: int
    at: datetime
    kind: str  # projection | override | refusal
    rule: str  # budget | max_deployments | max_price_per_hour | max_ttl
    deployment_id: str | None
    task_name: str
    spend_usd: float | None
    projected_usd: float | None
    budget_usd: float | None
    message: str


@dataclass(frozen=True)
class Observation:
    """The last guard counters and provider-reported cost seen for a live deployment."""

    deployment_id: str
    requests: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    idle_s: float | None
    provider_cost_usd: float | None
    seen_at: datetime


class MoneyTables:
    """State methods for the money tables (see the module docstring)."""

    def add_budget_event(
        self,
        kind: str,
        *,
        rule: str = "",
        deployment_id: str | None = None,
        task_name: str = "",
        spend_usd: float | None = None,
        projected_usd: float | None = None,
        budget_usd: float | None = None,
        message: str = "",
    ) -> int:
        """Record a projection (admitted launch), a budget override or a refusal."""
        with self._tx() as db:
            cur = self._insert(
                db, "budget_events", at=_state._now(), kind=kind, rule=rule,
                deployment_id=deployment_id, task_name=task_name, spend_usd=spend_usd,
                projected_usd=projected_usd, budget_usd=budget_usd, message=redact(message),
            )  # fmt: skip
        return int(cur.lastrowid)

    def budget_events(
        self, since: datetime | None = None, *, deployment_id: str | None = None
    ) -> list[BudgetEvent]:
        """Budget events at or after `since` (or of one deployment), oldest first."""
        sql, args = "SELECT * FROM budget_events WHERE at >= ?", [_state._ts(since) or ""]
        if deployment_id is not None:
            sql, args = sql + " AND deployment_id = ?", [*args, deployment_id]
        return [_state._from_row(BudgetEvent, r) for r in self._rows(sql + " ORDER BY id", *args)]

    def observe(
        self,
        deployment_id: str,
        *,
        requests: int | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        idle_s: float | None = None,
        provider_cost_usd: float | None = None,
    ) -> None:
        """Remember the latest guard counters / provider cost seen (None keeps the old)."""
        values = {
            "requests": requests, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "idle_s": idle_s,
            "provider_cost_usd": provider_cost_usd,
        }  # fmt: skip
        keep = ", ".join(f"{k} = COALESCE(excluded.{k}, {k})" for k in values)
        with self._tx() as db:
            self._insert(
                db, "observations", f"ON CONFLICT (deployment_id) DO UPDATE SET {keep},"
                " seen_at = excluded.seen_at", deployment_id=deployment_id, seen_at=_state._now(),
                **values,
            )  # fmt: skip

    def observation(self, deployment_id: str) -> Observation | None:
        """The last observation of a deployment, or None."""
        rows = self._rows("SELECT * FROM observations WHERE deployment_id = ?", deployment_id)
        return _state._from_row(Observation, rows[0]) if rows else None

    def claim_alert(self, month: str, kind: str, subject: str = "", max_tries: int = 3) -> bool:
        """True for the one caller that should send this alert now: never claimed this
        month, or its last try failed (or stalled for a minute) and it was tried fewer than
        `max_tries` times. Concurrent processes: one wins, the others get False."""
        now = _state._now()
        stale = _state._ts(now - timedelta(seconds=60))
        with self._tx() as db:
            cur = self._insert(
                db, "alerts_sent", "ON CONFLICT (month, kind, subject) DO UPDATE SET"
                " tries = tries + 1, delivered = 0, updated_at = excluded.updated_at"
                f" WHERE tries < {int(max_tries)} AND (delivered = -1 OR"
                f" (delivered = 0 AND updated_at < '{stale}'))",
                month=month, kind=kind, subject=subject, tries=1, updated_at=now,
            )  # fmt: skip
        return cur.rowcount == 1

    def alert_done(self, month: str, kind: str, subject: str = "", *, delivered: bool) -> None:
        """Resolve a claimed alert: delivered (never sent again this month) or failed (a
        later claim may retry it)."""
        with self._tx() as db:
            db.execute(
                "UPDATE alerts_sent SET delivered = ?, updated_at = ?"
                " WHERE month = ? AND kind = ? AND subject = ?",
                (1 if delivered else -1, _state._ts(_state._now()), month, kind, subject),
            )

    def alert_delivered(self, month: str, kind: str, subject: str = "") -> None:
        """Mark a claimed alert as delivered: it is never sent again this month."""
        self.alert_done(month, kind, subject, delivered=True)

    def alerts(self, month: str) -> list[dict[str, Any]]:
        """What was claimed/sent in `month`: kind, subject, tries, delivered (1 yes,
        0 in flight, -1 failed)."""
        sql = "SELECT kind, subject, tries, delivered FROM alerts_sent WHERE month = ?"
        return [dict(r) for r in self._rows(sql + " ORDER BY kind, subject", month)]
