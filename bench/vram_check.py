"""Predicted vs logged vLLM memory for the worked logs in shared/reference/README.md §5.

    .venv/bin/python bench/vram_check.py

Each case replays the logged run's settings (GPU, model, dtype, tensor parallel,
gpu_memory_utilization, max_model_len). Those vLLM versions predate CUDA-graph memory
profiling and ran without chunked prefill, so the activation peak is sized for
max_model_len tokens and no CUDA-graph reservation is counted (our planning default adds
both). Compared: weights per GPU and the KV cache capacity the engine reported.
Target (issue #2): within +-10 %.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.architectures import find_model  # noqa: E402
from orchestrator.hardware import get_gpu  # noqa: E402
from orchestrator.models import Engine, Quant  # noqa: E402
from orchestrator.sizing import ENGINE_PROFILES, SizingInput, estimate  # noqa: E402
from orchestrator.units import GIB  # noqa: E402


@dataclass
class Case:
    label: str
    source: str
    gpu: str
    gpu_count: int
    model: str
    quant: Quant
    util: float
    max_model_len: int
    batched_tokens: int  # activation profiling size
    non_torch_gib: float | None  # as logged, when logged
    weights_gib_logged: float | None  # per GPU
    kv_gib_logged: float | None
    kv_tokens_logged: int | None
    kv_tokens_before_fix: int | None = None  # PR#2031 logs both sides of a profiling fix


CASES = [
    Case(
        "Llama-3.1-8B bf16, 3090, len 20000",
        "vllm#10517",
        "RTX3090",
        1,
        "Llama-3.1-8B-Instruct",
        Quant.BF16,
        0.90,
        20000,
        20000,
        0.35,
        14.9888,
        3.81,
        31232,
    ),
    Case(
        "Llama-3.1-8B bf16, 3090, len 29000",
        "vllm#10517",
        "RTX3090",
        1,
        "Llama-3.1-8B-Instruct",
        Quant.BF16,
        0.90,
        29000,
        29000,
        0.35,
        14.9888,
        2.89,
        23648,
    ),
    Case(
        "R1-Distill-Qwen-14B bf16, 2x4090 TP2",
        "vllm#13061",
        "RTX4090",
        2,
        "Qwen2.5-14B-Instruct",
        Quant.BF16,
        0.98,
        131072,
        2048,
        0.25,
        13.9476,
        8.69,
        81536,
    ),
    Case(
        "Llama-2-7B fp16, A100 80GB",
        "vllm PR#2031",
        "A100-SXM4-80GB",
        1,
        "Llama-2-7B",
        Quant.FP16,
        0.90,
        4096,
        4096,
        None,
        None,
        None,
        7351 * 16,
        7449 * 16,
    ),
    Case(
        "Llama-2-70B fp16, 4x A100 80GB TP4",
        "vllm PR#2031",
        "A100-SXM4-80GB",
        4,
        "Llama-2-70B",
        Quant.FP16,
        0.90,
        4096,
        4096,
        None,
        None,
        None,
        20865 * 16,
        31615 * 16,
    ),
]


def run_case(case: Case) -> dict:
    base = ENGINE_PROFILES[Engine.VLLM]
    profile = replace(
        base,
        gpu_memory_utilization=case.util,
        cuda_graph_gib=0.0,
        prefill_chunk_tokens=case.batched_tokens,
        non_torch_gib=case.non_torch_gib if case.non_torch_gib is not None else base.non_torch_gib,
        nccl_gib=0.0,
    )
    inp = SizingInput(
        arch=find_model(case.model),
        quant=case.quant,
        engine=Engine.VLLM,
        context_tokens=case.max_model_len,
        concurrency=1,
    )
    sized = estimate(inp, get_gpu(case.gpu), case.gpu_count, profile=profile)
    vram = sized.vram
    return {
        "weights": vram.weights_gib,
        "kv_gib": vram.kv_capacity_gib,
        "kv_tokens": vram.kv_capacity_tokens,
        "kv_tokens_gib": vram.kv_bytes_per_token * (case.kv_tokens_logged or 0) / GIB,
    }


def main() -> None:
    print(f"{'case':<40}{'source':<14}{'quantity':<18}{'logged':>10}{'predicted':>11}{'error':>8}")
    errors = []
    for case in CASES:
        got = run_case(case)
        checks = []
        if case.weights_gib_logged is not None:
            checks.append(("weights GiB/GPU", case.weights_gib_logged, got["weights"]))
        if case.kv_gib_logged is not None:
            checks.append(("KV cache GiB", case.kv_gib_logged, got["kv_gib"]))
        if case.kv_tokens_logged is not None:
            checks.append(("KV tokens", case.kv_tokens_logged, got["kv_tokens"]))
        if case.kv_tokens_before_fix is not None:
            checks.append(("KV tok, pre-fix", case.kv_tokens_before_fix, got["kv_tokens"]))
        for i, (what, logged, predicted) in enumerate(checks):
            err = predicted / logged - 1
            errors.append(abs(err))
            label = case.label if i == 0 else ""
            source = case.source if i == 0 else ""
            print(
                f"{label:<40}{source:<14}{what:<18}{logged:>10,.2f}{predicted:>11,.2f}{err:>+8.1%}"
            )
    within = sum(e <= 0.10 for e in errors)
    print(f"\n{within}/{len(errors)} quantities within ±10 %; worst |error| {max(errors):.1%}")
    print(
        "Known misses: vllm#13061 logs 8.69 GiB of KV (we predict +2.7 %) but 81,536 tokens,\n"
        "which is 114 KB/token against the 96 KB/token Qwen2.5-14B needs per GPU at TP2; and\n"
        "after PR#2031 vLLM reserved ~13 GiB more per GPU at TP4 than its profiled peak\n"
        "(our prediction matches the pre-fix profile). Both are TP > 1 cases."
    )


if __name__ == "__main__":
    main()
