"""GPU facts and GPU-name normalisation across providers.

The facts live in `data/gpus.csv`: one row per CUDA GPU we can serve on (compute
capability 7.0 or newer), built from `shared/reference/gpu_specs.csv` plus a few NVIDIA
datasheet extras. Every row names its source. Where the CSV leaves a compute figure
empty, the loader fills an estimate and lists the field in `GpuSpec.estimated_fields`,
so callers can say "estimated" instead of presenting a guess as a fact.

Providers spell the same GPU many ways ("RTX 4090", "RTX_4090", "NVIDIA GeForce RTX
4090"; "A100-80GB" that is SXM4 on GCP but PCIe on RunPod). `normalize_gpu_name` maps
them to one canonical name, using the per-GPU memory and a free-text hint (cloud name,
instance type) where the name alone is ambiguous. Accelerators we know but cannot serve
on (TPUs, Gaudi, AMD, FPGAs, pre-Volta NVIDIA) are named by `classify_accelerator`, so
callers can tell "not a GPU for us" from "unknown name".
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from orchestrator.errors import BadInputError

__all__ = ["GpuSpec", "all_gpus", "classify_accelerator", "get_gpu", "normalize_gpu_name"]

_CSV_PATH = Path(__file__).parent / "data" / "gpus.csv"
_KERNEL_COLUMNS = ("bf16", "awq", "gptq", "marlin", "fp8_w8a8", "int8_w8a8")


@dataclass(frozen=True)
class GpuSpec:
    """Facts about one GPU model, per GPU. TFLOPS/TOPS are dense (not 2:4-sparse) peaks."""

    name: str
    vendor: str
    architecture: str
    compute_capability: float
    gpu_class: str  # consumer | workstation | datacenter
    memory_type: str  # GDDR6, GDDR6X, GDDR7, HBM2, HBM2e, HBM3, HBM3e
    vram_gb_nominal: float
    vram_mib_driver: int  # what nvidia-smi reports: usable memory
    mem_bw_gbs: float
    fp16_tflops_dense: float  # FP16 tensor math with FP16 accumulate
    fp16_tflops_dense_fp32acc: float  # FP32 accumulate: what vLLM/PyTorch fp16/bf16 GEMMs get
    fp8_tflops_dense: float | None
    int8_tops_dense: float | None
    tdp_w: float | None
    bf16: bool
    awq: bool
    gptq: bool
    marlin: bool
    fp8_w8a8: bool
    int8_w8a8: bool
    confidence: str  # high | medium | low
    estimated_fields: tuple[str, ...]
    notes: str
    source: str

    @property
    def vram_gib_driver(self) -> float:
        """Usable VRAM in GiB, as the driver reports it."""
        return self.vram_mib_driver / 1024

    @property
    def is_hbm(self) -> bool:
        return self.memory_type.upper().startswith("HBM")


# ---------------------------------------------------------------------------- loading


def _num(text: str) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def _estimate_fp16(row: dict[str, str], rows: list[dict[str, str]]) -> float:
    """Dense FP16 for a row the sources leave blank: scale a same-compute-capability sibling.

    Tensor throughput per SM per clock is fixed within a compute capability, so SMs x boost
    clock is the right scale; prefer a sibling of the same class with a similar SM count.
    Without SM data, fall back to the bandwidth ratio (cruder).
    """
    siblings = [
        r
        for r in rows
        if r["compute_capability"] == row["compute_capability"]
        and _num(r["fp16_tflops_dense"])
        and "fp16_tflops_dense" not in r["estimated_fields"]
    ]
    if not siblings:
        raise ValueError(f"gpus.csv: no sibling to estimate fp16 for {row['name']}")
    sm, clock = _num(row["sm_count"]), _num(row["boost_clock_mhz"])
    scalable = [r for r in siblings if _num(r["sm_count"]) and _num(r["boost_clock_mhz"])]
    if sm and clock and scalable:
        sib = min(
            scalable,
            key=lambda r: (r["gpu_class"] != row["gpu_class"], abs(float(r["sm_count"]) - sm)),
        )
        scale = sm * clock / (float(sib["sm_count"]) * float(sib["boost_clock_mhz"]))
    else:
        sib = min(siblings, key=lambda r: r["gpu_class"] != row["gpu_class"])
        scale = float(row["mem_bw_gbs"]) / float(sib["mem_bw_gbs"])
    return round(float(sib["fp16_tflops_dense"]) * scale, 1)


def _build(row: dict[str, str], rows: list[dict[str, str]]) -> GpuSpec:
    estimated = [f for f in row["estimated_fields"].split(";") if f]
    if row["vram_mib_driver_estimated"] == "true":
        estimated.append("vram_mib_driver")
    cc = float(row["compute_capability"])

    fp16 = _num(row["fp16_tflops_dense"])
    if fp16 is None:
        fp16 = _estimate_fp16(row, rows)
        estimated.append("fp16_tflops_dense")
    fp32acc = _num(row["fp16_tflops_dense_fp32acc"])
    if fp32acc is None:
        # GeForce cards accumulate in FP32 at half the FP16-accumulate rate; pro and
        # datacenter parts at full rate (reference README §2, caveat 2).
        fp32acc = round(fp16 / 2, 2) if row["gpu_class"] == "consumer" else fp16
        estimated.append("fp16_tflops_dense_fp32acc")
    # Where the hardware has them, FP8 (sm89+) and INT8 (sm75+) tensor rates are twice the
    # FP16-accumulate rate on every part in the reference (L4 121/242, RTX 4090 330/660).
    fp8 = _num(row["fp8_tflops_dense"])
    if fp8 is None and cc >= 8.9:
        fp8 = round(2 * fp16, 1)
        estimated.append("fp8_tflops_dense")
    int8 = _num(row["int8_tops_dense"])
    if int8 is None and cc >= 7.5:
        int8 = round(2 * fp16, 1)
        estimated.append("int8_tops_dense")

    return GpuSpec(
        name=row["name"],
        vendor=row["vendor"],
        architecture=row["architecture"],
        compute_capability=cc,
        gpu_class=row["gpu_class"],
        memory_type=row["memory_type"],
        vram_gb_nominal=float(row["vram_gb_nominal"]),
        vram_mib_driver=int(float(row["vram_mib_driver"])),
        mem_bw_gbs=float(row["mem_bw_gbs"]),
        fp16_tflops_dense=fp16,
        fp16_tflops_dense_fp32acc=fp32acc,
        fp8_tflops_dense=fp8,
        int8_tops_dense=int8,
        tdp_w=_num(row["tdp_w"]),
        **{col: row[col].strip().lower() == "yes" for col in _KERNEL_COLUMNS},
        confidence=row["confidence"],
        estimated_fields=tuple(dict.fromkeys(estimated)),
        notes=row["notes"],
        source=row["source"],
    )


@functools.cache
def _table() -> dict[str, GpuSpec]:
    with _CSV_PATH.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    specs = sorted((_build(r, rows) for r in rows), key=lambda s: s.name)
    return {spec.name: spec for spec in specs}


def all_gpus() -> list[GpuSpec]:
    """Every GPU in the table, sorted by canonical name."""
    return list(_table().values())


def get_gpu(name: str) -> GpuSpec:
    """The spec for a canonical name or any alias `normalize_gpu_name` understands.

    Raises BadInputError (exit code 2) naming the known GPUs when the name is unknown.
    """
    table = _table()
    canonical = name if name in table else normalize_gpu_name(name)
    if canonical is None:
        reason = classify_accelerator(name)
        why = f" ({reason})" if reason else ""
        raise BadInputError("gpu", f"unknown GPU '{name}'{why}; known: {', '.join(table)}")
    return table[canonical]


# ---------------------------------------------------------------------- normalisation

# Words that carry no identity: brand prefixes, marketing suffixes, Vast's "Q" (Quadro).
_FILLER = frozenset(
    {"NVIDIA", "GEFORCE", "TESLA", "QUADRO", "Q", "GENERATION", "EDITION", "BLACKWELL"}
    | {"SERVER", "WS", "WORKSTATION", "MAXQ", "HBM2", "HBM2E", "HBM3E"}
)
# Form-factor words. NVLINK/MEGA mean SXM boards (HGX A100/H100 with NVLink, GCP a3-mega);
# "HBM3" marks the SXM H100: nvidia-smi calls it "NVIDIA H100 80GB HBM3" (PCIe is HBM2e).
_FORMS = {
    "PCIE": "PCIE", "PCI": "PCIE", "SXM": "SXM", "SXM2": "SXM", "SXM4": "SXM", "SXM5": "SXM",
    "NVL": "NVL", "NVLINK": "SXM", "MEGA": "SXM", "HBM3": "SXM",
}  # fmt: skip
_MEM_TOKEN = re.compile(r"(\d+)(?:GB|G|GI|GIB)")
# Azure's NC-series sizes carry PCIe cards (NCv3: V100 PCIe, NC A100 v4: A100 80GB PCIe,
# NC(C)ads H100 v5: H100 NVL); its ND-series carry SXM boards, the default anyway.
_AZURE_NC = re.compile(r"(?:^|[^A-Z0-9])NCC?\d+[A-Z]*(?:[^A-Z0-9]|$)")


def _parse(text: str) -> tuple[str, int | None, str | None]:
    """Split a name into (model key, memory GB it names, form factor it names)."""
    parts: list[str] = []
    mem: int | None = None
    forms: set[str] = set()
    for tok in re.split(r"[^A-Z0-9]+", text.upper().replace("MAX-Q", "MAXQ")):
        if not tok or tok in _FILLER:
            continue
        if m := _MEM_TOKEN.fullmatch(tok):
            mem = int(m[1])
        elif tok in _FORMS:
            forms.add(_FORMS[tok])
        else:
            parts.append(tok)
    # NVL wins over PCIe: Cudo's "h100-nvl-pcie" is the NVL card (itself a PCIe card).
    form = next((f for f in ("NVL", "SXM", "PCIE") if f in forms), None)
    key = re.sub(r"^(NVIDIA|GEFORCE|TESLA|QUADRO)+", "", "".join(parts))
    return key, mem, form


class _Ctx(NamedTuple):
    mem: int | None  # GB named in the GPU name itself
    form: str | None  # form factor named in the GPU name itself
    vram_gib: float | None  # per-GPU memory reported by the provider
    hint_mem: int | None
    hint_form: str | None
    runpod: bool
    azure_nc: bool

    def mem_gb(self, choices: tuple[int, ...], default: int) -> int:
        """The memory variant: from the name, else the reported VRAM, else the hint."""
        if self.mem in choices:
            return self.mem
        # Only trust reported VRAM in a plausible band: some catalogs put host RAM or
        # all GPUs' memory in that field (Nebius lists 200 GiB for one H100).
        if self.vram_gib and 0.8 * min(choices) <= self.vram_gib <= 1.1 * max(choices):
            return min(choices, key=lambda gb: abs(gb - self.vram_gib))
        if self.hint_mem in choices:
            return self.hint_mem
        return default


def _a100(c: _Ctx) -> str:
    # RunPod only rents 80 GB A100s and calls the PCIe one plain "A100-80GB".
    gb = c.mem_gb((40, 80), 80 if c.runpod else 40)
    form = c.form or c.hint_form or ("PCIE" if c.runpod or c.azure_nc else "SXM")
    # Plain "A100" defaults to SXM4: AWS p4d, GCP a2 and Lambda all rent SXM4 boards.
    return f"A100-PCIE-{gb}GB" if form == "PCIE" else f"A100-SXM4-{gb}GB"


def _h100(c: _Ctx) -> str:
    form = c.form
    # The NVL card has 94 GB; Vast and Cudo report 95830 / 96256 MiB for it.
    if form is None and (c.mem in (94, 96) or (c.vram_gib and 88 <= c.vram_gib <= 100)):
        form = "NVL"
    if form is None and c.azure_nc:
        form = "NVL"
    # Plain "H100" defaults to SXM (AWS p5, GCP a3, Azure ND, Lambda); RunPod's plain
    # "H100" is its PCIe card (it lists "H100-SXM" and "H100-NVL" separately).
    form = form or c.hint_form or ("PCIE" if c.runpod else "SXM")
    return {"PCIE": "H100-PCIE", "NVL": "H100-NVL"}.get(form, "H100-SXM")


def _h200(c: _Ctx) -> str:
    # Both carry 141 GB, so only the name or hint tells NVL from SXM; SXM is what clouds rent.
    return "H200-NVL" if "NVL" in (c.form, c.hint_form) else "H200-SXM"


def _v100(c: _Ctx) -> str:
    gb = c.mem_gb((16, 32), 16)
    # Plain "V100" defaults to SXM2 (AWS p3, GCP, Lambda); Azure NCv3 is PCIe (hint).
    form = c.form or c.hint_form or ("PCIE" if c.azure_nc else "SXM")
    return f"V100-PCIE-{gb}GB" if form == "PCIE" else f"V100-SXM2-{gb}GB"


def _rtx6000(c: _Ctx) -> str:
    # Bare "RTX 6000" is the Turing Quadro (Lambda's "RTX6000", 24 GB); a 48 GB one is Ada.
    return "RTX6000-Ada" if c.mem_gb((24, 48), 24) == 48 else "QuadroRTX6000"


def _rtx4060ti(c: _Ctx) -> str:
    # Sold with 8 or 16 GB under one name; assume the smaller one unless told otherwise.
    return f"RTX4060Ti-{c.mem_gb((8, 16), 8)}GB"


_FAMILIES = {
    "A100": _a100,
    "A800": _a100,  # China-market A100: same compute and memory, NVLink cut to 400 GB/s
    "H100": _h100,
    "H200": _h200,
    "V100": _v100,
    "RTX6000": _rtx6000,
    "RTX4060TI": _rtx4060ti,
}

# Model keys (see _parse) that differ from a canonical name's own key. Canonical names
# map from their own keys automatically ("RTX 3080 Ti" -> "RTX3080Ti"): see _by_key.
_ALIASES = {
    "T4G": "T4",  # AWS g5g: the same T4, attached to a Graviton host
    "A100X": "A100-PCIE-80GB",  # A100 80GB PCIe fused with a BlueField-2 DPU
    "A4000": "RTXA4000",
    "A4500": "RTXA4500",
    "A5000": "RTXA5000",
    "A6000": "RTXA6000",
    "RTX3090TI": "RTX3090",  # no row: 1008 vs 936 GB/s, same 24 GB; under-promises
    "RTX4070STI": "RTX4070TiSuper",  # Vast spells it "RTX 4070S Ti"
    "RTX4070TIS": "RTX4070TiSuper",
    "RTX4080SUPER": "RTX4080",  # no row: 736 vs 717 GB/s, same 16 GB; under-promises
    "RTX4080S": "RTX4080",
    "RTX4090D": "RTX4090",  # China-market 4090: same memory, ~11% fewer SMs
    "TITANRTX": "QuadroRTX6000",  # same full TU102, 24 GB, 672 GB/s
    # RTX PRO 6000 Server, Workstation and Max-Q editions share 96 GB / 1792 GB/s; only
    # power (600 or 300 W) and so sustained compute differ.
}


@functools.cache
def _by_key() -> dict[str, str]:
    """Model key -> canonical name: the explicit aliases plus every canonical name's own key."""
    own = {_parse(name)[0]: name for name in _table()}
    return {**{k: v for k, v in own.items() if k not in _FAMILIES}, **_ALIASES}


