"""VRAM and speed estimates for one model on one GPU configuration (DESIGN §6).

Memory, per GPU after tensor-parallel sharding:

    weights      = linear params x bpw(quant) + embeddings/head at their own precision
    kv_cache     = 2 x layers x kv_heads x head_dim x bytes/elt x context x concurrency
    adapter      = LoRA A/B matrices on every linear layer, fp16
    activations  = per-token activation bytes x the engine's prefill chunk (vLLM) or context
    overhead     = non-torch allocations + CUDA graphs (+ NCCL when sharded)
    reserve      = (1 - gpu_memory_utilization) x driver-visible VRAM (vLLM keeps it free)
    fits        <=> weights + kv_cache + adapter + activations + overhead <= VRAM x utilization

Speed, per decode step at batch B (the task's concurrency), context S:

    step_s = max(bytes read / (bandwidth x eta_bw), flops / (tensor peak x eta_c))
             + layers x per-layer overhead (kernel launches, scheduling)
    per-request tok/s = 1 / step_s ; aggregate = B / step_s
    TTFT   = prefill FLOPs / (peak x eta_prefill) + one weight pass + one step

eta_bw and the per-layer overhead differ by engine and by memory class (GDDR vs HBM);
they are calibrated on shared/reference/measured_throughput.csv by
`bench/calibrate_speed.py` (numbers in ENGINE_PROFILES). Anything that cannot run —
a kernel the GPU lacks, a sharding the engine cannot do, memory that does not fit —
comes back as a reason, never as a silent zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .architectures import ModelArch
from .hardware import GpuSpec
from .models import Engine, Quant
from .units import GIB

__all__ = [
    "ENGINE_PROFILES",
    "Bills",
    "CostEstimate",
    "EngineProfile",
    "Sizing",
    "SizingInput",
    "SpeedEstimate",
    "VramBreakdown",
    "bills_for",
    "cost_for",
    "estimate",
    "kernel_problem",
    "weight_bytes",
]

HOURS_PER_MONTH = 730.0
# nvidia-smi's total minus what CUDA lets a process see as total (torch.cuda.mem_get_info):
# an RTX 3090 lists 24576 MiB and vLLM logs total_gpu_memory 23.58 GiB (vllm#10517); an
# RTX 4090 lists 24564 MiB and torch reports 23.64 GiB.
DRIVER_RESERVED_GIB = 0.42


@dataclass(frozen=True)
class EngineProfile:
    """How one serving engine uses memory and how efficiently it decodes."""

    name: str
    gpu_memory_utilization: float  # share of driver-visible VRAM the engine may use
    non_torch_gib: float  # cuBLAS workspaces, allocator slack (vLLM logs: 0.2-0.35 GiB)
    cuda_graph_gib: float  # CUDA-graph capture (vLLM >= 0.21 profiles it; GiB-scale)
    nccl_gib: float  # extra buffers per GPU when sharded
    prefill_chunk_tokens: int  # activation peak is sized for this many tokens at once
    activation_factor: float  # bytes per token = factor x (intermediate/tp + 2 hidden) x 2
    bw_efficiency: dict[str, float]  # memory class (hbm|gddr|cpu) -> share of peak bandwidth
    layer_overhead_s: dict[str, float]  # memory class -> fixed seconds per layer per step
    compute_efficiency: float  # share of the tensor peak reached by batched decode GEMMs
    gpu_hop_s: dict[str, float]  # gpu class -> seconds per extra GPU per step (layer split)
    prefill_efficiency: float  # share of the tensor peak reached by prefill
    fp32_accumulate: bool  # PyTorch/vLLM GEMMs accumulate in fp32 (half rate on GeForce)
    tensor_parallel: bool  # False: llama.cpp splits layers across GPUs (no decode speed-up)


# Calibrated by bench/calibrate_speed.py on shared/reference/measured_throughput.csv.
ENGINE_PROFILES: dict[Engine, EngineProfile] = {
    Engine.VLLM: EngineProfile(
        name="vllm",
        gpu_memory_utilization=0.90,
        non_torch_gib=0.35,
        cuda_graph_gib=0.75,
        nccl_gib=0.25,
        prefill_chunk_tokens=2048,
        # vllm#10517: 2.07 GiB activation peak for 20,000 batched tokens of Llama-3.1-8B
        # (peak 17.06 - weights 14.99 GiB) -> 2.5 x (14336 + 2 x 4096) x 2 bytes per token.
        activation_factor=2.5,
        bw_efficiency={"hbm": 0.70, "gddr": 0.80, "cpu": 0.5},
        layer_overhead_s={"hbm": 40e-6, "gddr": 40e-6, "cpu": 200e-6},
        # Saturated serving reaches ~35% of the dense peak: vLLM on a 4090 at concurrency
        # 48 and NIM on 2x H100 at 100+ both land there (bench/calibrate_speed.py).
        compute_efficiency=0.35,
        gpu_hop_s={},
        prefill_efficiency=0.55,
        fp32_accumulate=True,
        tensor_parallel=True,
    ),
    Engine.TGI: EngineProfile(
        name="tgi",
        gpu_memory_utilization=0.95,
        non_torch_gib=0.5,
        cuda_graph_gib=0.5,
        nccl_gib=0.25,
        prefill_chunk_tokens=4096,
        activation_factor=2.5,
        bw_efficiency={"hbm": 0.65, "gddr": 0.75, "cpu": 0.5},
        layer_overhead_s={"hbm": 50e-6, "gddr": 50e-6, "cpu": 200e-6},
        compute_efficiency=0.3,
        gpu_hop_s={},
        prefill_efficiency=0.5,
        fp32_accumulate=True,
        tensor_parallel=True,
    ),
    Engine.LLAMACPP: EngineProfile(
        name="llamacpp",
        gpu_memory_utilization=1.0,
        non_torch_gib=0.6,  # CUDA context + compute buffers (gpu_poor uses 650 MB)
        cuda_graph_gib=0.0,
        nccl_gib=0.0,
        prefill_chunk_tokens=512,  # llama.cpp's default ubatch
        activation_factor=2.0,
        bw_efficiency={"hbm": 0.70, "gddr": 0.78, "cpu": 0.6},
        # cpu: SmolLM2-135M decodes 50 tok/s on this project's 2-core CI machine with the
        # portable (GGML_NATIVE=OFF) build: per-token work there is overhead, not bandwidth.
        layer_overhead_s={"hbm": 100e-6, "gddr": 45e-6, "cpu": 450e-6},
        compute_efficiency=0.4,
        # Each extra GPU in a layer split adds a hand-off per token; GeForce cards have no
        # peer-to-peer over PCIe, so theirs goes through host memory (XD2 multi-GPU rows).
        gpu_hop_s={"consumer": 4e-3, "workstation": 0.5e-3, "datacenter": 0.5e-3},
        prefill_efficiency=0.35,
        fp32_accumulate=False,
        tensor_parallel=False,
    ),
}

# Bits per weight: (linear layers, input embedding, output head). Why these numbers:
# AWQ/GPTQ g128 store a 16-bit scale and a 4-bit zero per 128 weights -> 4 + 20/128;
# embeddings and lm_head stay fp16. FP8/INT8 checkpoints keep embeddings and head in
# 16 bit. GGUF sizes are derived from measured files (reference §3): Q4_0 blocks are
# 18 bytes per 32 weights (4.5 bpw) with a Q6_K output head; Q4_K_M averages 4.8 bpw on
# linears (Llama-3-8B file 4.58 GiB reproduced); Q8_0 is 34 bytes per 32 weights.
_BPW: dict[Quant, tuple[float, float, float]] = {
    Quant.FP16: (16, 16, 16),
    Quant.BF16: (16, 16, 16),
    Quant.F16: (16, 16, 16),
    Quant.FP8: (8, 16, 16),
    Quant.INT8: (8, 16, 16),
    Quant.AWQ: (4 + 20 / 128, 16, 16),
    Quant.GPTQ: (4 + 20 / 128, 16, 16),
    Quant.Q4_0: (4.5, 4.5, 6.5625),
    Quant.Q4_1: (5.0, 5.0, 6.5625),  # 20 bytes per 32 weights (scale + min)
    Quant.Q4_K_M: (4.8, 4.5, 6.5625),
    Quant.Q8_0: (8.5, 8.5, 8.5),
}


@dataclass(frozen=True)
class SizingInput:
    """Everything about the workload that sizing needs."""

    arch: ModelArch
    quant: Quant
    engine: Engine
    context_tokens: int
    concurrency: int = 1
    prompt_tokens: int = 512
    output_tokens: int = 256
    adapter_rank: int | None = None


@dataclass(frozen=True)
class VramBreakdown:
    """Per-GPU memory in GiB."""

    weights_gib: float
    kv_cache_gib: float
    adapter_gib: float
    activations_gib: float
    overhead_gib: float
    engine_reserve_gib: float
    gpu_total_gib: float  # what CUDA reports as total (driver-visible minus its reservation)
    usable_gib: float  # gpu_total x utilization
    kv_bytes_per_token: float  # per GPU

    @property
    def needed_gib(self) -> float:
        return (
            self.weights_gib
            + self.kv_cache_gib
            + self.adapter_gib
            + self.activations_gib
            + self.overhead_gib
        )

    @property
    def fits(self) -> bool:
        return self.needed_gib <= self.usable_gib

    @property
    def headroom_gib(self) -> float:
        return self.usable_gib - self.needed_gib

    @property
    def kv_capacity_gib(self) -> float:
        """What the engine would give the KV cache: usable minus everything but KV."""
        return self.usable_gib - (self.needed_gib - self.kv_cache_gib)

    @property
    def kv_capacity_tokens(self) -> int:
        return max(int(self.kv_capacity_gib * GIB / self.kv_bytes_per_token), 0)


@dataclass(frozen=True)
class SpeedEstimate:
    decode_tok_s_single: float  # one request alone
    decode_tok_s_per_request: float  # each request at the task's concurrency
    aggregate_tok_s: float  # all requests together
    ttft_s: float
    bound: str  # memory | compute


@dataclass(frozen=True)
class Bills:
    """USD for common usage patterns at a given hourly price."""

    demo_3h_usd: float
    workday_8h_22d_usd: float
    always_on_month_usd: float
    per_second_usd: float  # N requests a month of S GPU-seconds each, billed per second
    per_second_requests: int
    per_second_gpu_s: float


@dataclass(frozen=True)
class CostEstimate:
    price_per_hour_usd: float
    usd_per_1m_output_tokens: float
    usd_per_1000_requests: float
    requests_per_hour: float


@dataclass(frozen=True)
class Sizing:
    """The full answer for one model on one GPU configuration."""

    gpu: GpuSpec
    gpu_count: int
    tensor_parallel: int
    vram: VramBreakdown
    speed: SpeedEstimate | None
    problems: list[str] = field(default_factory=list)  # why it cannot run; empty = feasible

    @property
    def feasible(self) -> bool:
        return not self.problems


def _mem_class(gpu: GpuSpec) -> str:
    if gpu.vendor == "cpu":
        return "cpu"
    return "hbm" if gpu.is_hbm else "gddr"


def weight_bytes(arch: ModelArch, quant: Quant) -> float:
    """Total weight bytes (all GPUs together)."""
    linear_bpw, embed_bpw, head_bpw = _BPW[quant]
    embed = arch.vocab_size * arch.hidden_size
    head = 0 if arch.tie_word_embeddings else embed
    linear = max(arch.params - embed - head, 0.0)
    return (linear * linear_bpw + embed * embed_bpw + head * head_bpw) / 8


def _adapter_bytes(arch: ModelArch, rank: int) -> float:
    """LoRA A and B on q, k, v, o, gate, up, down in every layer, fp16."""
    h, i = arch.hidden_size, arch.intermediate_size
    q = arch.attention_heads * arch.head_dim
    kv = arch.kv_heads * arch.head_dim
    experts = max(arch.num_experts, 1)
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + experts * 3 * (h + i)
    return per_layer * rank * arch.layers * 2


def _kv_bytes_per_element(quant: Quant) -> float:
    return 2.0  # fp16/bf16 KV cache: the default of vLLM, TGI and llama.cpp


def kernel_problem(quant: Quant, engine: Engine, gpu: GpuSpec) -> str | None:
    """Why this quantization cannot run on this GPU with this engine, or None."""
    if gpu.vendor == "cpu":
        if engine is not Engine.LLAMACPP:
            return f"{engine.value} needs a CUDA GPU; only llamacpp runs on a CPU"
        return None
    cc = gpu.compute_capability
    if engine is Engine.LLAMACPP:
        return None  # GGUF kernels run on every CUDA GPU we list
    if cc < 7.0:
        return f"{gpu.name} (sm{cc * 10:.0f}) is below sm70, the minimum for {engine.value}"
    if quant is Quant.BF16 and not gpu.bf16:
        return f"bf16 needs sm80+; {gpu.name} is sm{cc * 10:.0f} (serve fp16 instead)"
    if quant is Quant.AWQ and not gpu.awq:
        return f"AWQ kernels need sm75+; {gpu.name} is sm{cc * 10:.0f}"
    if quant is Quant.AWQ and engine is Engine.TGI and not gpu.marlin:
        return f"TGI runs AWQ through Marlin (sm80+); {gpu.name} is sm{cc * 10:.0f}"
    if quant is Quant.GPTQ and not gpu.gptq:
        return f"GPTQ kernels do not run on {gpu.name}"
    if quant is Quant.FP8 and not gpu.fp8_w8a8:
        return f"FP8 W8A8 needs sm89+; {gpu.name} is sm{cc * 10:.0f}"
    if quant is Quant.INT8 and not gpu.int8_w8a8:
        return f"INT8 W8A8 needs sm75+; {gpu.name} is sm{cc * 10:.0f}"
    return None


def _tensor_parallel(arch: ModelArch, engine: EngineProfile, gpu_count: int) -> int | str:
    """TP degree, or a reason it cannot shard this way."""
    if gpu_count == 1 or not engine.tensor_parallel:
        return 1 if not engine.tensor_parallel else gpu_count
    if gpu_count & (gpu_count - 1) or arch.attention_heads % gpu_count:
        return (
            f"{engine.name} tensor parallelism needs a GPU count that divides the "
            f"{arch.attention_heads} attention heads (1, 2, 4 or 8), not {gpu_count}"
        )
    return gpu_count


def _tensor_peak_tflops(gpu: GpuSpec, quant: Quant, engine: EngineProfile) -> float:
    if quant is Quant.FP8 and gpu.fp8_w8a8 and gpu.fp8_tflops_dense:
        return gpu.fp8_tflops_dense
    if quant is Quant.INT8 and gpu.int8_w8a8 and gpu.int8_tops_dense:
        return gpu.int8_tops_dense
    return gpu.fp16_tflops_dense_fp32acc if engine.fp32_accumulate else gpu.fp16_tflops_dense


def _vram(inp: SizingInput, gpu: GpuSpec, gpu_count: int, tp: int, prof: EngineProfile):
    arch = inp.arch
    shards = gpu_count  # weights and KV are split over every GPU (TP or layer split)
    kv_heads_per_gpu = max(arch.kv_heads / shards, 1) if prof.tensor_parallel else arch.kv_heads
    kv_layers = arch.layers if prof.tensor_parallel else arch.layers / shards
    kv_per_token = 2 * kv_layers * kv_heads_per_gpu * arch.head_dim
    kv_per_token *= _kv_bytes_per_element(inp.quant)
    kv_tokens = inp.context_tokens * inp.concurrency
    chunk = min(prof.prefill_chunk_tokens, inp.context_tokens)
    act_per_token = prof.activation_factor * (arch.intermediate_size / tp + 2 * arch.hidden_size)
    overhead = prof.non_torch_gib + prof.cuda_graph_gib + (prof.nccl_gib if tp > 1 else 0.0)
    total = max(gpu.vram_gib_driver - DRIVER_RESERVED_GIB, 0.0)
    usable = total * prof.gpu_memory_utilization
    return VramBreakdown(
        weights_gib=weight_bytes(arch, inp.quant) / shards / GIB,
        kv_cache_gib=kv_per_token * kv_tokens / GIB,
        adapter_gib=(_adapter_bytes(arch, inp.adapter_rank) / shards / GIB)
        if inp.adapter_rank
        else 0.0,
        activations_gib=act_per_token * 2 * chunk / GIB,
        overhead_gib=overhead,
        engine_reserve_gib=total - usable,
        gpu_total_gib=total,
        usable_gib=usable,
        kv_bytes_per_token=kv_per_token,
    ), kv_per_token


def _speed(
    inp: SizingInput, gpu: GpuSpec, gpu_count: int, tp: int, prof: EngineProfile, kv_tok: float
) -> SpeedEstimate:
    arch = inp.arch
    mem = _mem_class(gpu)
    bw = gpu.mem_bw_gbs * 1e9 * prof.bw_efficiency[mem]
    peak = _tensor_peak_tflops(gpu, inp.quant, prof) * 1e12
    w_total = weight_bytes(arch, inp.quant)
    # llama.cpp's layer split runs GPUs one after another: each token still reads every
    # weight once, at one GPU's bandwidth. Tensor parallel reads 1/tp of them per GPU.
    w_read = w_total / tp if prof.tensor_parallel else w_total
    layer_overhead = prof.layer_overhead_s[mem] * arch.layers
    comm_s = 2 * arch.layers * 15e-6 if tp > 1 else 0.0  # two all-reduces per layer
    if not prof.tensor_parallel and gpu_count > 1:
        comm_s += (gpu_count - 1) * prof.gpu_hop_s.get(gpu.gpu_class, 0.0)
    avg_context = inp.prompt_tokens + inp.output_tokens / 2
    # KV read per step: kv_tok is per GPU already (sharded); a layer split reads it all.
    kv_read = kv_tok * (gpu_count if not prof.tensor_parallel else 1) * avg_context

    def moe_weight_bytes(batch: int) -> float:
        if not arch.num_experts:
            return w_read
        # total = dense + E x expert, active = dense + k x expert. Only routed experts are
        # read; with B tokens in a step, the expected number of distinct experts grows.
        e, k = arch.num_experts, arch.experts_per_token
        expert = (arch.params - arch.active_params) / (e - k)
        dense_share = (arch.params - e * expert) / arch.params
        touched = 1 - (1 - k / e) ** batch
        return w_read * (dense_share + (1 - dense_share) * touched)

    def step(batch: int, amortised_prefill: bool) -> tuple[float, str]:
        mem_s = (moe_weight_bytes(batch) + batch * kv_read) / bw
        flop_tokens = batch * (
            1 + (inp.prompt_tokens / inp.output_tokens if amortised_prefill else 0.0)
        )
        compute_s = 2 * arch.active_params / tp * flop_tokens / (peak * prof.compute_efficiency)
        bound = "compute" if compute_s > mem_s else "memory"
        return max(mem_s, compute_s) + layer_overhead + comm_s, bound

    single_s, _ = step(1, False)
    batch = inp.concurrency
    batch_s, bound = step(batch, batch > 1)
    prefill_s = (
        2 * arch.active_params / tp * inp.prompt_tokens / (peak * prof.prefill_efficiency)
        + w_read / bw
    )
    ttft = prefill_s + batch_s
    return SpeedEstimate(
        decode_tok_s_single=1 / single_s,
        decode_tok_s_per_request=1 / batch_s,
        aggregate_tok_s=batch / batch_s,
        ttft_s=ttft,
        bound=bound,
    )


def estimate(
    inp: SizingInput, gpu: GpuSpec, gpu_count: int = 1, profile: EngineProfile | None = None
) -> Sizing:
    """Size `inp` on `gpu_count` x `gpu`: VRAM per GPU, speed, and every reason it can't run.

    `profile` replaces the engine's default profile (e.g. another gpu_memory_utilization).
    """
    prof = profile or ENGINE_PROFILES[inp.engine]
    problems: list[str] = []
    tp_or_reason = _tensor_parallel(inp.arch, prof, gpu_count)
    tp = tp_or_reason if isinstance(tp_or_reason, int) else 1
    if isinstance(tp_or_reason, str):
        problems.append(tp_or_reason)
    kernel = kernel_problem(inp.quant, inp.engine, gpu)
    if kernel:
        problems.append(kernel)
    vram, kv_tok = _vram(inp, gpu, gpu_count, tp, prof)
    if not vram.fits:
        problems.append(
            f"needs {vram.needed_gib:.1f} GiB per GPU but {gpu.name} gives "
            f"{vram.usable_gib:.1f} GiB usable"
        )
    if inp.context_tokens > inp.arch.max_position_embeddings:
        problems.append(
            f"context {inp.context_tokens} exceeds the model's "
            f"{inp.arch.max_position_embeddings} positions"
        )
    speed = _speed(inp, gpu, gpu_count, tp, prof, kv_tok)
    return Sizing(gpu, gpu_count, tp, vram, speed, problems)


def cost_for(price_per_hour_usd: float, speed: SpeedEstimate, output_tokens: int) -> CostEstimate:
    """$/1M output tokens and $/1000 requests at the planned (fully used) load."""
    tokens_per_hour = speed.aggregate_tok_s * 3600
    requests_per_hour = tokens_per_hour / output_tokens
    per_1m = price_per_hour_usd / tokens_per_hour * 1e6 if tokens_per_hour else math.inf
    per_1k = price_per_hour_usd / requests_per_hour * 1000 if requests_per_hour else math.inf
    return CostEstimate(price_per_hour_usd, per_1m, per_1k, requests_per_hour)


def bills_for(
    price_per_hour_usd: float, *, requests_per_month: int = 3000, gpu_s_per_request: float = 8.5
) -> Bills:
    """Bills for a 3-hour demo, 8 h x 22 days, 24/7 (730 h), and per-second billing."""
    per_second = price_per_hour_usd / 3600 * requests_per_month * gpu_s_per_request
    return Bills(
        demo_3h_usd=price_per_hour_usd * 3,
        workday_8h_22d_usd=price_per_hour_usd * 8 * 22,
        always_on_month_usd=price_per_hour_usd * HOURS_PER_MONTH,
        per_second_usd=per_second,
        per_second_requests=requests_per_month,
        per_second_gpu_s=gpu_s_per_request,
    )
