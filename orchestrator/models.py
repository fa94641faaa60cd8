"""Domain types at deployctl's boundaries (pydantic v2, frozen).

User-facing inputs (`TaskSpec` and its parts) forbid unknown fields so that a typo is an
error, not a silently ignored setting. Types filled from vendor payloads (`Offer`) ignore
unknown fields; vendor leftovers travel in `Offer.raw`. Units are in field names.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .units import parse_duration_s

__all__ = [
    "Adapter",
    "Attempt",
    "ContainerSpec",
    "CredentialStatus",
    "Deployment",
    "DeploymentStatus",
    "Engine",
    "Instance",
    "InstanceState",
    "LatencyNeed",
    "LoadProfile",
    "Offer",
    "OfferQuery",
    "Quant",
    "TaskSpec",
    "validation_sentence",
]


class StrictModel(BaseModel):
    """For user input: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class VendorModel(BaseModel):
    """For provider payloads: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


class Quant(str, Enum):
    """Weight formats. fp16..gptq are served by vLLM/TGI; the GGUF types by llama.cpp."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"
    AWQ = "awq"
    GPTQ = "gptq"
    Q4_0 = "q4_0"
    Q4_1 = "q4_1"
    Q4_K_M = "q4_k_m"
    Q8_0 = "q8_0"
    F16 = "f16"

    @property
    def is_gguf(self) -> bool:
        return self in (Quant.Q4_0, Quant.Q4_1, Quant.Q4_K_M, Quant.Q8_0, Quant.F16)


class Engine(str, Enum):
    VLLM = "vllm"
    TGI = "tgi"
    LLAMACPP = "llamacpp"


ENGINE_QUANTS: dict[Engine, frozenset[Quant]] = {
    Engine.VLLM: frozenset({Quant.FP16, Quant.BF16, Quant.FP8, Quant.INT8, Quant.AWQ, Quant.GPTQ}),
    Engine.TGI: frozenset({Quant.FP16, Quant.BF16, Quant.FP8, Quant.AWQ, Quant.GPTQ}),
    Engine.LLAMACPP: frozenset({Quant.Q4_0, Quant.Q4_1, Quant.Q4_K_M, Quant.Q8_0, Quant.F16}),
}


RESERVED_ENV_PREFIXES = ("DEPLOYCTL_", "CONTAINER_", "VAST_", "RUNPOD_")


def _duration(value: Any) -> int:
    return parse_duration_s(value)


DurationS = Annotated[int, BeforeValidator(_duration), Field(ge=0)]


class Adapter(StrictModel):
    """A LoRA adapter served on top of the base model."""

    repo: str = Field(min_length=1, description="Hugging Face repo or path of the adapter")
    rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r")
    name: str | None = Field(default=None, description="served model name for the adapter")


class LatencyNeed(StrictModel):
    """What one request needs: decode speed and time to first token."""

    # finite only: `.inf` or `--min-tps inf` is a bad input (exit 2), not a --json crash
    min_decode_tok_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_ttft_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class LoadProfile(StrictModel):
    """The planned request shape, used for TTFT and cost per request."""

    prompt_tokens: int = Field(default=512, ge=1)
    output_tokens: int = Field(default=256, ge=1)


