"""Alerts to a Slack-compatible webhook (`alerts.webhook_url`), once per threshold per month.

Three kinds: the month's spend crossing `budget.alert_ratio` (and 100 %) of the budget, a
refused launch (once per rule), and a deployment that outlived its ttl (once per
deployment). The body is `{"text": "..."}`, which Slack, Mattermost, Rocket.Chat and
Discord's /slack endpoints accept. What was sent is kept in the state database
(`alerts_sent`): an alert delivered this month is never sent again; a failed delivery is
retried by later commands, at most three times.

A webhook never blocks a command: the post runs in a daemon thread that is waited for at
most `alerts.timeout_s` (2 s), and any failure becomes one warning line without the URL
(a Slack webhook URL is itself a secret).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from .config import Config
from .models import Deployment
from .state import State

__all__ = ["check_budget", "check_ttl", "notify", "post"]

TTL_ALERT_GRACE_S = 120.0


def post(url: str, text: str, timeout_s: float) -> str | None:
    """POST {"text": text}; None when the webhook took it, else a short reason."""
    outcome: list[str | None] = []

    def send() -> None:
        import httpx

        try:
            r = httpx.post(url, json={"text": text}, timeout=timeout_s)
            outcome.append(None if r.status_code < 300 else f"HTTP {r.status_code}")
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)
        except Exception as exc:  # an alert must never end the command
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=send, name="deployctl-alert", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.25)
    if thread.is_alive() or not outcome:
        return f"no answer within {timeout_s:g} s"
    return outcome[0]


def notify(
    state: State, config: Config, kind: str, subject: str, text: str, *, now: datetime | None = None
) -> str | None:
    """Send one alert unless it was already sent this month; returns a warning line when
    the webhook failed (None otherwise, and when no webhook is configured)."""
    url = config.alerts.webhook_url
    if not url:
        return None
    month = f"{(now or datetime.now(timezone.utc)):%Y-%m}"
    if not state.claim_alert(month, kind, subject):
        return None
    error = post(url, f"deployctl: {text}", config.alerts.timeout_s)
    state.alert_done(month, kind, subject, delivered=error is None)
    if error is None:
        return None
    return f"warning: the alert webhook failed ({error}); a later command will retry"


def check_budget(state: State, config: Config, spend_usd: float) -> list[str]:
    """Alert when this month's spend has crossed the alert ratio, or the whole budget."""
    budget = config.budget
    budget_usd = budget.monthly_usd
    if budget_usd is None or budget_usd <= 0:
        return []
    ratio = spend_usd / budget_usd
    lines = []
    for threshold, kind in ((budget.alert_ratio, "budget_ratio"), (1.0, "budget_exceeded")):
        if ratio >= threshold:
            text = (f"this month's spend {budget.show(spend_usd)} reached {ratio:.0%} of the "
                    f"{budget.show(budget_usd)} budget (threshold {threshold:.0%})")
            line = notify(state, config, kind, f"{threshold:g}", text)
            if line:
                lines.append(line)
    return lines


def outlived_ttl(dep: Deployment, now: datetime) -> bool:
    """A live deployment older than its ttl (plus a grace for its guard to act)."""
    if not dep.ttl_s:
        return False
    since = dep.ready_at or dep.created_at
    return now - since > timedelta(seconds=dep.ttl_s + TTL_ALERT_GRACE_S)


def check_ttl(state: State, config: Config, deployments: list[Deployment]) -> list[str]:
    """Warn (and alert once) about live deployments that outlived their ttl."""
    now = datetime.now(timezone.utc)
    lines = []
    for dep in deployments:
        if dep.status.value not in ("planning", "launching", "ready") or not outlived_ttl(dep, now):
            continue
        age = (now - (dep.ready_at or dep.created_at)).total_seconds()
        text = (f"deployment {dep.id} ({dep.task_name} on {dep.provider} {dep.gpu}) is "
                f"{age / 3600:.1f} h old, past its ttl of {dep.ttl_s / 3600:.1f} h: its guard did "
                f"not end it; run `deployctl down {dep.id}`")
        lines.append(f"warning: {text}")
        failed = notify(state, config, "ttl", dep.id, text, now=now)
        if failed:
            lines.append(failed)
    return lines
