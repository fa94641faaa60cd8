"""`deployctl metrics serve`: the ledger as Prometheus metrics (prometheus-client).

A custom collector reads the state database at every scrape, so the numbers are those
`deployctl cost` prints, never a cache. Month-scoped values are gauges (they restart at
0 on the 1st, UTC). All money is USD; `deployctl_budget_month_usd` is the budget
converted with `budget.usd_per_eur`. Labels carry ids, task, provider and GPU names only:
no endpoint URL, no key. The in-instance guard exposes its own `deployctl_guard_*`
metrics (idle seconds, age, ttl) behind the deployment's key; examples/prometheus/ has
alert rules for both.

    deployctl_month_spend_usd                   closed bills + live deployments so far
    deployctl_budget_month_usd                  the monthly budget (absent: none set)
    deployctl_budget_ratio                      spend / budget
    deployctl_budget_alert_ratio                budget.alert_ratio
    deployctl_month_gpu_seconds                 billed seconds x GPU count
    deployctl_month_cold_start_seconds          summary: _sum and _count of rent -> ready
    deployctl_month_idle_seconds                the guards' idle time at teardown
    deployctl_active_deployments                planning, launching or ready
    deployctl_month_requests                    inference requests counted by the guards
    deployctl_month_tokens{kind}                prompt / completion tokens
    deployctl_month_cost_per_1000_requests_usd  absent until a request was served
    deployctl_month_cost_per_1m_tokens_usd      absent until a token was served
    deployctl_deployment_age_seconds{...}       live deployments: since ready (or created)
    deployctl_deployment_ttl_seconds{...}       their ttl (0 = none)
    deployctl_deployment_price_per_hour_usd{...}
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["DeployctlCollector", "registry", "serve"]


class DeployctlCollector:
    """Reads the state database (and the config, for the budget) at every scrape."""

    def __init__(self, state_path: str | Path | None = None) -> None:
        self.state_path = state_path

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

        from .config import load_config
        from .cost_report import group_bills
        from .errors import DeployctlError
        from .ledger import month_bills
        from .state import State

        now = datetime.now(timezone.utc)
        try:
            config = load_config()
        except DeployctlError:
            config = None  # a broken config must not hide the spend
        with State.open(self.state_path) as state:
            bills = month_bills(state, now=now)
            live = state.list_deployments(live_only=True)
        _, t = group_bills(bills, None)

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"deployctl_{name}", text, value=value)

        yield gauge("month_spend_usd", "Spend this month (UTC), USD", t.cost_usd)
        budget = config.budget if config else None
        if budget is not None and budget.monthly_usd is not None:
            yield gauge("budget_month_usd", "Monthly budget, USD", budget.monthly_usd)
            if budget.monthly_usd > 0:
                yield gauge("budget_ratio", "Spend this month / monthly budget",
                            t.cost_usd / budget.monthly_usd)
            yield gauge("budget_alert_ratio", "budget.alert_ratio", budget.alert_ratio)
        yield gauge("month_gpu_seconds", "GPU-seconds billed this month", t.gpu_s)
        yield SummaryMetricFamily(
            "deployctl_month_cold_start_seconds", "Rent to ready, deployments this month",
            count_value=t.cold_starts, sum_value=t.cold_start_sum_s,
        )
        yield gauge("month_idle_seconds", "Idle seconds at teardown this month", t.idle_s)
        yield gauge("active_deployments", "Live deployments", len(live))
        yield gauge("month_requests", "Inference requests served this month", t.requests)
        tokens = GaugeMetricFamily("deployctl_month_tokens", "Tokens served this month",
                                   labels=["kind"])
        tokens.add_metric(["prompt"], t.prompt_tokens)
        tokens.add_metric(["completion"], t.completion_tokens)
        yield tokens
        if t.usd_per_1000_requests is not None:
            yield gauge("month_cost_per_1000_requests_usd", "Cost per 1000 requests, USD",
                        t.usd_per_1000_requests)
        if t.usd_per_1m_tokens is not None:
            yield gauge("month_cost_per_1m_tokens_usd", "Cost per 1M tokens served, USD",
                        t.usd_per_1m_tokens)
        yield from _per_deployment(live, now)


def _per_deployment(live: list, now: datetime) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    names = ["deployment", "task", "provider", "gpu"]
    age = GaugeMetricFamily("deployctl_deployment_age_seconds",
                            "Seconds since the deployment became ready (or was created)",
                            labels=names)
    ttl = GaugeMetricFamily("deployctl_deployment_ttl_seconds", "Its ttl (0 = none)",
                            labels=names)
    price = GaugeMetricFamily("deployctl_deployment_price_per_hour_usd", "Its price, USD/h",
                              labels=names)
    for dep in live:
        values = [dep.id, dep.task_name, dep.provider or "", dep.gpu or ""]
        age.add_metric(values, (now - (dep.ready_at or dep.created_at)).total_seconds())
        ttl.add_metric(values, dep.ttl_s)
        price.add_metric(values, dep.price_per_hour_usd)
    yield from (age, ttl, price)


def registry(state_path: str | Path | None = None) -> Any:
    """A registry holding only deployctl's collector (no process metrics of this CLI)."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(DeployctlCollector(state_path))
    return reg


def serve(host: str, port: int, state_path: str | Path | None = None) -> tuple[Any, Any]:
    """Serve /metrics on host:port in a daemon thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    try:
        return start_http_server(port, addr=host, registry=registry(state_path))
    except OSError as exc:
        from .errors import BadInputError

        raise BadInputError("--port", f"cannot listen on {host}:{port} ({exc.strerror})") from None
