"""Container specs for vLLM, TGI and llama.cpp, wrapped by the guard.

Every spec's `bootstrap` is the container's entrypoint on every provider: a POSIX shell
script that execs one Python (`$DEPLOYCTL_PYTHON`, else the image's python3, with -S: the
guard needs only the stdlib) to write the guard and run it around the engine command. The
guard travels in the environment, gzip + base64, cut into values of at most 200 characters
(DEPLOYCTL_GUARD_00, _01, ... and DEPLOYCTL_GUARD_CHUNKS), so no image has to contain
it and it fits Vast's documented limits (256 characters a value, 32,768 in all). The
guard listens on the only published port and starts the engine on an internal one
(`{port}` in the command).

Engine defaults follow the cost guidance users already trust: vLLM with prefix caching
and chunked prefill, gpu_memory_utilization 0.90, max_num_seqs from the task's
concurrency, tensor parallel = GPU count; the engine applies the model's own chat
template. The HF token, endpoint key and scoped provider credentials go in secret_env.
"""

from __future__ import annotations

import base64
import functools
import gzip
import shlex
from importlib import resources

from .models import ContainerSpec, Engine, Quant, TaskSpec
from .sizing import ENGINE_PROFILES

__all__ = ["IMAGES", "build_spec", "guard_env", "guard_source"]

IMAGES: dict[Engine, str] = {
    Engine.VLLM: "vllm/vllm-openai:v0.10.2",
    Engine.TGI: "ghcr.io/huggingface/text-generation-inference:3.3.4",
    Engine.LLAMACPP: "ghcr.io/ggml-org/llama.cpp:server-cuda",
}

# vLLM --quantization names; AWQ/GPTQ use the Marlin kernels where the GPU has them
# (vLLM picks awq_marlin itself when it can, so "awq" is the portable choice).
_VLLM_QUANT = {Quant.AWQ: "awq", Quant.GPTQ: "gptq", Quant.FP8: "fp8"}
_VLLM_DTYPE = {Quant.BF16: "bfloat16", Quant.FP16: "float16"}
_TGI_QUANT = {Quant.AWQ: "awq", Quant.GPTQ: "gptq", Quant.FP8: "fp8"}

GUARD_DIR_DEFAULT = "/opt/deployctl"

GUARD_CHUNK_CHARS = 200
# Writes the guard to argv[1] for the record, then runs it in this same interpreter
# (one Python start-up, not two) with argv[1:] as its own argv.
_UNPACK = (
    "import base64,gzip,os,runpy,sys;e=os.environ;n=int(e['DEPLOYCTL_GUARD_CHUNKS']);"
    "b=''.join(e['DEPLOYCTL_GUARD_%02d'%i] for i in range(n));p=sys.argv[1];"
    "f=open(p,'wb');f.write(gzip.decompress(base64.b64decode(b)));f.close();"
    "sys.argv=sys.argv[1:];runpy.run_path(p,run_name='__main__')"
)
_BOOTSTRAP = """\
set -eu
D="${{DEPLOYCTL_DIR:-{guard_dir}}}"
[ -d "$D" ] || mkdir -p "$D"
PY="${{DEPLOYCTL_PYTHON:-$(command -v python3 || true)}}"
if [ -z "$PY" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 >/dev/null
  PY="$(command -v python3)"
fi
exec "$PY" -S -c "{unpack}" "$D/guard.py" --host "${{DEPLOYCTL_GUARD_HOST:-0.0.0.0}}" \
  --log-file "$D/guard.log" -- {command}
"""


@functools.cache
def guard_source() -> str:
    """The guard's source text (orchestrator/guard.py), as shipped into instances."""
    return resources.files("orchestrator").joinpath("guard.py").read_text(encoding="utf-8")


@functools.cache
def guard_env() -> dict[str, str]:
    """The guard as environment values: gzip, base64, <= 200 characters each."""
    packed = base64.b64encode(gzip.compress(guard_source().encode(), mtime=0)).decode()
    chunks = [packed[i : i + GUARD_CHUNK_CHARS] for i in range(0, len(packed), GUARD_CHUNK_CHARS)]
    env = {f"DEPLOYCTL_GUARD_{i:02d}": chunk for i, chunk in enumerate(chunks)}
    env["DEPLOYCTL_GUARD_CHUNKS"] = str(len(chunks))
    return env


def served_name(task: TaskSpec) -> str:
    """The model name clients send: the task name (stable across quantized repos)."""
    return task.name


