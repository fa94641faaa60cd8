"""GPU facts table and provider GPU-name normalisation (orchestrator/hardware.py)."""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import hardware
from orchestrator.errors import EXIT_BAD_INPUT, BadInputError
from orchestrator.hardware import (
    all_gpus,
    classify_accelerator,
    get_gpu,
    normalize_gpu_name,
)

REPO = Path(__file__).resolve().parents[2]
CATALOG_DIR = REPO / "tests" / "fixtures" / "catalog"
GPUS_CSV = REPO / "orchestrator" / "data" / "gpus.csv"
NAMES = {g.name for g in all_gpus()}
SPEC_FIELDS = {f.name for f in dataclasses.fields(hardware.GpuSpec)}
EXTRA_SOURCE = "NVIDIA datasheet (not in shared/reference)"


# ------------------------------------------------------------------------------ table


def test_table_has_at_least_30_gpus_sorted_and_unique():
    names = [g.name for g in all_gpus()]
    assert len(names) >= 30
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_all_37_reference_rows_present_and_extras_marked():
    gpus = all_gpus()
    assert sum(g.source.startswith("shared/reference/gpu_specs.csv") for g in gpus) == 37
    for g in gpus:
        if not g.source.startswith("shared/reference"):
            assert g.source == EXTRA_SOURCE
            assert g.confidence in ("low", "medium")


@pytest.mark.parametrize("gpu", all_gpus(), ids=lambda g: g.name)
def test_every_row_is_positive_and_consistent(gpu):
    assert gpu.vendor == "NVIDIA"
    assert gpu.compute_capability >= 7.0
    assert gpu.gpu_class in ("consumer", "workstation", "datacenter")
    assert gpu.confidence in ("high", "medium", "low")
    assert gpu.vram_gb_nominal > 0
    # Usable memory is a little under nominal, never above it.
    assert 0.9 * gpu.vram_gb_nominal * 1024 <= gpu.vram_mib_driver <= gpu.vram_gb_nominal * 1024
    assert gpu.vram_gib_driver == pytest.approx(gpu.vram_mib_driver / 1024)
    assert gpu.mem_bw_gbs > 0
    assert gpu.fp16_tflops_dense > 0
    assert 0 < gpu.fp16_tflops_dense_fp32acc <= gpu.fp16_tflops_dense
    for optional in (gpu.fp8_tflops_dense, gpu.int8_tops_dense, gpu.tdp_w):
        assert optional is None or optional > 0
    assert (gpu.fp8_tflops_dense is not None) == (gpu.compute_capability >= 8.9)
    assert set(gpu.estimated_fields) <= SPEC_FIELDS
    assert gpu.is_hbm == gpu.memory_type.startswith("HBM")
    assert gpu.source


def test_blank_csv_values_are_filled_and_flagged_estimated():
    with GPUS_CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        gpu = get_gpu(row["name"])
        for field in ("fp16_tflops_dense", "fp16_tflops_dense_fp32acc"):
            if not row[field]:
                assert field in gpu.estimated_fields, (gpu.name, field)
        if row["vram_mib_driver_estimated"] == "true":
            assert "vram_mib_driver" in gpu.estimated_fields


def test_known_estimates():
    # n/f in the reference -> estimated by the loader
    assert "fp16_tflops_dense" in get_gpu("RTX3060").estimated_fields
    assert "fp16_tflops_dense_fp32acc" in get_gpu("RTXA4000").estimated_fields
    assert {"mem_bw_gbs", "fp16_tflops_dense"} <= set(get_gpu("RTX4000-Ada").estimated_fields)
    assert get_gpu("RTX4000-Ada").mem_bw_gbs == 360
    # GeForce FP32-accumulate runs at half rate
    assert get_gpu("RTX5090").fp16_tflops_dense_fp32acc == pytest.approx(419 / 2)
    # facts from the reference are not flagged
    assert get_gpu("RTX4090").estimated_fields == ()
    assert get_gpu("H100-SXM").estimated_fields == ()
    # SM x clock scaling lands near the Ampere whitepaper figures (3080: 119, 3070: 81.3)
    assert get_gpu("RTX3080").fp16_tflops_dense == pytest.approx(119, rel=0.02)
    assert get_gpu("RTX3070").fp16_tflops_dense == pytest.approx(81.3, rel=0.02)


