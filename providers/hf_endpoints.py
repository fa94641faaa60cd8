"""Hugging Face Inference Endpoints adapter: managed, scale-to-zero endpoints.

The lifecycle goes through the `huggingface_hub` client (optional extra `hf`, imported
on first use so the CLI starts fast): `HfApi.create_inference_endpoint`,
`get_inference_endpoint`, `list_inference_endpoints`, `delete_inference_endpoint`,
`scale_to_zero_inference_endpoint`. Those call `{API}/endpoint/{namespace}[/{name}]`
where API is `huggingface_hub.constants.INFERENCE_ENDPOINTS_ENDPOINT`
(`https://api.endpoints.huggingface.cloud/v2`). The client reads no environment variable
for it, so `HF_ENDPOINTS_API_URL` (or `base_url=`) sets that module constant for the
duration of each call, under a lock; `HF_ENDPOINT` (the client's own variable) points
the hub's `whoami-v2`, used only when no namespace is given (`HF_NAMESPACE`).

Offers come from the vendor catalog the client does not wrap, `GET {API}/provider` ->
`{"vendors": [{"name", "status", "regions": [{"name", "label", "status", "computes":
[{"id", "accelerator", "instanceType", "instanceSize", "numAccelerators", "memoryGb",
"gpuMemoryGb", "pricePerHour", "status", "architecture", ...}]}]}]}`; it is read with
httpx (`HttpApi`) like the other adapters. `pricePerHour` is the whole instance (all its
accelerators), billed per minute while initializing and running, nothing while scaled to
zero or paused. `gpuMemoryGb` is read as the instance's total (the pricing page lists
"4x A10G, 96 GB"), so VRAM per GPU is gpuMemoryGb / numAccelerators. No spot market.

What a deployment is here (DESIGN §3, serverless targets): no instance and no guard. The
endpoint is `protected` (the platform checks `Authorization: Bearer <HF token>` on every
request), `minReplica` 0 (scale to zero), `maxReplica` from `limits.max_workers`
(default 1), `scaleToZeroTimeout` = the task's keep_alive in whole minutes (at least 1),
framework pytorch, task text-generation, the model repo from the engine command, on the
offer's vendor/region/instance. deployctl enforces the ttl by deleting the endpoint.

Status mapping: pending/initializing/updating -> PENDING; running -> RUNNING with the
endpoint URL; scaledToZero -> RUNNING, cold (the URL stays valid; the next request wakes a
replica and the platform answers 503 until it is up; `message` says "scaledToZero");
failed/updateFailed/paused -> EXITED (must be deleted); HTTP 404 -> None (gone).

Readiness and the key: there is no deployctl key on this target (`guarded = False`). The
endpoint's key is the user's HF token; `ready(instance)` sends a one-token OpenAI chat
completion to `{url}/v1/chat/completions` with it (503 while cold = not yet).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from orchestrator.errors import (
    CredentialsError,
    LaunchFailedError,
    OfferUnavailableError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from orchestrator.models import (
    ContainerSpec,
    Instance,
    InstanceState,
    Offer,
    OfferQuery,
)
from orchestrator.retry import DEFAULT_POLICY, RetryPolicy, call_with_retries

from .base import KeyedProvider, canonical_gpu

__all__ = ["HfEndpointsProvider", "model_settings"]

DEFAULT_API_URL = "https://api.endpoints.huggingface.cloud/v2"
API_URL_ENV = "HF_ENDPOINTS_API_URL"
HUB_URL_ENV = "HF_ENDPOINT"
NAMESPACE_ENV = "HF_NAMESPACE"
CATALOG_PATH = "/provider"
NAME_PREFIX_TAG = "deployctl"  # tag on every endpoint deployctl creates
MAX_NAME_CHARS = 32  # the Endpoints API's limit on a name
KEY_HINT = (
    "set HF_TOKEN to a token that may manage Inference Endpoints "
    "(https://huggingface.co/settings/tokens)"
)
INSTALL_HINT = "pip install 'deployctl[hf]' (the huggingface_hub client)"
_PENDING = {"pending", "initializing", "updating"}
_EXITED = {"failed", "updatefailed", "paused"}
_ONE_TRY = RetryPolicy(attempts=1)
_CONSTANT_LOCK = threading.Lock()  # the client's API URL is a module constant


def _hub() -> Any:
    """The huggingface_hub package, imported on first use (never on the CLI's hot path)."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise CredentialsError("hf", "huggingface_hub is not installed", hint=INSTALL_HINT) from exc
    return huggingface_hub


class _GoneError(ProviderError):
    """HTTP 404/410 from the endpoint API: no such endpoint."""


class HfEndpointsProvider(KeyedProvider):
    """Dedicated Hugging Face Inference Endpoints that scale to zero."""

    name: ClassVar[str] = "hf"
    key_env: ClassVar[str] = "HF_TOKEN"
    url_env: ClassVar[str] = API_URL_ENV
    default_url: ClassVar[str] = DEFAULT_API_URL
    key_hint: ClassVar[str] = KEY_HINT
    guarded: ClassVar[bool] = False  # the platform authenticates (HF token); no guard runs
    teardown: ClassVar[str] = "none"

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        namespace: str | None = None,
        hub_url: str | None = None,
        max_replica: int | None = None,
    ) -> None:
        import os

        super().__init__(api_key, base_url, timeout_s, policy=policy)
        self.hub_url = (hub_url or os.environ.get(HUB_URL_ENV) or "").rstrip("/") or None
        self.namespace = (namespace or os.environ.get(NAMESPACE_ENV) or "").strip() or None
        self.max_replica = max_replica

    # -- offers -----------------------------------------------------------------------------
    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """Every available GPU instance of the catalog, priced per hour (never spot)."""
        self.unknown_gpu_names = set()
        api = self._api()
        try:
            payload = api.request_json("GET", CATALOG_PATH)
        except CredentialsError as exc:
            exc.hint = exc.hint or KEY_HINT
            raise
        if query.spot is True:
            return []  # Inference Endpoints has no spot market
        vendors = payload.get("vendors") if isinstance(payload, dict) else None
        if not isinstance(vendors, list):
            raise ProviderError(self.name, "the provider catalog answered without 'vendors'")
        offers: list[Offer] = []
        for vendor in vendors:
            if not isinstance(vendor, dict) or vendor.get("status") != "available":
                continue
            for region in vendor.get("regions") or []:
                if not isinstance(region, dict) or region.get("status") != "available":
                    continue
                for compute in region.get("computes") or []:
                    offer = self._to_offer(vendor, region, compute)
                    if offer is not None:
                        offers.append(offer)
        return offers

    def _to_offer(
        self, vendor: dict[str, Any], region: dict[str, Any], compute: Any
    ) -> Offer | None:
        if not isinstance(compute, dict) or compute.get("status") != "available":
            return None
        if compute.get("accelerator") != "gpu":
            return None  # CPU and Inferentia/TPU instances serve no vLLM/TGI plan here
        try:
            price = float(compute["pricePerHour"])
            count = int(compute.get("numAccelerators") or 1)
            total_gb = float(compute["gpuMemoryGb"])
            instance_type = str(compute["instanceType"])
            instance_size = str(compute["instanceSize"])
        except (KeyError, TypeError, ValueError):
            return None
        if price <= 0 or count < 1 or total_gb <= 0:
            return None
        per_gpu_gb = total_gb / count
        vendor_name, region_name = str(vendor.get("name") or ""), str(region.get("name") or "")
        gpu = canonical_gpu(
            [instance_type, str(compute.get("architecture") or "")],
            vram_mib=per_gpu_gb * 1024,
            hint=f"hf {vendor_name} {instance_type}",
            unknown=self.unknown_gpu_names,
        )
        if gpu is None:
            return None
        raw = {**compute, "vendor": vendor_name, "region": region_name}
        return Offer(
            provider=self.name,
            offer_id=f"{vendor_name}/{region_name}/{instance_type}/{instance_size}",
            gpu=gpu,
            gpu_count=count,
            vram_gib=round(per_gpu_gb, 2),
            price_per_hour_usd=round(price, 6),
            spot=False,
            region=region_name,
            cloud=vendor_name,
            instance_type=f"{instance_type} {instance_size}",
            source="live",
            raw=raw,
        )

    # -- the client ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _endpoints_url(self) -> Iterator[None]:
        """Point huggingface_hub at `base_url` for one call (it has no setting for it)."""
        constants = _hub().constants
        with _CONSTANT_LOCK:
            saved = constants.INFERENCE_ENDPOINTS_ENDPOINT
            constants.INFERENCE_ENDPOINTS_ENDPOINT = self.base_url
            try:
                yield
            finally:
                constants.INFERENCE_ENDPOINTS_ENDPOINT = saved

    def _client(self) -> Any:
        return _hub().HfApi(endpoint=self.hub_url, token=self._require_key())

    def _call(
        self, method: str, *args: Any, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> Any:
        """One client method, with its errors translated and the retryable ones retried."""
        client = self._client()
        kwargs.setdefault("namespace", self._namespace(client))

        def once() -> Any:
            with self._endpoints_url():
                try:
                    return getattr(client, method)(*args, token=self.api_key, **kwargs)
                except Exception as exc:  # translated at the adapter boundary
                    raise self._translate(exc, method) from None

        return call_with_retries(once, policy or self.policy)

    def _namespace(self, client: Any) -> str:
        if self.namespace:
            return self.namespace

        def once() -> Any:
            try:
                return client.whoami(token=self.api_key)
            except Exception as exc:
                raise self._translate(exc, "whoami") from None

        me = call_with_retries(once, self.policy)
        name = me.get("name") if isinstance(me, dict) else None
        if not name:
            raise CredentialsError(
                self.name, "cannot tell the token's namespace", hint=f"set {NAMESPACE_ENV}"
            )
        self.namespace = str(name)
        return self.namespace

    def _translate(self, exc: Exception, what: str) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        detail = _server_message(response)
        if isinstance(status, int):
            where = f"{what} (HTTP {status})"
            if status in (401, 403):
                return CredentialsError(self.name, f"the token was rejected on {where}",
                                        hint=KEY_HINT)  # fmt: skip
            if status == 429:
                return RateLimitedError(self.name, f"rate limited on {where}")
            if status >= 500:
                return ProviderUnavailableError(self.name, f"{where}{detail}")
            if status in (404, 410):
                return _GoneError(self.name, f"not found on {where}")
            return ProviderError(self.name, f"{where}{detail}")
        names = " ".join(cls.__name__ for cls in type(exc).__mro__)
        if "Timeout" in names:
            return ProviderTimeoutError(self.name, f"no answer from {self.base_url} ({what})")
        if any(word in names for word in ("Connect", "Transport", "Network", "Protocol")):
            return ProviderUnavailableError(self.name, f"cannot reach {self.base_url} ({what})")
        if isinstance(exc, ValueError) and "namespace" in str(exc):
            return CredentialsError(self.name, str(exc), hint=f"set {NAMESPACE_ENV}")
        return ProviderError(self.name, f"{what} failed ({type(exc).__name__})")

    # -- lifecycle ----------------------------------------------------------------------------
    def launch(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: dict[str, str]
    ) -> Instance:
        """Create a protected, scale-to-zero endpoint for `spec`'s model on `offer`."""
        try:
            vendor, region, instance_type, instance_size = offer.offer_id.split("/")
        except ValueError:
            raise OfferUnavailableError(
                self.name, f"{offer.offer_id!r} is not an Inference Endpoints offer"
            ) from None
        if len(name) > MAX_NAME_CHARS:
            raise ProviderError(self.name, f"endpoint name {name!r} is over {MAX_NAME_CHARS}")
        kwargs = self.create_kwargs(offer, spec, labels=labels)
        kwargs.update(vendor=vendor, region=region, instance_type=instance_type,
                      instance_size=instance_size)  # fmt: skip
        self._check_client_supports(kwargs)
        try:
            # A 5xx or timeout on create is not retried blindly: the endpoint may exist.
            endpoint = self._call("create_inference_endpoint", name, policy=_ONE_TRY, **kwargs)
        except (ProviderUnavailableError, ProviderTimeoutError) as exc:
            if self.get(name) is not None:
                raise LaunchFailedError(self.name, str(exc), instance_id=name) from None
            raise
        except _GoneError as exc:
            raise OfferUnavailableError(self.name, exc.message.split(": ", 1)[-1]) from None
        except ProviderError as exc:
            if type(exc) is ProviderError and "409" in exc.message:
                raise ProviderError(self.name, f"an endpoint named {name} exists") from None
            raise
        instance = self._to_instance(endpoint.raw)
        return instance.model_copy(update={"price_per_hour_usd": offer.price_per_hour_usd})

    def create_kwargs(
        self, offer: Offer, spec: ContainerSpec, *, labels: dict[str, str]
    ) -> dict[str, Any]:
        """What `create_inference_endpoint` gets besides the name and the offer's place."""
        settings = model_settings(spec)
        keep_alive_s = int(spec.env.get("DEPLOYCTL_KEEP_ALIVE_S") or 900)
        env = {k: v for k, v in spec.env.items() if not k.startswith("DEPLOYCTL_")}
        env.update(settings["env"])
        tags = [NAME_PREFIX_TAG, *(f"{k}-{v}" for k, v in sorted(labels.items()))]
        return {
            "repository": settings["repository"],
            "framework": "pytorch",
            "task": "text-generation",
            "accelerator": "gpu",
            "type": "protected",
            "min_replica": 0,
            "max_replica": self._max_replica(),
            "scale_to_zero_timeout": max(1, math.ceil(keep_alive_s / 60)),
            "env": env,
            "tags": tags,
        }

    def _max_replica(self) -> int:
        if self.max_replica is not None:
            return max(1, int(self.max_replica))
        from orchestrator.config import load_settings

        value = getattr(load_settings().limits, "max_workers", None)
        return max(1, int(value)) if value else 1

    def _check_client_supports(self, kwargs: dict[str, Any]) -> None:
        params = inspect.signature(_hub().HfApi.create_inference_endpoint).parameters
        missing = [k for k in kwargs if k not in params]
        if missing:
            raise CredentialsError(
                self.name,
                f"the installed huggingface_hub lacks {', '.join(missing)}",
                hint="pip install -U 'deployctl[hf]'",
            )

    def get(self, instance_id: str) -> Instance | None:
        """The endpoint now; None when the API says 404."""
        try:
            endpoint = self._call("get_inference_endpoint", instance_id)
        except _GoneError:
            return None
        return self._to_instance(endpoint.raw)

    def list_instances(self, label_prefix: str = "deployctl-") -> list[Instance]:
        """Every endpoint of the namespace whose name starts with `label_prefix`."""
        endpoints = self._call("list_inference_endpoints")
        return [
            self._to_instance(e.raw) for e in endpoints if str(e.name).startswith(label_prefix)
        ]

    def terminate(self, instance_id: str) -> None:
        """Delete the endpoint (pausing would keep it; deleting ends it). Gone is success."""
        try:
            self._call("delete_inference_endpoint", instance_id)
        except _GoneError:
            return

    def scale_to_zero(self, instance_id: str) -> Instance:
        """Scale the endpoint to zero now (it keeps its URL; the next request wakes it)."""
        return self._to_instance(self._call("scale_to_zero_inference_endpoint", instance_id).raw)

    # -- readiness (no guard on this target) --------------------------------------------
    def ready(self, instance: Instance, *, timeout_s: float = 30.0) -> bool:
        """A one-token OpenAI chat completion with the HF token answers 200. False while
        cold or loading (502/503/no URL); CredentialsError when the token is refused."""
        import httpx

        if not instance.endpoint_url:
            return False
        model = str((instance.raw.get("model") or {}).get("repository") or "tgi")
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1}  # fmt: skip
        headers = {"Authorization": f"Bearer {self._require_key()}"}
        url = f"{instance.endpoint_url.rstrip('/')}/v1/chat/completions"
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError:
            return False
        if response.status_code in (401, 403):
            raise CredentialsError(self.name, "the endpoint refused the HF token", hint=KEY_HINT)
        if response.status_code != 200:
            return False
        try:
            return bool(response.json().get("choices"))
        except ValueError:
            return False

    def _to_instance(self, raw: dict[str, Any]) -> Instance:
        status = raw.get("status") or {}
        state_text = str(status.get("state") or "")
        lowered = state_text.lower()
        url = status.get("url") or None
        if lowered == "running":
            state, message = InstanceState.RUNNING, "running"
        elif lowered == "scaledtozero":
            state, message = InstanceState.RUNNING, "scaledToZero: cold, the next request wakes it"
        elif lowered in _EXITED:
            state, message = InstanceState.EXITED, state_text
        else:
            state, message = InstanceState.PENDING, state_text or "pending"
        extra = status.get("message")
        if extra:
            message = f"{message}: {extra}"
        compute = raw.get("compute") or {}
        instance_type = str(compute.get("instanceType") or "")
        labels = {"name": str(raw.get("name") or "")}
        for tag in raw.get("tags") or []:
            key, sep, value = str(tag).partition("-")
            if sep and key == NAME_PREFIX_TAG:
                labels["deployctl"] = value
        gpu = canonical_gpu([instance_type], vram_mib=None, hint="hf", unknown=set())
        return Instance(
            provider=self.name,
            instance_id=str(raw.get("name")),
            state=state,
            endpoint_url=url if state is InstanceState.RUNNING else None,
            started_at=_parse_time(status.get("createdAt")),
            labels=labels,
            gpu=gpu or instance_type or None,
            message=message[:300],
            raw={k: v for k, v in raw.items() if k != "model"}
            | {"model": {k: v for k, v in (raw.get("model") or {}).items() if k != "secrets"}},
        )


