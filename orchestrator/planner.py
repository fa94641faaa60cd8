"""Score every offer against a task and pick the cheapest one that truly serves it.

Each offer is sized (VRAM, kernels, sharding), timed (decode tok/s, TTFT) and priced
($/h, $/1M output tokens, $/1000 requests). The cheapest feasible offer per hour wins;
every rejected offer keeps its reasons, and the nearest misses say what to relax.
Sizing depends only on (GPU, count), so it is computed once per configuration: planning
10,000 offers costs a few hundred sizings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .architectures import ModelArch, find_model
from .errors import DeployctlError
from .hardware import GpuSpec, get_gpu
from .hostcpu import host_cpu_spec
from .models import Offer, TaskSpec
from .sizing import CostEstimate, Sizing, SizingInput, cost_for, estimate

__all__ = ["Candidate", "Plan", "make_plan", "sizing_input", "spec_for_offer"]


@dataclass
class Candidate:
    offer: Offer
    sizing: Sizing | None
    reasons: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    output_tokens: int = 256  # per request, for $/1000 requests

    @property
    def feasible(self) -> bool:
        return not self.reasons

    @property
    def cost(self) -> CostEstimate | None:
        """$/1M tokens and $/1000 requests at this offer's price (computed on demand)."""
        if self.sizing is None or self.sizing.speed is None:
            return None
        return cost_for(self.offer.price_per_hour_usd, self.sizing.speed, self.output_tokens)

    @property
    def miss_score(self) -> float:
        """How far from feasible (smaller is nearer); used to pick the nearest misses."""
        if self.sizing is None:
            return 1e9
        score = 0.0
        vram = self.sizing.vram
        if "vram" in self.categories:
            score += vram.needed_gib / max(vram.usable_gib, 0.1) - 1
        score += 10.0 * sum(c in ("kernel", "sharding", "context") for c in self.categories)
        score += 0.5 * sum(c.startswith("latency") or c == "price" for c in self.categories)
        return score


@dataclass
class Plan:
    task: TaskSpec
    arch: ModelArch
    candidates: list[Candidate]  # feasible first, cheapest first

    @property
    def feasible(self) -> list[Candidate]:
        return [c for c in self.candidates if c.feasible]

    @property
    def chosen(self) -> Candidate | None:
        feasible = self.feasible
        return feasible[0] if feasible else None

    @property
    def rejected(self) -> list[Candidate]:
        return [c for c in self.candidates if not c.feasible]

    def rejection_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for candidate in self.rejected:
            counts.update(set(candidate.categories))
        return counts

    def nearest_misses(self, n: int = 3) -> list[Candidate]:
        misses = sorted(self.rejected, key=lambda c: (c.miss_score, c.offer.price_per_hour_usd))
        seen: set[tuple[str, int]] = set()
        out = []
        for candidate in misses:
            key = (candidate.offer.gpu, candidate.offer.gpu_count)
            if key in seen:
                continue
            seen.add(key)
            out.append(candidate)
            if len(out) == n:
                break
        return out


def sizing_input(task: TaskSpec, arch: ModelArch | None = None) -> SizingInput:
    arch = arch or find_model(task.model, task.arch)
    return SizingInput(
        arch=arch,
        quant=task.quant,
        engine=task.engine,
        context_tokens=task.context_tokens,
        concurrency=task.concurrency,
        prompt_tokens=task.load.prompt_tokens,
        output_tokens=task.load.output_tokens,
        adapter_rank=task.adapter.rank if task.adapter else None,
    )


def spec_for_offer(offer: Offer) -> GpuSpec:
    if offer.gpu == "CPU":
        return host_cpu_spec(offer.vram_gib)
    return get_gpu(offer.gpu)


def _check_latency(task: TaskSpec, sizing: Sizing) -> list[tuple[str, str]]:
    problems = []
    speed = sizing.speed
    need = task.latency
    if speed is None:
        return problems
    if need.min_decode_tok_s and speed.decode_tok_s_per_request < need.min_decode_tok_s:
        problems.append(
            (
                "latency: decode",
                f"decodes {speed.decode_tok_s_per_request:.0f} tok/s per request at "
                f"concurrency {task.concurrency}, below the {need.min_decode_tok_s:g} needed",
            )
        )
    if need.max_ttft_s and speed.ttft_s > need.max_ttft_s:
        problems.append(
            (
                "latency: ttft",
                f"first token after {speed.ttft_s:.2f} s, above the {need.max_ttft_s:g} s allowed",
            )
        )
    return problems


def _categorise(problem: str) -> str:
    if "GiB" in problem:
        return "vram"
    if "tensor parallelism" in problem:
        return "sharding"
    if "context" in problem:
        return "context"
    return "kernel"


def make_plan(task: TaskSpec, offers: list[Offer], *, sort: str = "price") -> Plan:
    """Score `offers` for `task`; candidates come back feasible first, then by `sort`
    (price: $/h, or cost: $/1M output tokens)."""
    arch = find_model(task.model, task.arch)
    inp = sizing_input(task, arch)
    out_tokens = task.load.output_tokens
    cap = task.max_price_per_hour_usd
    # (gpu, count, host RAM for CPU offers) -> (sizing or None, reasons, categories)
    cache: dict[tuple[str, int, float], tuple[Sizing | None, list[str], list[str]]] = {}
    candidates = []
    for offer in offers:
        key = (offer.gpu, offer.gpu_count, offer.vram_gib if offer.gpu == "CPU" else 0.0)
        sized = cache.get(key)
        if sized is None:
            sized = cache[key] = _size_config(task, inp, offer)
        sizing, reasons, categories = sized
        if offer.raw.get("accelerator_only"):
            # GCP's catalog prices the GPU apart from its host VM: the real bill is higher
            # by an unknown amount, so such an offer is never chosen.
            reasons = [*reasons, "the catalog prices this GPU without its host VM"]
            categories = [*categories, "price incomplete"]
        if cap is not None and offer.price_per_hour_usd > cap:
            reasons = [*reasons, f"${offer.price_per_hour_usd:.3f}/h is above the ${cap:g}/h cap"]
            categories = [*categories, "price"]
        candidates.append(Candidate(offer, sizing, reasons, categories, out_tokens))

    def order(c: Candidate):
        offer = c.offer
        primary = offer.price_per_hour_usd
        if sort == "cost":
            speed = c.sizing.speed if c.sizing else None
            primary = primary / speed.aggregate_tok_s if speed else float("inf")
        return (
            bool(c.reasons),
            primary,
            offer.price_per_hour_usd,
            -(offer.reliability or 0.0),
            offer.provider,
            offer.offer_id,
        )

    candidates.sort(key=order)
    return Plan(task, arch, candidates)


def _size_config(
    task: TaskSpec, inp: SizingInput, offer: Offer
) -> tuple[Sizing | None, list[str], list[str]]:
    """Sizing of one (GPU, count) configuration and the reasons it cannot serve `task`."""
    try:
        sizing = estimate(inp, spec_for_offer(offer), offer.gpu_count)
    except DeployctlError as exc:  # an unknown GPU is a reason, not a crash
        return None, [f"no sizing for GPU {offer.gpu!r} ({exc})"], ["unknown gpu"]
    problems = [(_categorise(p), p) for p in sizing.problems]
    problems += _check_latency(task, sizing)
    return sizing, [text for _, text in problems], [category for category, _ in problems]