def test_reference_choices():
    assert get_gpu("T4").mem_bw_gbs == 300
    assert get_gpu("H100-SXM").mem_bw_gbs == 3350
    assert get_gpu("RTX4090").fp16_tflops_dense == 330.3
    assert get_gpu("RTX4090").fp16_tflops_dense_fp32acc == 165.2
    assert get_gpu("RTX4090").vram_mib_driver == 24564
    assert get_gpu("A10").vram_mib_driver == 23028
    assert get_gpu("H100-NVL").vram_gb_nominal == 94
    assert get_gpu("H100-SXM").is_hbm and not get_gpu("L40S").is_hbm


# ------------------------------------------------------------------ kernel support


def test_kernel_columns_follow_compute_capability_rules():
    for g in all_gpus():
        cc = g.compute_capability
        assert g.bf16 == (cc >= 8.0), g.name
        assert g.awq == (cc >= 7.5), g.name
        assert g.gptq, g.name
        assert g.marlin == (cc >= 8.0), g.name
        assert g.fp8_w8a8 == (cc >= 8.9), g.name
        assert g.int8_w8a8 == (cc >= 7.5), g.name
        if g.architecture == "Blackwell":
            assert "check engine release notes" in g.notes


def test_kernel_facts():
    t4, v100, rtx3090 = get_gpu("T4"), get_gpu("V100"), get_gpu("RTX3090")
    assert not t4.bf16 and not t4.marlin and t4.awq
    assert not v100.awq and not v100.bf16
    assert not rtx3090.fp8_w8a8 and rtx3090.marlin
    for name in ("L4", "RTX4090", "H100"):
        assert get_gpu(name).fp8_w8a8
        assert get_gpu(name).fp8_tflops_dense


# ------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("name", sorted(NAMES))
def test_canonical_names_round_trip(name):
    assert normalize_gpu_name(name) == name
    assert normalize_gpu_name(name.lower()) == name
    assert classify_accelerator(name) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("RTX 4090", "RTX4090"),
        ("RTX_4090", "RTX4090"),
        ("RTX4090", "RTX4090"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("A100-80GB", "A100-SXM4-80GB"),
        ("A100 SXM4", "A100-SXM4-40GB"),
        ("H100 NVL", "H100-NVL"),
        # defaults for ambiguous plain names
        ("A100", "A100-SXM4-40GB"),
        ("H100", "H100-SXM"),
        ("H100-MEGA", "H100-SXM"),
        ("H100-NVLINK", "H100-SXM"),
        ("V100", "V100-SXM2-16GB"),
        ("V100-32GB", "V100-SXM2-32GB"),
        ("V100-32G", "V100-SXM2-32GB"),
        ("A100-80G", "A100-SXM4-80GB"),
        ("T4g", "T4"),
        ("RTX6000", "QuadroRTX6000"),
        ("RTXPro6000", "RTXPRO6000"),
        ("A6000", "RTXA6000"),
        ("RTX2000Ada", "RTX2000-Ada"),
        ("NVIDIA-H100-80GB-HBM3", "H100-SXM"),
        ("NVIDIA-GeForce-RTX-4090", "RTX4090"),
        ("NVIDIA GH200 480GB", "GH200"),
    ],
)
def test_examples_and_defaults(raw, expected):
    assert normalize_gpu_name(raw) == expected