def model_settings(spec: ContainerSpec) -> dict[str, Any]:
    """The model repo and engine settings, read back from the engine command deployctl
    built (vLLM `--model`, TGI `--model-id`, llama.cpp `--hf-repo repo:QUANT`)."""
    flags = _flags(spec.command)
    repo = flags.get("--model") or flags.get("--model-id") or flags.get("--hf-repo") or ""
    repo = repo.split(":", 1)[0]
    if not repo:
        raise ProviderError("hf", "the engine command names no model repo")
    env: dict[str, str] = {}
    total = flags.get("--max-model-len") or flags.get("--max-total-tokens")
    if total:
        env["MAX_TOTAL_TOKENS"] = total
    quant = flags.get("--quantization") or flags.get("--quantize")
    if quant:
        env["QUANTIZE"] = quant
    return {"repository": repo, "env": env}


def _flags(command: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for flag, value in itertools.pairwise(command):
        if flag.startswith("--") and not value.startswith("--"):
            found.setdefault(flag, value)
    return found


def _server_message(response: Any) -> str:
    if response is None:
        return ""
    try:
        body = response.json()
        text = str(body.get("error") or body.get("message") or "") if isinstance(body, dict) else ""
    except Exception:
        text = ""
    return f": {text[:200]}" if text else ""


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None

