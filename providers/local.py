"""The local provider: this machine, price 0 (DESIGN §3, "local").

Listing is cheap and never fails: one offer per distinct GPU model that `nvidia-smi`
reports, or, without a usable NVIDIA GPU, one CPU offer whose "VRAM" is the system RAM
(llama.cpp on CPU serves from RAM; the sizing core treats gpu="CPU" specially).
Lifecycle methods (running the guard and the engine as local processes) come later.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timezone
from typing import ClassVar

from orchestrator.hardware import normalize_gpu_name
from orchestrator.models import CredentialStatus, Offer, OfferQuery

__all__ = ["LocalProvider"]

_NVIDIA_SMI_TIMEOUT_S = 5.0
_NVIDIA_SMI_ARGS = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]


class LocalProvider:
    """This machine as a provider."""

    name: ClassVar[str] = "local"

    def __init__(self) -> None:
        self.unknown_gpu_names: set[str] = set()
        self._offers: list[Offer] | None = None

    def check_credentials(self) -> CredentialStatus:
        return CredentialStatus(ok=True)

    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """The offers for this machine; the query is left to the core (one machine)."""
        if self._offers is None:
            now = datetime.now(timezone.utc)
            self._offers = self._gpu_offers(_nvidia_smi_gpus(), now) or [_cpu_offer(now)]
        return list(self._offers)

    def _gpu_offers(self, gpus: list[tuple[str, float]], now: datetime) -> list[Offer]:
        grouped: dict[str, list[float]] = {}
        for raw_name, vram_mib in gpus:
            gpu = normalize_gpu_name(raw_name, vram_mib=vram_mib, hint="local")
            if gpu is None:
                self.unknown_gpu_names.add(raw_name)
                continue
            grouped.setdefault(gpu, []).append(vram_mib)
        offers = []
        for gpu, vrams in grouped.items():
            offers.append(
                Offer(
                    provider=self.name,
                    offer_id=f"local-{gpu}x{len(vrams)}",
                    gpu=gpu,
                    gpu_count=len(vrams),
                    vram_gib=round(min(vrams) / 1024, 2),  # the smallest card bounds sharding
                    price_per_hour_usd=0.0,
                    region="local",
                    quoted_at=now,
                    raw={"gpu_names": sorted({n for n, _ in gpus})},
                )
            )
        return offers


def _nvidia_smi_gpus() -> list[tuple[str, float]]:
    """(name, memory MiB) per GPU from nvidia-smi; empty when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run(
            [exe, *_NVIDIA_SMI_ARGS],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(text: str) -> list[tuple[str, float]]:
    """Parse `name, memory.total` CSV lines (nounits: MiB); lines that do not parse are skipped."""
    gpus = []
    for line in text.splitlines():
        name, sep, memory = line.rpartition(",")
        if not sep or not name.strip():
            continue
        try:
            vram_mib = float(memory.strip())
        except ValueError:
            continue  # "[N/A]" and the like
        gpus.append((name.strip(), vram_mib))
    return gpus


def _cpu_offer(now: datetime) -> Offer:
    return Offer(
        provider=LocalProvider.name,
        offer_id="local-cpu",
        gpu="CPU",
        gpu_count=1,
        vram_gib=round(system_memory_gib(), 2),
        price_per_hour_usd=0.0,
        region="local",
        quoted_at=now,
        raw={"cpu_count": os.cpu_count() or 1},
    )


def system_memory_gib() -> float:
    """Total system RAM in GiB: /proc/meminfo, else sysconf, else 0."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return 0.0