VAST_GPU_NAMES = [
    ("RTX 4090", "RTX4090"),
    ("RTX 3090", "RTX3090"),
    ("RTX 5090", "RTX5090"),
    ("A100 SXM4", "A100-SXM4-40GB"),
    ("A100 PCIE", "A100-PCIE-40GB"),
    ("A100X", "A100-PCIE-80GB"),
    ("H100 SXM", "H100-SXM"),
    ("H100 PCIE", "H100-PCIE"),
    ("H100 NVL", "H100-NVL"),
    ("H200", "H200-SXM"),
    ("H200 NVL", "H200-NVL"),
    ("RTX A6000", "RTXA6000"),
    ("RTX 6000Ada", "RTX6000-Ada"),
    ("RTX A5000", "RTXA5000"),
    ("RTX A4000", "RTXA4000"),
    ("L40S", "L40S"),
    ("L40", "L40"),
    ("L4", "L4"),
    ("A40", "A40"),
    ("A10", "A10"),
    ("Tesla T4", "T4"),
    ("Tesla V100", "V100-SXM2-16GB"),
    ("Q RTX 8000", "QuadroRTX8000"),
    ("Q RTX 6000", "QuadroRTX6000"),
    ("RTX 4080S", "RTX4080"),
    ("RTX 4070S Ti", "RTX4070TiSuper"),
    ("RTX 4070 Ti SUPER", "RTX4070TiSuper"),
    ("RTX 3060", "RTX3060"),
    ("RTX 3080 Ti", "RTX3080Ti"),
    ("RTX 4060 Ti", "RTX4060Ti-8GB"),
    ("Titan RTX", "QuadroRTX6000"),
    ("GH200 SXM", "GH200"),
    ("B200", "B200"),
    ("RTX PRO 6000 WS", "RTXPRO6000"),
    ("RTX 4090 D", "RTX4090"),
]


@pytest.mark.parametrize(("raw", "expected"), VAST_GPU_NAMES)
def test_vast_gpu_names(raw, expected):
    assert normalize_gpu_name(raw, hint="vast") == expected


