"""Output: rich tables on a terminal, plain aligned text when piped, and --json documents.

The JSON shapes built here are the documented schema (README, "JSON output"); change them
only together with the README.
"""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

from .hardware import GpuSpec
from .models import Offer
from .offers import OfferSearch
from .planner import Candidate, Plan
from .sizing import Bills, Sizing, VramBreakdown

__all__ = [
    "console",
    "gpu_json",
    "offer_json",
    "plan_json",
    "print_json",
    "sizing_json",
]

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

SCHEMA_VERSION = 1


def console(stderr: bool = False) -> Console:
    from rich.console import Console  # rich loads only for human output

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    width = None if tty else 250  # piped: never truncate columns
    return Console(file=stream, highlight=False, no_color=not tty, width=width)


def table(*columns: str, title: str | None = None) -> Table:
    """A rich table; plain (no box, no colour) when stdout is not a terminal."""
    from rich import box
    from rich.table import Table

    tty = sys.stdout.isatty()
    t = Table(title=title, box=box.SIMPLE_HEAD if tty else None, pad_edge=False)
    for column in columns:
        numeric = column.startswith(("$", "#")) or any(
            u in column for u in ("tok/s", "GiB", "TTFT", "TFLOPS", "GB/s")
        )
        # Numbers never wrap; text columns fold on a narrow terminal instead of "…".
        t.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=numeric,
            overflow="fold",
        )
    return t


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str, allow_nan=False) + "\n")


def money(value: float | None, digits: int = 2) -> str:
    if value is None or math.isinf(value):
        return "-"
    if 0 < value < 0.01:
        return f"${value:.4f}"
    return f"${value:,.{digits}f}"


def _finite(value: float | None, digits: int = 4) -> float | None:
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return round(value, digits)


def offer_label(offer: Offer) -> str:
    return f"{offer.gpu_count}x {offer.gpu}" if offer.gpu_count > 1 else offer.gpu


def price_source(offer: Offer) -> str:
    if offer.source == "catalog":
        return f"catalog {offer.quoted_at:%Y-%m-%d}"
    return "live"


# ---------------------------------------------------------------- JSON documents


def offer_json(offer: Offer) -> dict[str, Any]:
    return {
        "provider": offer.provider,
        "offer_id": offer.offer_id,
        "gpu": offer.gpu,
        "gpu_count": offer.gpu_count,
        "vram_gib": round(offer.vram_gib, 2),
        "price_per_hour_usd": round(offer.price_per_hour_usd, 4),
        "spot": offer.spot,
        "region": offer.region,
        "cloud": offer.cloud,
        "instance_type": offer.instance_type,
        "reliability": offer.reliability,
        "source": offer.source,
        "quoted_at": offer.quoted_at.isoformat(),
    }


def vram_json(vram: VramBreakdown) -> dict[str, Any]:
    return {
        "weights_gib": round(vram.weights_gib, 3),
        "kv_cache_gib": round(vram.kv_cache_gib, 3),
        "adapter_gib": round(vram.adapter_gib, 3),
        "activations_gib": round(vram.activations_gib, 3),
        "overhead_gib": round(vram.overhead_gib, 3),
        "needed_gib": round(vram.needed_gib, 3),
        "engine_reserve_gib": round(vram.engine_reserve_gib, 3),
        "usable_gib": round(vram.usable_gib, 3),
        "gpu_total_gib": round(vram.gpu_total_gib, 3),
        "fits": vram.fits,
    }


def sizing_json(sizing: Sizing) -> dict[str, Any]:
    speed = sizing.speed
    return {
        "gpu": sizing.gpu.name,
        "gpu_count": sizing.gpu_count,
        "tensor_parallel": sizing.tensor_parallel,
        "vram_per_gpu": vram_json(sizing.vram),
        "speed": None
        if speed is None
        else {
            "decode_tok_s_single": _finite(speed.decode_tok_s_single, 2),
            "decode_tok_s_per_request": _finite(speed.decode_tok_s_per_request, 2),
            "aggregate_tok_s": _finite(speed.aggregate_tok_s, 2),
            "ttft_s": _finite(speed.ttft_s, 4),
            "bound": speed.bound,
        },
        "feasible": sizing.feasible,
        "problems": sizing.problems,
    }


def bills_json(bills: Bills) -> dict[str, Any]:
    return {
        "demo_3h_usd": round(bills.demo_3h_usd, 2),
        "workday_8h_22d_usd": round(bills.workday_8h_22d_usd, 2),
        "always_on_month_usd": round(bills.always_on_month_usd, 2),
        "per_second_usd": round(bills.per_second_usd, 2),
        "per_second_requests": bills.per_second_requests,
        "per_second_gpu_s": bills.per_second_gpu_s,
    }


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    cost = candidate.cost
    return {
        "offer": offer_json(candidate.offer),
        "feasible": candidate.feasible,
        "reasons": candidate.reasons,
        "sizing": sizing_json(candidate.sizing) if candidate.sizing else None,
        "cost": None
        if cost is None
        else {
            "price_per_hour_usd": round(cost.price_per_hour_usd, 4),
            "usd_per_1m_output_tokens": _finite(cost.usd_per_1m_output_tokens),
            "usd_per_1000_requests": _finite(cost.usd_per_1000_requests),
        },
    }


def plan_json(
    plan: Plan, search: OfferSearch, bills: Bills | None, *, top: int, explain: bool
) -> dict[str, Any]:
    chosen = plan.chosen
    return {
        "schema_version": SCHEMA_VERSION,
        "task": plan.task.model_dump(mode="json", by_alias=True, exclude={"env"}),
        "architecture": plan.arch.name,
        "offers_considered": len(plan.candidates),
        "chosen": candidate_json(chosen) if chosen else None,
        "bills": bills_json(bills) if bills else None,
        "candidates": [candidate_json(c) for c in plan.feasible[:top]],
        "rejected_counts": dict(plan.rejection_counts()),
        "nearest_misses": [candidate_json(c) for c in plan.nearest_misses()],
        "rejected": [candidate_json(c) for c in plan.rejected] if explain else None,
        "warnings": search.warnings,
    }


def gpu_json(gpu: GpuSpec) -> dict[str, Any]:
    return {
        "name": gpu.name,
        "architecture": gpu.architecture,
        "compute_capability": gpu.compute_capability,
        "gpu_class": gpu.gpu_class,
        "vram_gb_nominal": gpu.vram_gb_nominal,
        "vram_mib_driver": gpu.vram_mib_driver,
        "mem_bw_gbs": gpu.mem_bw_gbs,
        "fp16_tflops_dense": gpu.fp16_tflops_dense,
        "fp16_tflops_dense_fp32acc": gpu.fp16_tflops_dense_fp32acc,
        "fp8_tflops_dense": gpu.fp8_tflops_dense,
        "kernels": {
            "bf16": gpu.bf16,
            "awq": gpu.awq,
            "gptq": gpu.gptq,
            "marlin": gpu.marlin,
            "fp8_w8a8": gpu.fp8_w8a8,
            "int8_w8a8": gpu.int8_w8a8,
        },
        "estimated_fields": list(gpu.estimated_fields),
    }