def _vllm_command(task: TaskSpec, gpu_count: int) -> list[str]:
    prof = ENGINE_PROFILES[Engine.VLLM]
    cmd = [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", task.model,
        "--served-model-name", served_name(task),
        "--host", "127.0.0.1", "--port", "{port}",
        "--max-model-len", str(task.context_tokens),
        "--gpu-memory-utilization", f"{prof.gpu_memory_utilization:.2f}",
        "--tensor-parallel-size", str(gpu_count),
        "--max-num-seqs", str(max(task.concurrency, 1)),
        "--max-num-batched-tokens", str(max(prof.prefill_chunk_tokens, 2048)),
        "--enable-prefix-caching", "--enable-chunked-prefill",
    ]  # fmt: skip
    if task.quant in _VLLM_QUANT:
        cmd += ["--quantization", _VLLM_QUANT[task.quant]]
    if task.quant in _VLLM_DTYPE:
        cmd += ["--dtype", _VLLM_DTYPE[task.quant]]
    if task.adapter:
        name = task.adapter.name or "adapter"
        cmd += [
            "--enable-lora",
            "--lora-modules", f"{name}={task.adapter.repo}",
            "--max-lora-rank", str(task.adapter.rank),
        ]  # fmt: skip
    return cmd


def _tgi_command(task: TaskSpec, gpu_count: int) -> list[str]:
    cmd = [
        "text-generation-launcher",
        "--model-id", task.model,
        "--hostname", "127.0.0.1", "--port", "{port}",
        "--max-total-tokens", str(task.context_tokens),
        "--max-input-tokens", str(max(task.context_tokens - task.load.output_tokens, 1)),
        "--max-concurrent-requests", str(max(task.concurrency * 4, 8)),
        "--num-shard", str(gpu_count),
        "--served-model-name", served_name(task),
    ]  # fmt: skip
    if task.quant in _TGI_QUANT:
        cmd += ["--quantize", _TGI_QUANT[task.quant]]
    if task.adapter:
        cmd += ["--lora-adapters", f"{task.adapter.name or 'adapter'}={task.adapter.repo}"]
    return cmd


def _llamacpp_command(task: TaskSpec, gpu_count: int) -> list[str]:
    """llama.cpp's server in the CUDA image: the GGUF comes from the Hub (`repo:quant`)."""
    return [
        "/app/llama-server",
        "--hf-repo", f"{task.model}:{task.quant.value.upper()}",
        "--alias", served_name(task),
        "--host", "127.0.0.1", "--port", "{port}",
        "--ctx-size", str(task.context_tokens * max(task.concurrency, 1)),
        "--parallel", str(max(task.concurrency, 1)),
        "--n-gpu-layers", "999",
        "--jinja",
    ]  # fmt: skip


_COMMANDS = {
    Engine.VLLM: _vllm_command,
    Engine.TGI: _tgi_command,
    Engine.LLAMACPP: _llamacpp_command,
}


def bootstrap_for(command: list[str], guard_dir: str = GUARD_DIR_DEFAULT) -> str:
    """The entrypoint script: write the guard, exec it around `command`."""
    return _BOOTSTRAP.format(guard_dir=guard_dir, unpack=_UNPACK, command=shlex.join(command))


def build_spec(
    task: TaskSpec,
    *,
    gpu_count: int,
    endpoint_key: str,
    keep_alive_s: int,
    ttl_s: int,
    teardown: str,
    hf_token: str | None = None,
    command: list[str] | None = None,
    image: str | None = None,
) -> ContainerSpec:
    """The ContainerSpec for `task` on `gpu_count` GPUs, guarded with `endpoint_key`.

    `teardown` tells the guard how to destroy its own instance (vast, runpod, local,
    skypilot, none); `command` and `image` override the engine's (the local provider
    runs llama-cpp-python's server instead of the CUDA image).
    """
    command = command or _COMMANDS[task.engine](task, gpu_count)
    env = {
        **task.env,
        "DEPLOYCTL_KEEP_ALIVE_S": str(keep_alive_s),
        "DEPLOYCTL_TTL_S": str(ttl_s),
        "DEPLOYCTL_TEARDOWN": teardown,
        "DEPLOYCTL_GUARD_PORT": "8000",
        "DEPLOYCTL_ENGINE_PORT": "8001",
        **guard_env(),
    }
    secret_env = {"DEPLOYCTL_ENDPOINT_KEY": endpoint_key}
    if hf_token:
        secret_env["HF_TOKEN"] = hf_token
    return ContainerSpec(
        image=image or task.image or IMAGES[task.engine],
        command=command,
        env=env,
        secret_env=secret_env,
        disk_gib=max(40, 20 + int(task.context_tokens / 1024)),
        model_name=served_name(task),
        bootstrap=bootstrap_for(command),
    )
