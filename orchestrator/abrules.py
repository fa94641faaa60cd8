"""`--fail-on` rules of an A/B rig, and the comparisons they may name.

A is the baseline, B the candidate: ratios are B / A; `quality_drop` is A's pass rate
minus B's and `error_rate_increase` B's error rate minus A's, so that bigger is worse.
Each rule is `METRIC OP NUMBER` with OP one of > >= < <= and NUMBER optionally ending in
`%`. METRIC is a comparison (`ttft_p95_ratio`, `quality_drop`, ...) or a per-side metric,
of B unless prefixed `a.` (`a.error_rate>0`). A rule whose metric could not be measured
is reported as n/a and does not trip.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import BadInputError

__all__ = [
    "DIFFERENCES",
    "PERCENTILES",
    "RATIOS",
    "SIDE_METRICS",
    "Rule",
    "RuleOutcome",
    "comparison",
    "evaluate",
    "parse_rules",
    "rule_metric_names",
]

PERCENTILES = (50, 95, 99)

# Per-side metrics a rule may name (numbers; None when not measured).
SIDE_METRICS = (
    "requests", "ok_requests", "error_rate", "output_tokens",
    *(f"{m}_p{p}_s" for m in ("ttft", "tpot", "latency") for p in PERCENTILES),
    "request_output_tok_s_p50", "output_tok_s", "pass_rate", "cold_start_s",
    "price_per_hour_usd", "spent_usd", "usd_per_1m_output_tokens", "usd_per_1000_requests",
)  # fmt: skip
# Comparisons: name -> the side metric whose B / A it is.
RATIOS = {
    **{f"{m}_p{p}_ratio": f"{m}_p{p}_s" for m in ("ttft", "tpot", "latency") for p in PERCENTILES},
    "throughput_ratio": "output_tok_s",
    "request_tok_s_ratio": "request_output_tok_s_p50",
    "cost_per_token_ratio": "usd_per_1m_output_tokens",
    "cost_per_request_ratio": "usd_per_1000_requests",
    "spent_ratio": "spent_usd",
    "cold_start_ratio": "cold_start_s",
}
DIFFERENCES = {
    "quality_drop": "A's pass rate minus B's (0.05 = five points worse)",
    "error_rate_increase": "B's error rate minus A's",
}
QUALITY_METRICS = frozenset({"quality_drop", "pass_rate"})


def _ratio(b: float | None, a: float | None) -> float | None:
    if a is None or b is None:
        return None
    if a == 0:
        return 1.0 if b == 0 else math.inf
    return b / a


def comparison(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    """Every ratio (B / A) and difference rules may name."""
    out = {name: _ratio(b[metric], a[metric]) for name, metric in RATIOS.items()}
    pa, pb = a["pass_rate"], b["pass_rate"]
    out["quality_drop"] = pa - pb if pa is not None and pb is not None else None
    ea, eb = a["error_rate"], b["error_rate"]
    out["error_rate_increase"] = eb - ea if ea is not None and eb is not None else None
    return out


# ---------------------------------------------------------------------------- rules

_RULE_RE = re.compile(
    r"^(?:(?P<side>[ab])\.)?(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<pct>%)?$"
)
_OPS = {
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
}


@dataclass(frozen=True)
class Rule:
    text: str
    metric: str
    op: str
    threshold: float
    side: str | None = None  # a | b for per-side metrics; None for comparisons

    @property
    def needs_expected(self) -> bool:
        return self.metric in QUALITY_METRICS


@dataclass(frozen=True)
class RuleOutcome:
    rule: Rule
    value: float | None
    tripped: bool


def rule_metric_names() -> list[str]:
    return [*RATIOS, *DIFFERENCES, *SIDE_METRICS]


def parse_rules(text: str | None) -> list[Rule]:
    """`--fail-on` rules; BadInputError with one sentence for anything malformed."""
    rules: list[Rule] = []
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        m = _RULE_RE.match(item)
        if m is None:
            raise BadInputError(
                "--fail-on", f"{item!r} is not a rule; write METRIC>NUMBER (or >=, <, <=), "
                "comma-separated, e.g. ttft_p95_ratio>1.2,error_rate>0.01,quality_drop>0.05"
            )  # fmt: skip
        metric, side = m["metric"], m["side"]
        comparisons = (*RATIOS, *DIFFERENCES)
        if metric in comparisons and side:
            raise BadInputError(
                "--fail-on", f"{item!r}: {metric} compares B with A; drop the {side}. prefix"
            )
        if metric not in comparisons and metric not in SIDE_METRICS:
            raise BadInputError(
                "--fail-on",
                f"unknown metric {metric!r} in {item!r}; accepted: "
                + ", ".join(rule_metric_names()),
            )
        threshold = float(m["number"]) / (100.0 if m["pct"] else 1.0)
        if metric not in comparisons:
            side = side or "b"
        rules.append(Rule(item, metric, m["op"], threshold, side))
    return rules


def evaluate(
    rules: list[Rule],
    a: dict[str, float | None],
    b: dict[str, float | None],
    compared: dict[str, float | None] | None = None,
) -> list[RuleOutcome]:
    compared = compared if compared is not None else comparison(a, b)
    outcomes = []
    for rule in rules:
        if rule.side is None:
            value = compared.get(rule.metric)
        else:
            value = (a if rule.side == "a" else b).get(rule.metric)
        tripped = value is not None and _OPS[rule.op](value, rule.threshold)
        outcomes.append(RuleOutcome(rule, value, tripped))
    return outcomes