RUNPOD_GPU_TYPES = [
    ("NVIDIA GeForce RTX 4090", "RTX 4090", "RTX4090"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", "A100-PCIE-80GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", "A100-SXM4-80GB"),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", "H100-SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe", "H100-PCIE"),
    ("NVIDIA H100 NVL", "H100 NVL", "H100-NVL"),
    ("NVIDIA H200", "H200 SXM", "H200-SXM"),
    ("NVIDIA RTX A6000", "RTX A6000", "RTXA6000"),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", "RTX6000-Ada"),
    ("NVIDIA RTX 4000 Ada Generation", "RTX 4000 Ada", "RTX4000-Ada"),
    ("NVIDIA RTX 2000 Ada Generation", "RTX 2000 Ada", "RTX2000-Ada"),
    ("NVIDIA L40S", "L40S", "L40S"),
    ("NVIDIA L40", "L40", "L40"),
    ("NVIDIA L4", "L4", "L4"),
    ("NVIDIA RTX A5000", "RTX A5000", "RTXA5000"),
    ("NVIDIA RTX A4000", "RTX A4000", "RTXA4000"),
    ("NVIDIA RTX A4500", "RTX A4500", "RTXA4500"),
    ("NVIDIA A40", "A40", "A40"),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", "RTX3090"),
    ("NVIDIA GeForce RTX 3090 Ti", "RTX 3090 Ti", "RTX3090"),
    ("NVIDIA GeForce RTX 4080 SUPER", "RTX 4080 SUPER", "RTX4080"),
    ("NVIDIA GeForce RTX 5090", "RTX 5090", "RTX5090"),
    ("NVIDIA B200", "B200", "B200"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX PRO 6000", "RTXPRO6000"),
    ("Tesla V100-SXM2-16GB", "V100 SXM2", "V100-SXM2-16GB"),
    ("Tesla V100-SXM2-32GB", "V100 SXM2 32GB", "V100-SXM2-32GB"),
]


@pytest.mark.parametrize(("gpu_id", "display", "expected"), RUNPOD_GPU_TYPES)
def test_runpod_gpu_types(gpu_id, display, expected):
    assert normalize_gpu_name(gpu_id, hint="runpod") == expected
    assert normalize_gpu_name(display, hint="runpod") == expected
    # the id is a full nvidia-smi name: no hint needed
    assert normalize_gpu_name(gpu_id) == expected


def test_runpod_amd_is_classified_not_normalised():
    for raw in ("AMD Instinct MI300X OAM", "MI300X"):
        assert normalize_gpu_name(raw, hint="runpod") is None
        assert "AMD" in classify_accelerator(raw)


@pytest.mark.parametrize(
    ("raw", "vram_mib", "hint", "expected"),
    [
        # memory picks the variant
        ("A100", 81920, "", "A100-SXM4-80GB"),
        ("A100", 40960, "gcp", "A100-SXM4-40GB"),
        ("A100 PCIE", 81920, "vast", "A100-PCIE-80GB"),
        ("H100", 95830, "vast", "H100-NVL"),
        ("H100", 96256, "", "H100-NVL"),
        ("H100", 81559, "vast", "H100-SXM"),
        ("V100", 32768, "", "V100-SXM2-32GB"),
        ("RTX 6000", 49140, "", "RTX6000-Ada"),
        ("RTX6000", 24576, "lambda gpu_1x_rtx6000", "QuadroRTX6000"),
        ("RTX 4060 Ti", 16380, "vast", "RTX4060Ti-16GB"),
        ("A800", 81920, "cudo", "A100-SXM4-80GB"),
        # implausible memory (Nebius puts 200 GiB per H100) is ignored
        ("H100", 204800, "nebius gpu-h100-sxm_1gpu-16vcpu-200gb", "H100-SXM"),
        ("A100", 10240, "", "A100-SXM4-40GB"),
        # the hint picks the form factor
        ("H100", None, "cudo epyc-genoa-h100-nvl-pcie_1x2v4gb", "H100-NVL"),
        ("H100", None, "lambda gpu_1x_h100_pcie", "H100-PCIE"),
        ("H100", None, "lambda gpu_8x_h100_sxm5", "H100-SXM"),
        ("H100", None, "runpod", "H100-PCIE"),
        ("H100", None, "azure Standard_NC40ads_H100_v5", "H100-NVL"),
        ("H100", None, "azure Standard_ND96isr_H100_v5", "H100-SXM"),
        ("A100-80GB", None, "runpod", "A100-PCIE-80GB"),
        ("A100-80GB-SXM", None, "runpod", "A100-SXM4-80GB"),
        ("A100", None, "runpod", "A100-PCIE-80GB"),
        ("A100", None, "cudo epyc-genoa-a100-pcie_1x2v4gb", "A100-PCIE-40GB"),
        ("A100", 81920, "intel-ice-lake-a100-pci", "A100-PCIE-80GB"),
        ("A100", 81920, "A100_NVLINK_80GB", "A100-SXM4-80GB"),
        ("A100", None, "primeintellect NVIDIA A100 80GB PCIe", "A100-PCIE-80GB"),
        ("A100-80GB", None, "azure Standard_NC24ads_A100_v4", "A100-PCIE-80GB"),
        ("A100-80GB", None, "azure Standard_ND96amsr_A100_v4", "A100-SXM4-80GB"),
        ("A100-80GB", None, "gcp a2-ultragpu-1g", "A100-SXM4-80GB"),
        ("V100", None, "azure Standard_NC6s_v3", "V100-PCIE-16GB"),
        ("V100-32GB", None, "aws p3dn.24xlarge", "V100-SXM2-32GB"),
        ("H200", None, "vast H200 NVL", "H200-NVL"),
        ("H200", 143771, "vast", "H200-SXM"),
    ],
)
def test_vram_and_hint_disambiguation(raw, vram_mib, hint, expected):
    assert normalize_gpu_name(raw, vram_mib=vram_mib, hint=hint) == expected


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("tpu-v5litepod-8", "TPU"),
        ("tpu-v2-512", "TPU"),
        ("Gaudi HL-205", "Gaudi"),
        ("Inferentia2", "Inferentia"),
        ("Trainium", "Trainium"),
        ("Qualcomm AI100", "Qualcomm"),
        ("Radeon Pro V520", "AMD"),
        ("Radeon MI25", "AMD"),
        ("Virtex UltraScale+ (VU47P)", "FPGA"),
        ("K80", "pre-Volta"),
        ("M60", "pre-Volta"),
        ("P4", "pre-Volta"),
        ("P100", "pre-Volta"),
        ("Quadro P4000", "pre-Volta"),
        ("M4000", "pre-Volta"),
        ("GTX 1080 Ti", "pre-Volta"),
        ("NVIDIA", "vendor name only"),
    ],
)
def test_classify_known_non_gpus(raw, needle):
    assert normalize_gpu_name(raw) is None
    reason = classify_accelerator(raw)
    assert reason is not None and needle in reason
    assert "\n" not in reason