class TaskSpec(StrictModel):
    """A deployment task, as written in `tasks/<name>.yaml` or a user's own file."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    model: str = Field(min_length=1, description="model repo (Hugging Face) or GGUF file")
    arch: str | None = Field(default=None, description="architecture key when `model` is unknown")
    adapter: Adapter | None = None
    quant: Quant = Quant.BF16
    engine: Engine = Engine.VLLM
    context_tokens: int = Field(default=4096, ge=128, le=1_048_576)
    concurrency: int = Field(default=1, ge=1, le=4096)
    latency: LatencyNeed = LatencyNeed()
    load: LoadProfile = LoadProfile()
    keep_alive_s: DurationS = Field(default=900, alias="keep_alive")
    ttl_s: DurationS = Field(default=4 * 3600, alias="ttl")
    max_price_per_hour_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_gpu_count: int = Field(default=8, ge=1, le=16)
    providers: list[str] | None = None
    spot: bool | None = Field(
        default=False, description="false: on-demand only (default); true: spot only; null: both"
    )
    regions: list[str] = []
    image: str | None = None
    env: dict[str, str] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if (
                not key
                or not (key[0].isalpha() or key[0] == "_")
                or not all(c.isalnum() or c == "_" for c in key)
            ):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            # The guard reads these (its limits, its log dir, and where to send its own
            # teardown with the instance-scoped key): a task file must not redirect them.
            if key.upper().startswith(RESERVED_ENV_PREFIXES):
                reserved = ", ".join(p + "*" for p in RESERVED_ENV_PREFIXES)
                raise ValueError(f"{key!r} is reserved ({reserved} are set by deployctl "
                                 "and the provider)")
        return env

    @model_validator(mode="after")
    def _engine_accepts_quant(self) -> TaskSpec:
        if self.quant not in ENGINE_QUANTS[self.engine]:
            accepted = ", ".join(sorted(q.value for q in ENGINE_QUANTS[self.engine]))
            raise ValueError(
                f"quant: {self.quant.value} cannot run on engine {self.engine.value}, "
                f"which accepts {accepted}"
            )
        if self.adapter is not None and self.engine is Engine.LLAMACPP:
            raise ValueError("adapter: LoRA adapters are served by vllm or tgi, not llamacpp")
        return self


class OfferQuery(StrictModel):
    """What the caller wants listed. Adapters may push filters down and over-return;
    `offers.matches` re-applies every filter in one place."""

    gpus: list[str] | None = None  # canonical GPU names
    min_vram_gib: float | None = Field(default=None, ge=0)  # per GPU
    min_total_vram_gib: float | None = Field(default=None, ge=0)
    max_price_per_hour_usd: float | None = Field(default=None, gt=0)
    spot: bool | None = None  # None: both
    regions: list[str] = []
    min_gpu_count: int = Field(default=1, ge=1)
    max_gpu_count: int = Field(default=8, ge=1)


class Offer(VendorModel):
    """One rentable configuration, normalised across providers."""

    provider: str  # vast | runpod | skypilot | local
    offer_id: str
    gpu: str  # canonical name from hardware.py
    gpu_count: int = Field(ge=1)
    vram_gib: float = Field(ge=0)  # per GPU, as the provider states it
    price_per_hour_usd: float = Field(ge=0)  # whole offer (all GPUs)
    spot: bool = False
    region: str = ""
    cloud: str | None = None  # for skypilot: aws, gcp, lambda, ...
    instance_type: str | None = None
    reliability: float | None = None
    disk_gib: float | None = None
    inet_down_mbps: float | None = None
    source: Literal["live", "catalog"] = "live"
    quoted_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.offer_id}"

    @property
    def where(self) -> str:
        return f"{self.cloud}/{self.region}" if self.cloud else self.region


class CredentialStatus(VendorModel):
    """Whether a provider can be used, and how to fix it if not."""

    ok: bool
    hint: str = ""


class ContainerSpec(StrictModel):
    """What runs in an instance: the engine command, wrapped by the guard via `bootstrap`.

    `bootstrap` is a POSIX shell script that is the container's entrypoint on every
    provider: it writes the guard (shipped gzip + base64 in DEPLOYCTL_GUARD_00, _01, ...)
    and runs it as `python3 -S guard.py ... -- <command>`. The guard listens on
    `guard_port` (the only port published) and runs the engine on `engine_port`; `{port}`
    in `command` is replaced by the engine port. Values in `secret_env` (endpoint key, HF
    token, scoped provider credentials) are SecretStr: they never print, log or serialise
    in clear.
    """

    image: str
    command: list[str]
    env: dict[str, str] = {}
    secret_env: dict[str, SecretStr] = {}
    guard_port: int = 8000
    engine_port: int = 8001
    disk_gib: int = Field(default=40, ge=1)
    health_path: str = "/health"
    model_name: str  # the name the engine serves (what /v1/models lists)
    bootstrap: str

    def all_env(self) -> dict[str, str]:
        """env plus secret_env in clear: only for handing to a provider API, never to print."""
        return {**self.env, **{k: v.get_secret_value() for k, v in self.secret_env.items()}}


class InstanceState(str, Enum):
    PENDING = "pending"  # created, not running yet (pulling image, booting)
    RUNNING = "running"
    EXITED = "exited"  # stopped/failed/offline: still may bill; must be destroyed
    GONE = "gone"  # destroyed or never existed


class Instance(VendorModel):
    """A rented machine (or local process group) as the provider reports it now."""

    provider: str
    instance_id: str
    state: InstanceState
    endpoint_url: str | None = None  # the guard's public URL, once known
    price_per_hour_usd: float = 0.0
    started_at: datetime | None = None
    labels: dict[str, str] = {}
    gpu: str | None = None
    message: str = ""  # provider's status text (e.g. "exited: OOM")
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class DeploymentStatus(str, Enum):
    PLANNING = "planning"
    LAUNCHING = "launching"
    READY = "ready"
    FAILED = "failed"
    ENDED = "ended"


class Attempt(VendorModel):
    """One try at one offer during `up`: what was rented and why it did or did not work."""

    n: int
    provider: str
    offer_key: str
    gpu: str
    price_per_hour_usd: float
    instance_id: str | None = None
    outcome: str  # ready | unavailable | failed | interrupted
    reason: str = ""
    started_at: datetime
    ended_at: datetime | None = None


class Deployment(VendorModel):
    """A deployment as the state database holds it (no secrets: the key is stored apart)."""

    id: str
    task_name: str
    provider: str | None = None
    offer_key: str | None = None
    gpu: str | None = None
    gpu_count: int = 1
    instance_id: str | None = None
    endpoint_url: str | None = None
    model_name: str | None = None
    status: DeploymentStatus
    keep_alive_s: int
    ttl_s: int
    price_per_hour_usd: float = 0.0
    created_at: datetime
    ready_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str = ""
    cost_usd: float = 0.0
    attempts: list[Attempt] = []

    @property
    def label(self) -> str:
        return f"deployctl-{self.id}"


def _printable(name: str) -> str:
    """A field name from a user's file, safe to print: control and format characters
    (newlines, terminal escape sequences, bidi overrides) are shown escaped, and a blank
    or space-padded name in quotes."""
    if not name or name != name.strip():
        return repr(name)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in name)


def validation_sentence(error: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(field path, one sentence) for the first problem in a pydantic ValidationError."""
    first = error.errors()[0]
    loc = ".".join(_printable(str(p)) for p in first.get("loc", ()) if p != "__root__")
    field = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "input")
    message = first.get("msg", "is invalid")
    message = message.removeprefix("Value error, ")
    if not loc and ": " in message:  # model-level checks name their field first
        loc, message = message.split(": ", 1)
        field = f"{prefix}{loc}"
    if first.get("type") == "extra_forbidden":
        message = "is not a known field"
    elif first.get("type") == "enum":
        expected = first.get("ctx", {}).get("expected", "")
        message = f"must be one of {expected}" if expected else message
    return field, message