@functools.cache
def _canonical_by_upper() -> dict[str, str]:
    return {name.upper(): name for name in _table()}


@functools.lru_cache(maxsize=4096)
def normalize_gpu_name(raw: str, *, vram_mib: float | None = None, hint: str = "") -> str | None:
    """The canonical name for a provider's GPU name, or None when the name is unknown.

    `vram_mib` is the memory of ONE GPU as the provider reports it (divide a catalog's
    total by the GPU count); it separates A100 40/80 GB, H100 NVL (94 GB) from the 80 GB
    parts, and so on. `hint` is free text such as the cloud name and instance type
    ("runpod", "Standard_NC40ads_H100_v5", "gpu_1x_h100_pcie"); it decides the form factor
    when the name does not. Callers must report a None, never drop the offer silently;
    `classify_accelerator` says whether the name is a known non-GPU.
    """
    if not raw or not raw.strip():
        return None
    exact = _canonical_by_upper().get(raw.strip().upper())
    if exact:
        return exact
    key, mem, form = _parse(raw)
    if key in _by_key():
        return _by_key()[key]
    family = _FAMILIES.get(key)
    if family is None:
        return None
    _, hint_mem, hint_form = _parse(hint)
    ctx = _Ctx(
        mem=mem,
        form=form,
        vram_gib=vram_mib / 1024 if vram_mib else None,
        hint_mem=hint_mem,
        hint_form=hint_form,
        runpod="RUNPOD" in hint.upper(),
        azure_nc=bool(_AZURE_NC.search(hint.upper())),
    )
    return family(ctx)


