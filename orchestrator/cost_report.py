"""The month's spend, grouped: what `deployctl cost` and the metrics exporter report.

Every figure is derived from ledger bills (`ledger.DeploymentBill`) in USD:
- cost per 1000 requests = cost / requests x 1000 (None without requests);
- cost per 1M tokens = cost / (prompt + completion tokens) x 1e6, and per 1M output
  tokens over completion tokens alone (comparable with `plan`'s estimate);
- cold start = mean of rent -> ready over the deployments that became ready;
- idle waste ratio = idle seconds / billed seconds (the guard's idle time at the end:
  what ran while nobody used it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ledger import DeploymentBill

__all__ = ["Totals", "group_bills"]


@dataclass
class Totals:
    key: str
    deployments: int = 0
    billed_s: float = 0.0
    gpu_s: float = 0.0
    cost_usd: float = 0.0
    provider_cost_usd: float | None = None
    failed_instances: int = 0
    failed_instances_cost_usd: float = 0.0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    idle_s: float = 0.0
    idle_known_billed_s: float = 0.0  # billed seconds of the bills whose idle time is known
    cold_start_sum_s: float = 0.0
    cold_starts: int = 0

    def add(self, bill: DeploymentBill) -> None:
        self.deployments += 1
        self.billed_s += bill.billed_s
        self.gpu_s += bill.gpu_s
        self.cost_usd += bill.cost_usd
        if bill.provider_cost_usd is not None:
            self.provider_cost_usd = (self.provider_cost_usd or 0.0) + bill.provider_cost_usd
        self.failed_instances += bill.failed_instances
        self.failed_instances_cost_usd += bill.failed_instances_cost_usd
        self.requests += bill.requests
        self.prompt_tokens += bill.prompt_tokens
        self.completion_tokens += bill.completion_tokens
        if bill.idle_s is not None:
            self.idle_s += min(bill.idle_s, bill.billed_s)
            self.idle_known_billed_s += bill.billed_s
        if bill.cold_start_s is not None:
            self.cold_start_sum_s += bill.cold_start_s
            self.cold_starts += 1

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usd_per_1000_requests(self) -> float | None:
        return self.cost_usd / self.requests * 1000 if self.requests else None

    @property
    def usd_per_1m_tokens(self) -> float | None:
        return self.cost_usd / self.tokens * 1e6 if self.tokens else None

    @property
    def usd_per_1m_output_tokens(self) -> float | None:
        return self.cost_usd / self.completion_tokens * 1e6 if self.completion_tokens else None

    @property
    def cold_start_avg_s(self) -> float | None:
        return self.cold_start_sum_s / self.cold_starts if self.cold_starts else None

    @property
    def idle_waste_ratio(self) -> float | None:
        if not self.idle_known_billed_s:
            return None
        return self.idle_s / self.idle_known_billed_s

    def as_json(self) -> dict[str, Any]:
        doc = {
            "key": self.key, "deployments": self.deployments, "billed_s": self.billed_s,
            "gpu_s": self.gpu_s, "cost_usd": self.cost_usd,
            "provider_cost_usd": self.provider_cost_usd,
            "failed_instances": self.failed_instances,
            "failed_instances_cost_usd": self.failed_instances_cost_usd,
            "requests": self.requests, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "tokens": self.tokens,
            "usd_per_1000_requests": self.usd_per_1000_requests,
            "usd_per_1m_tokens": self.usd_per_1m_tokens,
            "usd_per_1m_output_tokens": self.usd_per_1m_output_tokens,
            "cold_start_avg_s": self.cold_start_avg_s, "idle_s": self.idle_s,
            "idle_waste_ratio": self.idle_waste_ratio,
        }  # fmt: skip
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in doc.items()}


def group_bills(bills: list[DeploymentBill], by: str | None) -> tuple[list[Totals], Totals]:
    """Rows per deployment (by None) or per task/provider/gpu, most expensive first, and
    the month's totals."""
    groups: dict[str, Totals] = {}
    total = Totals("total")
    for bill in bills:
        key = bill.deployment_id if by is None else str(getattr(bill, by))
        groups.setdefault(key, Totals(key)).add(bill)
        total.add(bill)
    rows = sorted(groups.values(), key=lambda t: (-t.cost_usd, t.key))
    return rows, total
