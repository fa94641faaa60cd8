"""What `config show`, `config set`, `cost` and `metrics serve` do, between the CLI and
the core. No secret is ever printed: credentials show only where they come from, and the
alert webhook URL (a secret itself for Slack) only its host."""

from __future__ import annotations

import csv
import re
import sys
from datetime import datetime, timezone
from typing import Any

from .config import KEYS, Config, load_config, redact_url, set_value
from .errors import BadInputError
from .render import console, print_json

__all__ = ["config_set_command", "config_show_command", "cost_command", "metrics_command"]

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _shown(key: str, value: Any) -> Any:
    if key == "alerts.webhook_url":
        return redact_url(value)
    if key == "limits.max_ttl":
        from .units import format_duration

        return "none" if value is None else format_duration(value)
    return list(value) if isinstance(value, tuple) else value


def config_show_command(*, as_json: bool) -> None:
    from .config import config_path
    from .credentials import credential_sources, credentials_path

    config, sources = load_config(with_sources=True)
    creds = credential_sources()
    settings = {key: _shown(key, config.value(key)) for key in KEYS}
    if as_json:
        print_json({
            "schema_version": 1, "path": str(config_path()),
            "credentials_path": str(credentials_path()), "settings": settings,
            "sources": sources, "credentials": creds,
        })  # fmt: skip
        return
    from .render import table

    out = console()
    out.print(f"config file: {config_path()}", markup=False)
    t = table("setting", "value", "from")
    for key in KEYS:
        value = settings[key]
        shown = "none" if value is None else ", ".join(value) if isinstance(value, list) else value
        t.add_row(key, str(shown), sources[key])
    out.print(t)
    out.print(f"credentials ({credentials_path()}, mode 0600; values never shown):", markup=False)
    for name, source in creds.items():
        out.print(f"  {name}: {source}", markup=False)


def config_set_command(*, key: str, value: str) -> None:
    out = console()
    if key.startswith("credentials."):
        from .credentials import set_credential

        path = set_credential(key.removeprefix("credentials."), value)
        out.print(f"{key} stored in {path} (mode 0600)", markup=False)
        return
    path, stored = set_value(key, value)
    out.print(f"{key} = {_shown(key, stored)} (written to {path})", markup=False)


def _money(usd: float | None, digits: int = 4) -> str:
    return "-" if usd is None else f"{usd:.{digits}f}"


def _bar(ratio: float, width: int = 30) -> str:
    filled = min(round(ratio * width), width)
    return "█" * filled + "░" * (width - filled)


def cost_command(*, month: str | None, by: str | None, as_json: bool, as_csv: bool) -> None:
    from .cost_report import group_bills
    from .ledger import month_bills, month_bounds
    from .state import State

    if month is not None and not _MONTH.match(month):
        raise BadInputError("--month", f"{month!r} is not a month; use YYYY-MM, e.g. 2026-03")
    config = load_config()
    now = datetime.now(timezone.utc)
    label = month or f"{now:%Y-%m}"
    start, _ = month_bounds(label, now)
    with State.open() as state:
        bills = month_bills(state, label, now)
        events = [e for e in state.budget_events(start) if f"{e.at:%Y-%m}" == label]
        if label == f"{now:%Y-%m}":
            from .alerts import check_budget

            warnings = check_budget(state, config, sum(b.cost_usd for b in bills))
        else:
            warnings = []
    rows, total = group_bills(bills, by)
    budget = _budget_json(config, total.cost_usd)
    if as_csv:
        _write_csv([r.as_json() for r in rows])
        return
    if as_json:
        print_json({
            "schema_version": 1, "month": label, "by": by or "deployment", "budget": budget,
            "rows": [r.as_json() for r in rows], "totals": total.as_json(),
            "overrides": [_event_json(e) for e in events if e.kind == "override"],
            "refusals": [_event_json(e) for e in events if e.kind == "refusal"],
        })  # fmt: skip
        return
    _show_cost(label, by, rows, total, budget, events, config)
    err = console(stderr=True)
    for line in warnings:
        err.print(line, markup=False)


def _budget_json(config: Config, spend_usd: float) -> dict[str, Any]:
    b = config.budget
    monthly_usd = b.monthly_usd
    return {
        "currency": b.currency, "monthly": b.monthly, "monthly_usd": monthly_usd,
        "usd_per_eur": b.usd_per_eur if b.currency == "EUR" else None,
        "alert_ratio": b.alert_ratio, "spend_usd": round(spend_usd, 6),
        "spend": round(spend_usd / b.usd_per_unit, 6),
        "ratio": round(spend_usd / monthly_usd, 6) if monthly_usd else None,
    }  # fmt: skip


def _event_json(e) -> dict[str, Any]:
    return {
        "at": e.at.isoformat(), "rule": e.rule, "deployment_id": e.deployment_id,
        "task": e.task_name, "spend_usd": e.spend_usd, "projected_usd": e.projected_usd,
        "budget_usd": e.budget_usd, "message": e.message,
    }  # fmt: skip


def _write_csv(rows: list[dict[str, Any]]) -> None:
    from .cost_report import Totals

    fields = list(Totals("x").as_json())
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in fields})


def _show_cost(label, by, rows, total, budget, events, config: Config) -> None:
    from .render import table
    from .units import format_duration

    out = console()
    t = table(by or "deployment", "#", "billed", "GPU-h", "$ cost", "$ provider",
              "failed inst.", "requests", "tokens", "$/1000 req", "$/1M tok", "$/1M out",
              "cold start", "idle waste")
    for r in [*rows, total] if rows else []:
        t.add_row(r.key, str(r.deployments), format_duration(r.billed_s), f"{r.gpu_s / 3600:.2f}",
                  _money(r.cost_usd), _money(r.provider_cost_usd), str(r.failed_instances),
                  str(r.requests), str(r.tokens), _money(r.usd_per_1000_requests),
                  _money(r.usd_per_1m_tokens, 2), _money(r.usd_per_1m_output_tokens, 2),
                  format_duration(r.cold_start_avg_s) if r.cold_start_avg_s is not None
                  else "-",
                  f"{r.idle_waste_ratio:.0%}" if r.idle_waste_ratio is not None else "-")
    out.print(t if rows else f"no spend recorded in {label}", markup=False)
    b = config.budget
    spend = b.show(total.cost_usd)
    if budget["ratio"] is None:
        out.print(f"{label}: {spend} spent; no budget set (deployctl config set budget.monthly N)",
                  markup=False)
    else:
        ratio = budget["ratio"]
        colour = "red" if ratio >= 1 else "yellow" if ratio >= b.alert_ratio else "green"
        out.print(f"{label}: {spend} of {b.show(budget['monthly_usd'])} "
                  f"[{colour}]{_bar(ratio)}[/] {ratio:.0%} (alert at {b.alert_ratio:.0%})")
    overrides = [e for e in events if e.kind == "override"]
    refusals = [e for e in events if e.kind == "refusal"]
    if overrides or refusals:
        out.print(f"budget overrides: {len(overrides)}, refusals: {len(refusals)}", markup=False)


def metrics_command(*, host: str, port: int) -> None:
    import time

    from .metrics import serve

    server, _ = serve(host, port)
    bound = server.server_address
    console(stderr=True).print(
        f"serving Prometheus metrics on http://{bound[0]}:{bound[1]}/metrics (Ctrl-C stops)",
        markup=False,
    )
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()
