"""Human-readable views for offers, plan, estimate, models and gpus (rich or plain text)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .architectures import ModelArch
from .hardware import GpuSpec
from .models import Offer
from .offers import OfferSearch
from .planner import Candidate, Plan
from .render import money, offer_label, price_source, table
from .sizing import Bills, CostEstimate, Sizing, VramBreakdown
from .units import format_duration

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "show_estimate",
    "show_gpus",
    "show_models",
    "show_offers",
    "show_plan",
    "show_warnings",
]


def show_warnings(err: Console, search: OfferSearch) -> None:
    for line in search.warnings:
        err.print(f"warning: {line}")


def show_offers(out: Console, offers: list[Offer]) -> None:
    t = table("provider", "GPU", "VRAM GiB", "$/h", "spot", "where", "reliability", "prices")
    for o in offers:
        t.add_row(
            o.provider,
            offer_label(o),
            f"{o.vram_gib:.0f}" if o.vram_gib else "-",
            money(o.price_per_hour_usd, 3),
            "spot" if o.spot else "",
            o.where,
            f"{o.reliability:.3f}" if o.reliability is not None else "",
            price_source(o),
        )
    out.print(t)


def vram_line(vram: VramBreakdown) -> str:
    return (
        f"weights {vram.weights_gib:.2f} + KV cache {vram.kv_cache_gib:.2f} + adapter "
        f"{vram.adapter_gib:.2f} + activations {vram.activations_gib:.2f} + overhead "
        f"{vram.overhead_gib:.2f} = {vram.needed_gib:.2f} GiB per GPU; usable "
        f"{vram.usable_gib:.2f} of {vram.gpu_total_gib:.2f} GiB (engine reserve "
        f"{vram.engine_reserve_gib:.2f})"
    )


def bills_line(bills: Bills) -> str:
    return (
        f"3-hour demo {money(bills.demo_3h_usd)} · 8 h x 22 days {money(bills.workday_8h_22d_usd)}"
        f" · 24/7 month {money(bills.always_on_month_usd)} · {bills.per_second_requests} req x "
        f"{bills.per_second_gpu_s:g} GPU-s billed per second {money(bills.per_second_usd)}"
    )


def _candidate_row(i: int, c: Candidate) -> list[str]:
    s, cost = c.sizing, c.cost
    speed = s.speed if s else None
    return [
        str(i),
        c.offer.provider,
        offer_label(c.offer),
        c.offer.where + (" (spot)" if c.offer.spot else ""),
        money(c.offer.price_per_hour_usd, 3),
        f"{speed.decode_tok_s_per_request:.0f}" if speed else "-",
        f"{speed.aggregate_tok_s:.0f}" if speed else "-",
        f"{speed.ttft_s:.2f}" if speed else "-",
        money(cost.usd_per_1m_output_tokens, 3) if cost else "-",
        money(cost.usd_per_1000_requests, 3) if cost else "-",
        f"{s.vram.needed_gib:.1f}/{s.vram.usable_gib:.1f}" if s else "-",
    ]


_CANDIDATE_COLUMNS = (
    "#",
    "provider",
    "GPU",
    "where",
    "$/h",
    "tok/s/req",
    "tok/s total",
    "TTFT s",
    "$/1M tok",
    "$/1k req",
    "GiB need/usable",
)
_COMPACT = (0, 1, 2, 3, 4, 5, 7, 8)


def _suggestions(plan: Plan) -> list[str]:
    task = plan.task
    counts = plan.rejection_counts()
    tips = []
    if counts.get("vram"):
        tips.append(
            f"lower --context (now {task.context_tokens}) or --concurrency (now "
            f"{task.concurrency}), pick a smaller quant (e.g. --quant awq), or allow more GPUs"
        )
    decode = [c.sizing.speed.decode_tok_s_per_request for c in plan.rejected if c.sizing]
    if counts.get("latency: decode") and decode:
        tips.append(f"lower --min-tps (the best offer decodes {max(decode):.0f} tok/s)")
    ttft = [c.sizing.speed.ttft_s for c in plan.rejected if c.sizing]
    if counts.get("latency: ttft") and ttft:
        tips.append(f"raise --max-ttft (the best offer answers in {min(ttft):.2f} s)")
    if counts.get("price"):
        priced_out = [c for c in plan.rejected if c.categories == ["price"]]
        if priced_out:
            cheapest = min(c.offer.price_per_hour_usd for c in priced_out)
            tips.append(f"raise --max-price to ${cheapest:.2f}/h or more")
    if counts.get("kernel"):
        tips.append("choose a quant the GPUs support (see `deployctl gpus`)")
    if not plan.candidates:
        tips.append("no offers matched at all: check --provider, --region and --spot")
    return tips


def show_plan(out: Console, plan: Plan, bills: Bills | None, *, top: int, explain: bool) -> None:
    task, arch = plan.task, plan.arch
    adapter = f" + LoRA {task.adapter.repo} (r={task.adapter.rank})" if task.adapter else ""
    out.print(
        f"[bold]{task.name}[/]: {task.model}{adapter} ({arch.name}, {arch.params_b:g} B params), "
        f"{task.quant.value} on {task.engine.value}, context {task.context_tokens} x "
        f"concurrency {task.concurrency}; keep-alive {format_duration(task.keep_alive_s)}, "
        f"ttl {format_duration(task.ttl_s)}"
    )
    need = task.latency
    if need.min_decode_tok_s or need.max_ttft_s:
        out.print(
            f"Needs: ≥ {need.min_decode_tok_s or 0:g} tok/s per request, TTFT ≤ "
            f"{need.max_ttft_s or float('inf'):g} s"
            + (f", ≤ ${task.max_price_per_hour_usd:g}/h" if task.max_price_per_hour_usd else "")
        )
    chosen = plan.chosen
    if chosen and chosen.sizing:
        out.print(f"VRAM on the chosen GPU: {vram_line(chosen.sizing.vram)}")
    sources = sorted({price_source(c.offer) for c in plan.feasible[:top]})
    # A narrow terminal gets the columns that decide (where, $/h, speed, $/1M tokens).
    keep = range(len(_CANDIDATE_COLUMNS)) if out.width >= 130 else _COMPACT
    t = table(
        *(_CANDIDATE_COLUMNS[i] for i in keep),
        title=f"Best of {len(plan.candidates)} offers (prices: {', '.join(sources)})",
    )
    for i, c in enumerate(plan.feasible[:top], 1):
        row = _candidate_row(i, c)
        t.add_row(*(row[j] for j in keep))
    if plan.feasible:
        out.print(t)
    if chosen:
        o = chosen.offer
        out.print(
            f"[bold green]Chosen[/]: {o.provider} {offer_label(o)} in {o.where or '-'} at "
            f"{money(o.price_per_hour_usd, 3)}/h ({price_source(o)})"
        )
        if bills:
            out.print(f"Bills at that price: {bills_line(bills)}")
    rejected = plan.rejected
    if rejected:
        counts = ", ".join(f"{k}: {v}" for k, v in plan.rejection_counts().most_common())
        out.print(f"Rejected {len(rejected)} offers ({counts})")
    if explain and rejected:
        rt = table("provider", "GPU", "where", "$/h", "why not")
        for c in rejected:
            rt.add_row(
                c.offer.provider,
                offer_label(c.offer),
                c.offer.where,
                money(c.offer.price_per_hour_usd, 3),
                "; ".join(c.reasons),
            )
        out.print(rt)
    if not chosen:
        out.print("[bold red]No offer fits.[/] Nearest misses:")
        for c in plan.nearest_misses():
            price = money(c.offer.price_per_hour_usd, 3)
            why = "; ".join(c.reasons)
            out.print(f"  {c.offer.provider} {offer_label(c.offer)} {price}/h: {why}")
        for tip in _suggestions(plan):
            out.print(f"  → {tip}")


def show_estimate(
    out: Console,
    arch: ModelArch,
    label: str,
    sizing: Sizing,
    cost: CostEstimate | None,
    bills: Bills | None,
) -> None:
    gpus = f"{sizing.gpu_count}x {sizing.gpu.name}" if sizing.gpu_count > 1 else sizing.gpu.name
    out.print(f"[bold]{label}[/] ({arch.name}) on {gpus}, tensor parallel {sizing.tensor_parallel}")
    out.print(f"VRAM: {vram_line(sizing.vram)}")
    speed = sizing.speed
    if speed:
        out.print(
            f"Speed: {speed.decode_tok_s_single:.1f} tok/s alone, "
            f"{speed.decode_tok_s_per_request:.1f} tok/s per request and "
            f"{speed.aggregate_tok_s:.0f} tok/s total at the planned concurrency "
            f"({speed.bound}-bound); TTFT {speed.ttft_s:.2f} s"
        )
    if cost:
        out.print(
            f"Cost at {money(cost.price_per_hour_usd, 3)}/h: "
            f"{money(cost.usd_per_1m_output_tokens, 3)} per 1M output tokens, "
            f"{money(cost.usd_per_1000_requests, 3)} per 1000 requests"
        )
    if bills:
        out.print(f"Bills: {bills_line(bills)}")
    if sizing.gpu.estimated_fields:
        out.print(f"note: estimated GPU facts: {', '.join(sizing.gpu.estimated_fields)}")
    if sizing.feasible:
        out.print("[green]Fits.[/]")
    else:
        for problem in sizing.problems:
            out.print(f"[red]Does not run:[/] {problem}")


def show_models(out: Console, models: list[ModelArch], tasks: dict[str, str]) -> None:
    t = table("model", "params B", "active B", "layers", "KV heads", "KV KiB/token", "max ctx")
    for m in models:
        t.add_row(
            m.name,
            f"{m.params_b:g}",
            f"{m.active_params_b:g}",
            str(m.layers),
            str(m.kv_heads),
            f"{m.kv_bytes_per_token() / 1024:.0f}",
            str(m.max_position_embeddings),
        )
    out.print(t)
    tt = table("task", "serves")
    for name, description in tasks.items():
        tt.add_row(name, description)
    out.print(tt)


def show_gpus(out: Console, gpus: list[GpuSpec]) -> None:
    t = table("GPU", "arch", "sm", "VRAM GiB", "GB/s", "FP16 TFLOPS", "fp32acc TFLOPS", "kernels")
    for g in gpus:
        kernels = [k for k in ("bf16", "awq", "marlin", "fp8_w8a8", "int8_w8a8") if getattr(g, k)]
        est = "*" if g.estimated_fields else ""
        t.add_row(
            g.name + est,
            g.architecture,
            f"{g.compute_capability:g}",
            f"{g.vram_gib_driver:.1f}",
            f"{g.mem_bw_gbs:g}",
            f"{g.fp16_tflops_dense:g}",
            f"{g.fp16_tflops_dense_fp32acc:g}",
            " ".join(kernels),
        )
    out.print(t)
    out.print("* some facts estimated (see --json estimated_fields)")
