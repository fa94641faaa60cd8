"""What an A/B rig measured, and its report: Markdown for a GitHub Actions step summary,
and JSON with the schema documented in docs/AB.md (schema_version 1; change both
together). The rules and comparisons live in abrules.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .abrules import PERCENTILES, SIDE_METRICS, RuleOutcome, comparison
from .loadgen import RequestResult, RunResult

__all__ = [
    "Side",
    "Summary",
    "histogram",
    "percentile",
    "render_json",
    "render_markdown",
    "side_json",
    "side_metrics",
    "stats",
]

SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------- the sides


@dataclass
class Side:
    """One side of a rig: what was asked, what was deployed, what it measured, and how
    it ended. The rig fills it in as it goes; a report can be written at any point."""

    name: str  # "a" | "b"
    task: str  # task name or path, as given
    overrides: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"  # pending | deploying | ready | failed | cancelled
    error: str | None = None
    deployment_id: str | None = None
    provider: str | None = None
    gpu: str | None = None
    gpu_count: int = 1
    instance_id: str | None = None
    model: str | None = None
    price_per_hour_usd: float = 0.0
    cold_start_s: float | None = None
    phase_s: dict[str, float] = field(default_factory=dict)
    run: RunResult | None = None
    spent_usd: float | None = None
    billed_s: float | None = None
    instances: list[str] = field(default_factory=list)  # every instance it created
    teardown: str = "nothing created"
    gone_verified: bool = True  # every created instance proven gone (vacuously true)

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.task} ({extra})" if extra else self.task


@dataclass
class Summary:
    status: str  # completed | failed | interrupted
    started_at: datetime
    ended_at: datetime
    config: dict[str, Any]
    sides: dict[str, Side]
    outcomes: list[RuleOutcome] = field(default_factory=list)
    error: str | None = None

    @property
    def all_gone(self) -> bool:
        return all(s.gone_verified for s in self.sides.values())

    @property
    def tripped(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if o.tripped]


# ---------------------------------------------------------------------------- numbers


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's
    default); `values` need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of nothing")
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats(values: list[float]) -> dict[str, float] | None:
    """n, mean, min, p50, p95, p99, max of `values`; None when empty."""
    if not values:
        return None
    out: dict[str, float] = {"n": len(values), "mean": sum(values) / len(values)}
    out["min"] = min(values)
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(values, p)
    out["max"] = max(values)
    return out


def _results(side: Side) -> list[RequestResult]:
    return side.run.results if side.run else []


def side_metrics(side: Side) -> dict[str, float | None]:
    """The flat per-side metrics that rules and the report use (None: not measured)."""
    results = _results(side)
    ok = [r for r in results if r.ok]
    m: dict[str, float | None] = dict.fromkeys(SIDE_METRICS)
    m["requests"] = len(results)
    m["ok_requests"] = len(ok)
    m["error_rate"] = (len(results) - len(ok)) / len(results) if results else None
    m["output_tokens"] = sum(r.output_tokens for r in ok)
    series = {
        "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
        "tpot": [r.tpot_s for r in ok if r.tpot_s is not None],
        "latency": [r.latency_s for r in ok],
    }
    for name, values in series.items():
        s = stats(values)  # type: ignore[arg-type]
        for p in PERCENTILES:
            m[f"{name}_p{p}_s"] = s[f"p{p}"] if s else None
    per_request = [r.output_tok_s for r in ok if r.output_tok_s is not None]
    m["request_output_tok_s_p50"] = percentile(per_request, 50) if per_request else None
    wall_s = side.run.wall_s if side.run else 0.0
    tokens = m["output_tokens"] or 0
    m["output_tok_s"] = tokens / wall_s if wall_s > 0 and ok else None
    checked = [r for r in results if r.passed is not None]
    m["pass_rate"] = sum(bool(r.passed) for r in checked) / len(checked) if checked else None
    m["cold_start_s"] = side.cold_start_s
    m["price_per_hour_usd"] = side.price_per_hour_usd if side.deployment_id else None
    m["spent_usd"] = side.spent_usd
    # Steady-state unit costs: what the measured run itself cost per unit (boot and idle
    # time are in spent_usd, not here), so that they compare the two configurations.
    run_usd = side.price_per_hour_usd * wall_s / 3600.0
    m["usd_per_1m_output_tokens"] = run_usd / tokens * 1e6 if tokens else None
    m["usd_per_1000_requests"] = run_usd / len(ok) * 1000 if ok else None
    return m


# ---------------------------------------------------------------------------- JSON


def _num(value: float | None, digits: int = 6) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, digits)


def _stats_json(values: list[float]) -> dict[str, float] | None:
    s = stats(values)
    return {k: (int(v) if k == "n" else _num(v)) for k, v in s.items()} if s else None


def side_json(side: Side) -> dict[str, Any]:
    m = side_metrics(side)
    results = _results(side)
    ok = [r for r in results if r.ok]
    kinds: dict[str, int] = {}
    for r in results:
        if r.error:
            kinds[r.error] = kinds.get(r.error, 0) + 1
    checked = [r for r in results if r.passed is not None]
    failed_ids = sorted({r.prompt_id for r in checked if not r.passed})
    run = side.run
    return {
        "task": side.task,
        "overrides": side.overrides,
        "label": side.label,
        "status": side.status,
        "error": side.error,
        "deployment_id": side.deployment_id,
        "provider": side.provider,
        "gpu": side.gpu,
        "gpu_count": side.gpu_count,
        "instance_id": side.instance_id,
        "model": side.model,
        "price_per_hour_usd": _num(side.price_per_hour_usd),
        "cold_start_s": _num(side.cold_start_s, 3),
        "phase_s": {k: _num(v, 3) for k, v in side.phase_s.items()},
        "load": None if run is None else {
            "planned": run.planned,
            "requests": len(results),
            "ok": len(ok),
            "errors": len(results) - len(ok),
            "error_rate": _num(m["error_rate"]),
            "error_kinds": kinds,
            "stopped_early": run.stopped,
            "wall_s": _num(run.wall_s, 4),
            "output_tokens": m["output_tokens"],
            "ttft_s": _stats_json([r.ttft_s for r in ok if r.ttft_s is not None]),
            "tpot_s": _stats_json([r.tpot_s for r in ok if r.tpot_s is not None]),
            "latency_s": _stats_json([r.latency_s for r in ok]),
            "request_output_tok_s": _stats_json(
                [r.output_tok_s for r in ok if r.output_tok_s is not None]
            ),
            "output_tok_s": _num(m["output_tok_s"], 3),
            "quality": None if not checked else {
                "checked": len(checked),
                "passed": sum(bool(r.passed) for r in checked),
                "pass_rate": _num(m["pass_rate"]),
                "failed_prompts": failed_ids[:50],
            },
        },
        "cost": {
            "spent_usd": _num(side.spent_usd),
            "billed_s": _num(side.billed_s, 3),
            "usd_per_1m_output_tokens": _num(m["usd_per_1m_output_tokens"]),
            "usd_per_1000_requests": _num(m["usd_per_1000_requests"]),
        },
        "teardown": {
            "instances": side.instances,
            "verified_gone": side.gone_verified,
            "detail": side.teardown,
        },
    }  # fmt: skip


def render_json(summary: Summary) -> str:
    a, b = (side_metrics(summary.sides[k]) for k in ("a", "b"))
    compared = comparison(a, b)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "ab",
        "status": summary.status,
        "error": summary.error,
        "started_at": summary.started_at.isoformat(),
        "ended_at": summary.ended_at.isoformat(),
        "wall_s": round((summary.ended_at - summary.started_at).total_seconds(), 3),
        "config": summary.config,
        "sides": {k: side_json(s) for k, s in summary.sides.items()},
        "comparison": {k: _num(v) for k, v in compared.items()},
        "rules": [
            {"rule": o.rule.text, "metric": o.rule.metric, "side": o.rule.side,
             "op": o.rule.op, "threshold": o.rule.threshold, "value": _num(o.value),
             "value_is_infinite": o.value is not None and math.isinf(o.value),
             "tripped": o.tripped}
            for o in summary.outcomes
        ],
        "tripped": [o.rule.text for o in summary.tripped],
        "teardown": {"all_verified_gone": summary.all_gone},
    }
    return json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n"


# ---------------------------------------------------------------------------- Markdown


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.01:
        return f"{value * 1000:.2f} ms"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return "inf x" if math.isinf(value) else f"{value:.2f}x"


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


_EIGHTHS = " ▏▎▍▌▋▊▉█"


def _bar(count: int, top: int, width: int) -> str:
    if top <= 0 or count <= 0:
        return ""
    eighths = max(1, round(count / top * width * 8))
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def histogram(
    a: list[float], b: list[float], *, bins: int = 10, width: int = 22, scale: float = 1000.0,
    unit: str = "ms",
) -> list[str]:
    """A side-by-side Unicode histogram of two samples over shared bins (values in
    seconds, shown times `scale` in `unit`)."""
    values = a + b
    if not values:
        return ["(no successful requests)"]
    low, high = min(values) * scale, max(values) * scale
    step = (high - low) / bins if high > low else 1.0
    bins = bins if high > low else 1

    def counts(sample: list[float]) -> list[int]:
        out = [0] * bins
        for v in sample:
            out[min(int((v * scale - low) / step), bins - 1)] += 1
        return out

    ca, cb = counts(a), counts(b)
    top = max(ca + cb)
    digits = 0 if step >= 10 else 1 if step >= 1 else 2
    edges = [f"{low + i * step:.{digits}f}" for i in range(bins + 1)]
    span = max(len(e) for e in edges)
    head = f"{'':>{span * 2 + 1 + len(unit) + 1}}  {'A (n=' + str(len(a)) + ')':<{width + 6}}  "
    lines = [head + f"B (n={len(b)})"]
    for i in range(bins):
        rng = f"{edges[i]:>{span}}-{edges[i + 1]:>{span}} {unit}"
        left = f"{_bar(ca[i], top, width):<{width}} {ca[i]:>4}"
        lines.append(f"{rng}  {left}  {_bar(cb[i], top, width):<{width}} {cb[i]:>4}")
    return lines


def _ok_values(side: Side, attr: str) -> list[float]:
    return [v for r in _results(side) if r.ok and (v := getattr(r, attr)) is not None]


def _where(side: Side) -> str:
    if not side.provider:
        return "-"
    count = f"{side.gpu_count}x " if side.gpu_count > 1 else ""
    return f"{side.provider} {count}{side.gpu or ''} at ${side.price_per_hour_usd:.3f}/h"


def render_markdown(summary: Summary) -> str:
    sa, sb = summary.sides["a"], summary.sides["b"]
    a, b = side_metrics(sa), side_metrics(sb)
    compared = comparison(a, b)
    out: list[str] = [f"## A/B: `{sa.label}` vs `{sb.label}`", ""]
    if summary.status == "completed":
        if summary.tripped:
            names = ", ".join(f"`{o.rule.text}` ({_value(o)})" for o in summary.tripped)
            out.append(f"❌ **Failed**: {names} tripped.")
        elif summary.outcomes:
            out.append(f"✅ **Passed**: no rule tripped ({len(summary.outcomes)} checked).")
        else:
            out.append("✅ **Completed** (no `--fail-on` rules).")
    else:
        out.append(f"⚠️ **{summary.status.capitalize()}**: {summary.error or 'no reason given'}")
    if summary.all_gone:
        out.append("🧹 Teardown: both sides destroyed and verified gone; nothing left running.")
    else:
        out.append("🚨 **Teardown could not verify every instance gone**: run "
                   "`deployctl reap` and check the provider's console.")  # fmt: skip
    if not (sa.deployment_id or sb.deployment_id):  # nothing was deployed: no table
        out += ["", f"- A: `{sa.label}`: {sa.status}", f"- B: `{sb.label}`: {sb.status}", ""]
        return "\n".join(out)
    head = f"| | A: `{_cell(sa.label)}` | B: `{_cell(sb.label)}` | B/A |"
    out += ["", head, "|---|--:|--:|--:|"]

    def row(name: str, va: str, vb: str, ratio: str = "") -> None:
        out.append(f"| {name} | {_cell(va)} | {_cell(vb)} | {ratio} |")

    row("where", _where(sa), _where(sb))
    row("deployment", sa.deployment_id or "-", sb.deployment_id or "-")
    row("status", sa.status, sb.status)
    row("cold start (to ready)", fmt_s(a["cold_start_s"]), fmt_s(b["cold_start_s"]),
        fmt_ratio(compared["cold_start_ratio"]))  # fmt: skip
    row("requests ok / sent", _ok_sent(sa), _ok_sent(sb))
    row("error rate", fmt_pct(a["error_rate"]), fmt_pct(b["error_rate"]))
    for name, label in (("ttft", "TTFT"), ("tpot", "time per output token"),
                        ("latency", "end-to-end latency")):  # fmt: skip
        for p in PERCENTILES:
            key = f"{name}_p{p}_s"
            row(f"{label} p{p}", fmt_s(a[key]), fmt_s(b[key]),
                fmt_ratio(compared[f"{name}_p{p}_ratio"]))  # fmt: skip
    row("output tok/s per request (p50)", fmt_num(a["request_output_tok_s_p50"]),
        fmt_num(b["request_output_tok_s_p50"]), fmt_ratio(compared["request_tok_s_ratio"]))
    row("output tok/s aggregate", fmt_num(a["output_tok_s"]), fmt_num(b["output_tok_s"]),
        fmt_ratio(compared["throughput_ratio"]))  # fmt: skip
    row("output tokens", fmt_num(a["output_tokens"], 0), fmt_num(b["output_tokens"], 0))
    row("quality (pass rate)", _quality(sa, a), _quality(sb, b),
        "" if compared["quality_drop"] is None
        else f"drop {compared['quality_drop'] * 100:+.1f} pts")  # fmt: skip
    row("spent (price x wall time)", _spent(sa), _spent(sb), fmt_ratio(compared["spent_ratio"]))
    row("$ / 1M output tokens (run)", fmt_usd(a["usd_per_1m_output_tokens"]),
        fmt_usd(b["usd_per_1m_output_tokens"]), fmt_ratio(compared["cost_per_token_ratio"]))
    row("$ / 1000 requests (run)", fmt_usd(a["usd_per_1000_requests"]),
        fmt_usd(b["usd_per_1000_requests"]), fmt_ratio(compared["cost_per_request_ratio"]))
    row("teardown", sa.teardown, sb.teardown)
    if summary.outcomes:
        out += ["", "### Rules", "", "| rule | value | result |", "|---|--:|---|"]
        for o in summary.outcomes:
            verdict = "❌ tripped" if o.tripped else ("n/a" if o.value is None else "✅ ok")
            out.append(f"| `{o.rule.text}` | {_value(o)} | {verdict} |")
    errors = _error_kinds(sa, sb)
    if errors:
        out += ["", "### Errors", "", *errors]
    for title, attr in (("End-to-end latency", "latency_s"), ("Time to first token", "ttft_s")):
        la, lb = _ok_values(sa, attr), _ok_values(sb, attr)
        if not (la or lb):
            continue
        out += ["", f"### {title} distribution", "", "```text"]
        out += histogram(la, lb)
        out.append("```")
    cfg = summary.config
    out += ["", "<details><summary>Settings</summary>", ""]
    out += [f"- `{k}`: {v}" for k, v in cfg.items()]
    out += ["", "</details>", ""]
    return "\n".join(out)


def _cell(text: str) -> str:
    """Table cells: a `|` would end the cell, a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def _value(o: RuleOutcome) -> str:
    if o.value is None:
        return "n/a"
    if math.isinf(o.value):
        return "∞"
    return f"{o.value:.4g}"


def _ok_sent(side: Side) -> str:
    if side.run is None:
        return "-"
    ok = sum(r.ok for r in side.run.results)
    text = f"{ok} / {len(side.run.results)}"
    return f"{text} (stopped: {side.run.stopped})" if side.run.stopped else text


def _quality(side: Side, m: dict[str, float | None]) -> str:
    checked = [r for r in _results(side) if r.passed is not None]
    if not checked:
        return "-"
    return f"{sum(bool(r.passed) for r in checked)} / {len(checked)} = {fmt_pct(m['pass_rate'])}"


def _spent(side: Side) -> str:
    if side.spent_usd is None:
        return "-"
    billed = f" ({side.billed_s:.0f} s)" if side.billed_s is not None else ""
    return f"{fmt_usd(side.spent_usd)}{billed}"


def _error_kinds(*sides: Side) -> list[str]:
    lines = []
    for side in sides:
        kinds: dict[str, int] = {}
        for r in _results(side):
            if r.error:
                kinds[r.error] = kinds.get(r.error, 0) + 1
        if kinds:
            listed = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
            lines.append(f"- {side.name.upper()}: {listed}")
    return lines