# Known accelerators that are not CUDA GPUs we can serve on, with the reason.
_NOT_SERVABLE = [
    (re.compile(r"\bTPU"), "TPU: Google TPU, not an NVIDIA GPU"),
    (re.compile(r"GAUDI|\bHL ?\d{3}\b"), "Gaudi: Intel Habana accelerator, not an NVIDIA GPU"),
    (re.compile(r"INFERENTIA|TRAINIUM"), "AWS Inferentia/Trainium (Neuron): not an NVIDIA GPU"),
    (re.compile(r"QUALCOMM|\bAI ?100\b"), "Qualcomm Cloud AI 100: not an NVIDIA GPU"),
    (
        re.compile(r"\bAMD\b|INSTINCT|RADEON|\bMI ?\d{2,3}"),
        "AMD GPU: needs ROCm builds of the engines, not CUDA",
    ),
    (re.compile(r"VIRTEX|ULTRASCALE|\bVU\d+P\b|FPGA"), "FPGA (Xilinx): not a GPU"),
]
# Kepler/Maxwell/Pascal model keys: K80, M60, M4000, P4, P100, P4000, GTX 1080 Ti, Titan X.
_PRE_VOLTA = re.compile(r"(K\d{2,3}|M\d{2,4}|P\d{1,4}|GTX\d+\w*|TITANXP?)")


def classify_accelerator(raw: str) -> str | None:
    """A one-line reason when `raw` names a known accelerator we cannot serve on, else None.

    Covers TPU slices, Gaudi, Inferentia/Trainium, Qualcomm AI 100, AMD Instinct/Radeon,
    FPGAs, and NVIDIA GPUs older than Volta (vLLM and TGI need compute capability 7.0).
    """
    text = re.sub(r"[^A-Z0-9]+", " ", (raw or "").upper()).strip()
    if not text:
        return None
    for pattern, reason in _NOT_SERVABLE:
        if pattern.search(text):
            return reason
    key, _, _ = _parse(raw)
    if _PRE_VOLTA.fullmatch(key):
        return "pre-Volta NVIDIA GPU (compute capability < 7.0): below what vLLM and TGI support"
    if not key and "NVIDIA" in text:
        return "vendor name only: no GPU model given"
    return None