def test_unknown_name():
    assert normalize_gpu_name("Banana GPU 9000") is None
    assert classify_accelerator("Banana GPU 9000") is None
    assert normalize_gpu_name("") is None
    with pytest.raises(BadInputError) as info:
        get_gpu("Banana GPU 9000")
    assert info.value.exit_code == EXIT_BAD_INPUT == 2
    assert info.value.field == "gpu"
    assert "unknown GPU 'Banana GPU 9000'" in str(info.value)
    assert "RTX4090" in str(info.value)


def test_get_gpu_accepts_aliases_and_explains_non_gpus():
    assert get_gpu("NVIDIA GeForce RTX 4090").name == "RTX4090"
    assert get_gpu("h100-sxm").name == "H100-SXM"
    with pytest.raises(BadInputError, match="TPU"):
        get_gpu("tpu-v4-8")


# ----------------------------------------------------- the catalog snapshot, in full


def _gpuinfo_names(text: str) -> list[str]:
    text = (text or "").strip()
    if not text:
        return []
    try:
        info = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            info = json.loads(text)
        except ValueError:
            return [text]  # azure/runpod/gcp TPU rows hold a bare name
    if not isinstance(info, dict):
        return [text]
    return [g["Name"] for g in info.get("Gpus", []) if g.get("Name")]


def _per_gpu_mib(row: dict[str, str]) -> float | None:
    try:
        info = ast.literal_eval(row.get("GpuInfo") or "")
        total = float(info.get("TotalGpuMemoryInMiB") or info["Gpus"][0]["MemoryInfo"]["SizeInMiB"])
        count = float(row.get("AcceleratorCount") or 1)
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return total / count if count else None


def _catalog_rows():
    files = sorted(CATALOG_DIR.glob("*.csv"))
    assert len(files) == 12
    for path in files:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                yield path.stem, row


def _catalog_names() -> set[str]:
    names: set[str] = set()
    for _, row in _catalog_rows():
        if row.get("AcceleratorName", "").strip():
            names.add(row["AcceleratorName"].strip())
        names.update(_gpuinfo_names(row.get("GpuInfo", "")))
        upstream = (row.get("UpstreamCloudId") or "").strip()
        if upstream.startswith(("NVIDIA ", "Tesla ")):  # nvidia-smi names, not instance ids
            names.add(upstream)
    return names


def test_every_catalog_gpu_name_is_normalised_or_classified():
    names = _catalog_names()
    assert len(names) > 60
    neither = sorted(
        n for n in names if normalize_gpu_name(n) not in NAMES and classify_accelerator(n) is None
    )
    both = sorted(n for n in names if normalize_gpu_name(n) and classify_accelerator(n))
    assert not neither, f"catalog GPU names neither normalised nor classified: {neither}"
    assert not both, f"names both normalised and classified: {both}"


def test_every_catalog_row_normalises_with_its_context():
    neither = set()
    for cloud, row in _catalog_rows():
        name = (row.get("AcceleratorName") or "").strip()
        if not name:
            continue
        hint = " ".join([cloud, row.get("InstanceType", ""), row.get("UpstreamCloudId") or ""])
        got = normalize_gpu_name(name, vram_mib=_per_gpu_mib(row), hint=hint)
        if got not in NAMES and classify_accelerator(name) is None:
            neither.add((cloud, name))
    assert not neither, f"rows neither normalised nor classified: {sorted(neither)}"


def test_primeintellect_accelerator_agrees_with_upstream_nvidia_smi_name():
    mismatches = set()
    for cloud, row in _catalog_rows():
        upstream = (row.get("UpstreamCloudId") or "").strip()
        if cloud != "primeintellect" or not upstream.startswith(("NVIDIA ", "Tesla ")):
            continue
        direct = normalize_gpu_name(upstream)
        via_hint = normalize_gpu_name(row["AcceleratorName"], hint=upstream)
        if direct != via_hint:
            mismatches.add((row["AcceleratorName"], upstream, via_hint, direct))
    assert not mismatches, sorted(mismatches)


# ------------------------------------------------------------------------- import


def test_import_is_lazy_and_light():
    code = (
        "import sys, orchestrator.hardware as h;"
        "assert h._table.cache_info().currsize == 0, 'CSV parsed at import';"
        "heavy = {'pandas', 'numpy', 'pydantic'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
