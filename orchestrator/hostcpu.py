"""This machine's CPU as a pseudo-GPU, so the local provider (llama.cpp on CPU) can be sized.

The numbers are deliberately modest: a dual-channel DDR4/DDR5 host streams ~20 GB/s to a
single llama.cpp process and a few cores reach well under a TFLOPS. They only need to be
right enough to say that a 135M model on a laptop is fast and a 70B one is not.
"""

from __future__ import annotations

from .hardware import GpuSpec

__all__ = ["host_cpu_spec"]

CPU_BANDWIDTH_GBS = 20.0
CPU_TFLOPS = 0.2


def host_cpu_spec(ram_gib: float) -> GpuSpec:
    """A GpuSpec describing this host's CPU and RAM (`ram_gib` as the local offer states)."""
    return GpuSpec(
        name="CPU",
        vendor="cpu",
        architecture="cpu",
        compute_capability=0.0,
        gpu_class="cpu",
        memory_type="DRAM",
        vram_gb_nominal=ram_gib * 1.073741824,
        vram_mib_driver=int(ram_gib * 1024),
        mem_bw_gbs=CPU_BANDWIDTH_GBS,
        fp16_tflops_dense=CPU_TFLOPS,
        fp16_tflops_dense_fp32acc=CPU_TFLOPS,
        fp8_tflops_dense=None,
        int8_tops_dense=None,
        tdp_w=None,
        bf16=False,
        awq=False,
        gptq=False,
        marlin=False,
        fp8_w8a8=False,
        int8_w8a8=False,
        confidence="low",
        estimated_fields=("mem_bw_gbs", "fp16_tflops_dense"),
        notes="host CPU running llama.cpp",
        source="deployctl estimate",
    )
