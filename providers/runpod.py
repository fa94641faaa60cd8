"""RunPod adapter: GPU offers and the pod lifecycle through RunPod's GraphQL API.

Every request is `POST {RUNPOD_API_BASE_URL}/graphql` with `{"query", "variables"}` and
`Authorization: Bearer <RUNPOD_API_KEY>`. Values always travel as GraphQL variables,
never formatted into the query text, so quotes and newlines in them survive (the RunPod
SDK's string formatting breaks on them).

GraphQL reports most failures as HTTP 200 with `{"errors": [...]}`; `graphql()` turns
them into the same error tree as HTTP status codes, inside the retry loop, so a
GraphQL-level rate limit is retried and an "Unauthorized" is not.

Offers: one `gpuTypes` query. Each type carries per-GPU hourly prices for the secure and
community clouds, on-demand and spot (`securePrice`, `communityPrice`,
`secureSpotPrice`, `communitySpotPrice`; null or 0 when not offered). A pod may hold 1 to
`maxGpuCount` GPUs of one type, and RunPod bills per GPU, so an offer for N GPUs costs
N x the per-GPU price (gpuhunt prices RunPod the same way). The type's
`lowestPrice(input: {gpuCount})` gives a stock status; a type with none is left out.

Lifecycle (shapes as runpod-python's `api/mutations/pods.py` and `api/queries/pods.py`,
dstack's RunPod backend, and the schema's input types `PodFindAndDeployOnDemandInput`,
`PodRentInterruptableInput`, `PodFilter`, `PodTerminateInput`):

- launch: `podFindAndDeployOnDemand` (on-demand) or `podRentInterruptable` with
  `bidPerGpu` (spot), one `input` variable: name (the label `deployctl-<id>`), imageName,
  gpuTypeId, gpuCount, cloudType (SECURE/COMMUNITY from the offer id), containerDiskInGb,
  volumeInGb 0, ports "8000/http", env [{key, value}], dockerArgs and terminateAfter
  (an ISO-8601 UTC time a little after the ttl: RunPod's own backstop in case the guard
  cannot destroy the pod). dockerArgs is the JSON form `{"entrypoint": ["/bin/sh", "-c"],
  "cmd": [bootstrap]}` (as dstack sends it), which replaces the image's ENTRYPOINT: the
  vLLM image's entrypoint is the API server itself, so plain arguments would be handed to
  it. RunPod injects RUNPOD_POD_ID and a pod-scoped RUNPOD_API_KEY into the pod; the guard
  destroys its own pod with them. A deploy is never retried blindly: only a rate limit
  (the request was refused) is retried; after a timeout or 5xx the pod list is checked for
  a pod of that name and, if one exists, LaunchFailedError carries its id.
- get: `pod(input: {podId})`; desiredStatus RUNNING with a runtime is running (endpoint
  `https://{pod_id}-{port}.proxy.runpod.net`, template overridable with RUNPOD_PROXY_URL),
  RUNNING without a runtime (pulling, booting, restarting) is pending, EXITED/DEAD/PAUSED
  is exited (still billing: the launcher must terminate it), TERMINATED or absent is None.
- list_instances: `myself { pods }` filtered by name prefix.
- terminate: `podTerminate` (never `podStop`: a stopped pod still bills its disk); "pod
  not found" is success.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from orchestrator.errors import (
    CredentialsError,
    LaunchFailedError,
    OfferUnavailableError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    RetryableProviderError,
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

__all__ = [
    "DEFAULT_PROXY_URL",
    "DEPLOY_ON_DEMAND_MUTATION",
    "DEPLOY_SPOT_MUTATION",
    "GPU_TYPES_QUERY",
    "MY_PODS_QUERY",
    "POD_QUERY",
    "TERMINATE_MUTATION",
    "RunPodProvider",
    "docker_args_for",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.runpod.io"
KEY_HINT = (
    "set RUNPOD_API_KEY (create one at https://www.runpod.io/console/user/settings) "
    "or pass api_key= to RunPodProvider"
)

GPU_TYPES_QUERY = """
query GpuTypes($input: GpuTypeFilter, $lowestPriceInput: GpuLowestPriceInput) {
  gpuTypes(input: $input) {
    id
    displayName
    memoryInGb
    maxGpuCount
    secureCloud
    communityCloud
    securePrice
    communityPrice
    secureSpotPrice
    communitySpotPrice
    lowestPrice(input: $lowestPriceInput) {
      minimumBidPrice
      uninterruptablePrice
      stockStatus
    }
  }
}
"""

# (cloud, spot) -> the gpuTypes field holding its per-GPU price and the flag that says
# the cloud carries the type at all.
_PRICE_FIELDS: tuple[tuple[str, bool, str, str], ...] = (
    ("secure", False, "securePrice", "secureCloud"),
    ("community", False, "communityPrice", "communityCloud"),
    ("secure", True, "secureSpotPrice", "secureCloud"),
    ("community", True, "communitySpotPrice", "communityCloud"),
)

# The fields every pod answer selects (runpod-python's pod query, trimmed to what we use).
_POD_FIELDS = """
    id
    name
    desiredStatus
    lastStatusChange
    costPerHr
    imageName
    gpuCount
    podType
    machine { gpuDisplayName }
    runtime {
      uptimeInSeconds
      ports { ip isIpPublic privatePort publicPort type }
    }
"""

DEPLOY_ON_DEMAND_MUTATION = (
    "mutation Deploy($input: PodFindAndDeployOnDemandInput!) {\n"
    "  podFindAndDeployOnDemand(input: $input) {" + _POD_FIELDS + "  }\n}\n"
)
DEPLOY_SPOT_MUTATION = (
    "mutation DeploySpot($input: PodRentInterruptableInput!) {\n"
    "  podRentInterruptable(input: $input) {" + _POD_FIELDS + "  }\n}\n"
)
POD_QUERY = "query Pod($input: PodFilter!) {\n  pod(input: $input) {" + _POD_FIELDS + "  }\n}\n"
MY_PODS_QUERY = "query MyPods {\n  myself {\n    pods {" + _POD_FIELDS + "    }\n  }\n}\n"
TERMINATE_MUTATION = (
    "mutation Terminate($input: PodTerminateInput!) {\n  podTerminate(input: $input)\n}\n"
)

DEFAULT_PROXY_URL = "https://{pod_id}-{port}.proxy.runpod.net"
# terminateAfter = launch + ttl + this: the guard ends the pod at ttl; RunPod's own timer is
# the backstop for a guard that could not (crashed, network cut).
TERMINATE_AFTER_GRACE_S = 600
DEPLOY_TIMEOUT_S = 60.0

_CLOUD_TYPES = {"secure": "SECURE", "community": "COMMUNITY"}
_EXITED_STATUSES = {"EXITED", "DEAD", "PAUSED"}
_GONE_STATUSES = {"TERMINATED"}
# RunPod's words when the machine for a quote was taken: "There are no longer any instances
# available with the requested specifications. Please refresh and try again." (also "...
# with enough disk space", "This machine does not have the resources to deploy this pod").
_CAPACITY_WORDS = (
    "no longer any instances available",
    "no instances available",
    "not have the resources",
    "not enough free gpus",
    "no longer available",
)
_NOT_FOUND_WORDS = ("not found", "does not exist", "no pod")
_AUTH_CODES = {"UNAUTHENTICATED", "FORBIDDEN", "UNAUTHORIZED"}
_AUTH_WORDS = ("unauthorized", "unauthenticated", "api key", "forbidden", "permission")
_RATE_WORDS = ("rate limit", "too many requests", "throttl")
_TRANSIENT_WORDS = ("try again", "temporarily", "timed out", "timeout", "unavailable")


class RunPodProvider(KeyedProvider):
    """Offers from RunPod's secure and community clouds, on-demand and spot."""

    name: ClassVar[str] = "runpod"
    key_env: ClassVar[str] = "RUNPOD_API_KEY"
    url_env: ClassVar[str] = "RUNPOD_API_BASE_URL"
    default_url: ClassVar[str] = DEFAULT_URL
    key_hint: ClassVar[str] = KEY_HINT

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        proxy_url: str | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout_s, policy=policy)
        self.proxy_url = proxy_url or os.environ.get("RUNPOD_PROXY_URL") or DEFAULT_PROXY_URL

    # -- GraphQL --------------------------------------------------------------------------
    def graphql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        policy: RetryPolicy | None = None,
        partial_ok: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Run one GraphQL operation; return its `data`. Raises the ProviderError tree.

        With `partial_ok` (listings), data that came with non-fatal errors is used; without
        it (the lifecycle) any error raises: a failed mutation answers
        `{"data": {"podTerminate": null}, "errors": [...]}`, which must not read as success.
        """
        # One HTTP attempt per try: the retry loop is out here so that GraphQL-level
        # errors (HTTP 200) are classified before deciding whether to retry.
        one_try = RetryPolicy(attempts=1, deadline_s=(timeout_s or self.timeout_s) * 2)
        http = self._api(one_try, timeout_s)
        body = {"query": query, "variables": variables or {}}

        def once() -> dict[str, Any]:
            try:
                payload = http.request_json("POST", "/graphql", json=body)
            except CredentialsError as exc:
                exc.hint = exc.hint or KEY_HINT
                raise
            return self._data_or_raise(payload, partial_ok)

        return call_with_retries(once, policy or self.policy)

    def _data_or_raise(self, payload: Any, partial_ok: bool = True) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ProviderUnavailableError(self.name, "GraphQL answer is not a JSON object")
        errors = payload.get("errors") or []
        if not isinstance(errors, list):
            errors = [errors]
        data = payload.get("data")
        if errors:
            error = _classify(self.name, errors)
            # Partial data with a non-fatal error is still usable; auth never is.
            if not partial_ok or isinstance(error, CredentialsError) or not isinstance(data, dict):
                raise error
            log.warning("runpod: GraphQL answered with data and errors: %s", error.message)
        if not isinstance(data, dict):
            raise ProviderUnavailableError(self.name, "GraphQL answer has no data")
        return data

    # -- offers ---------------------------------------------------------------------------
    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """Offers per GPU type, cloud, spot/on-demand and GPU count; may over-return."""
        self.unknown_gpu_names = set()
        variables = {"input": {}, "lowestPriceInput": {"gpuCount": query.min_gpu_count}}
        data = self.graphql(GPU_TYPES_QUERY, variables)
        gpu_types = data.get("gpuTypes")
        if not isinstance(gpu_types, list):
            raise ProviderError(self.name, "gpuTypes answer is not a list")
        offers: list[Offer] = []
        for gpu_type in gpu_types:
            if isinstance(gpu_type, dict):
                offers.extend(self._offers_for(gpu_type, query))
        return offers

    def _offers_for(self, gpu_type: dict[str, Any], query: OfferQuery) -> list[Offer]:
        type_id = str(gpu_type.get("id") or "")
        memory_gib = _number(gpu_type.get("memoryInGb"))
        lowest = gpu_type.get("lowestPrice") or {}
        if not type_id or not memory_gib or lowest.get("stockStatus") is None:
            return []  # not rentable right now (or not a GPU at all)
        vram_mib = int(memory_gib * 1024)
        gpu = canonical_gpu(
            [type_id, str(gpu_type.get("displayName") or "")],
            vram_mib=vram_mib,
            hint="runpod",
            unknown=self.unknown_gpu_names,
        )
        if gpu is None:
            return []
        max_count = min(int(_number(gpu_type.get("maxGpuCount")) or 1), query.max_gpu_count)
        offers = []
        for cloud, spot, price_field, cloud_flag in _PRICE_FIELDS:
            per_gpu_usd = _number(gpu_type.get(price_field))
            if not gpu_type.get(cloud_flag) or not per_gpu_usd or per_gpu_usd <= 0:
                continue
            if query.spot is not None and spot != query.spot:
                continue
            for count in range(max(query.min_gpu_count, 1), max_count + 1):
                offers.append(
                    Offer(
                        provider=self.name,
                        offer_id=f"{type_id}|{cloud}|{'spot' if spot else 'ondemand'}|{count}",
                        gpu=gpu,
                        gpu_count=count,
                        vram_gib=memory_gib,
                        price_per_hour_usd=round(per_gpu_usd * count, 6),
                        spot=spot,
                        region="",  # gpuTypes prices are not per region; the cloud is in the id
                        source="live",
                        raw=gpu_type,
                    )
                )
        return offers

    # -- lifecycle ------------------------------------------------------------------------
    def launch(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: dict[str, str]
    ) -> Instance:
        """Deploy a pod for `offer` running `spec`; returns at once (usually pending)."""
        spot = offer.spot
        pod_input = self._deploy_input(offer, spec, name=name)
        mutation, field = (
            (DEPLOY_SPOT_MUTATION, "podRentInterruptable")
            if spot
            else (DEPLOY_ON_DEMAND_MUTATION, "podFindAndDeployOnDemand")
        )
        try:
            data = self._deploy(mutation, {"input": pod_input})
        except RetryableProviderError as exc:
            # Timeout or 5xx: the pod may exist all the same. Never leave it behind.
            created = self._list_named(name)
            if created:
                raise LaunchFailedError(
                    self.name,
                    f"deploy failed ({exc.message}) but pod {created[0].instance_id} exists",
                    instance_id=created[0].instance_id,
                ) from exc
            raise
        pod = data.get(field)
        if not isinstance(pod, dict) or not pod.get("id"):
            # RunPod answers null when it found no machine (older API behaviour).
            created = self._list_named(name)
            if created:
                raise LaunchFailedError(
                    self.name,
                    f"{field} answered without a pod id, yet pod {created[0].instance_id} exists",
                    instance_id=created[0].instance_id,
                )
            raise OfferUnavailableError(self.name, f"{field} found no machine for {offer.key}")
        instance = self._instance(pod, spec.guard_port)
        if instance is None:  # answered already terminated: nothing to clean up
            raise LaunchFailedError(
                self.name, f"pod {pod['id']} was terminated at once", instance_id=str(pod["id"])
            )
        return instance.model_copy(
            update={
                "labels": {**labels, "label": name},
                "gpu": offer.gpu,
                "price_per_hour_usd": instance.price_per_hour_usd or offer.price_per_hour_usd,
            }
        )

    def _deploy_input(self, offer: Offer, spec: ContainerSpec, *, name: str) -> dict[str, Any]:
        gpu_type_id, cloud = _parse_offer_id(offer)
        ttl_s = _int(spec.env.get("DEPLOYCTL_TTL_S"))
        pod_input: dict[str, Any] = {
            "name": name,
            "imageName": spec.image,
            "gpuTypeId": gpu_type_id,
            "gpuCount": offer.gpu_count,
            "cloudType": _CLOUD_TYPES.get(cloud, "ALL"),
            "containerDiskInGb": spec.disk_gib,
            "volumeInGb": 0,  # no persistent volume: nothing may bill after the pod is gone
            "ports": f"{spec.guard_port}/http",
            "env": [{"key": k, "value": v} for k, v in spec.all_env().items()],
            "dockerArgs": docker_args_for(spec.bootstrap),
            "supportPublicIp": False,  # the HTTPS proxy needs no public IP
            "startSsh": False,
        }
        if ttl_s:
            deadline = datetime.now(timezone.utc) + timedelta(
                seconds=ttl_s + TERMINATE_AFTER_GRACE_S
            )
            pod_input["terminateAfter"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
        if offer.spot:
            pod_input["bidPerGpu"] = round(offer.price_per_hour_usd / offer.gpu_count, 4)
        return pod_input

    def _deploy(self, mutation: str, variables: dict[str, Any]) -> dict[str, Any]:
        """One deploy call; only a rate limit (refused, so nothing created) is retried."""
        timeout_s = max(self.timeout_s, DEPLOY_TIMEOUT_S)  # finding a machine takes a while
        once = RetryPolicy(attempts=1, deadline_s=timeout_s * 2)
        started = time.monotonic()
        delay = max(self.policy.base_s, 0.001)
        for attempt in range(1, max(self.policy.attempts, 1) + 1):
            try:
                return self.graphql(
                    mutation, variables, policy=once, partial_ok=False, timeout_s=timeout_s
                )
            except RateLimitedError:
                spent = time.monotonic() - started
                if attempt >= self.policy.attempts or spent + delay > self.policy.deadline_s:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, self.policy.cap_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, instance_id: str) -> Instance | None:
        """The pod now; None when it is terminated or unknown."""
        try:
            data = self.graphql(POD_QUERY, {"input": {"podId": instance_id}}, partial_ok=False)
        except ProviderError as exc:
            if type(exc) is ProviderError and _is_not_found(exc.message):
                return None
            raise
        pod = data.get("pod")
        if not isinstance(pod, dict) or not pod.get("id"):
            return None
        return self._instance(pod)

    def list_instances(self, label_prefix: str = "deployctl-") -> list[Instance]:
        """Every live pod whose name starts with `label_prefix`."""
        data = self.graphql(MY_PODS_QUERY, {}, partial_ok=False)
        myself = data.get("myself") or {}
        pods = myself.get("pods") if isinstance(myself, dict) else None
        if not isinstance(pods, list):
            raise ProviderError(self.name, "myself.pods answer is not a list")
        instances = []
        for pod in pods:
            if not isinstance(pod, dict) or not str(pod.get("name") or "").startswith(label_prefix):
                continue
            instance = self._instance(pod)
            if instance is not None:
                instances.append(instance)
        return instances

    def terminate(self, instance_id: str) -> None:
        """podTerminate (never podStop). An unknown or already terminated pod is success."""
        try:
            self.graphql(TERMINATE_MUTATION, {"input": {"podId": instance_id}}, partial_ok=False)
        except ProviderError as exc:
            if type(exc) is ProviderError and _is_not_found(exc.message):
                return
            raise

    def _list_named(self, name: str, *, lookups: int = 3) -> list[Instance]:
        """Live pods named `name`, looked for a few times: a pod created by a deploy whose
        answer was lost may take a moment to appear in the listing."""
        for lookup in range(lookups):
            if lookup:
                time.sleep(self.policy.cap_s)
            try:
                found = [i for i in self.list_instances(name) if i.labels.get("label") == name]
            except ProviderError as exc:
                log.warning("runpod: cannot list pods to look for %s: %s", name, exc.message)
                continue
            if found:
                return found
        return []

    def _instance(self, pod: dict[str, Any], port: int | None = None) -> Instance | None:
        status = str(pod.get("desiredStatus") or "").upper()
        if status in _GONE_STATUSES:
            return None
        runtime = pod.get("runtime")
        pod_id = str(pod["id"])
        endpoint = None
        started_at = None
        if status in _EXITED_STATUSES:
            state = InstanceState.EXITED
        elif status == "RUNNING" and isinstance(runtime, dict):
            state = InstanceState.RUNNING
            http_port = port or _http_port(runtime) or 8000
            endpoint = self.proxy_url.format(pod_id=pod_id, port=http_port)
            uptime_s = _number(runtime.get("uptimeInSeconds"))
            if uptime_s is not None:
                started_at = datetime.now(timezone.utc) - timedelta(seconds=uptime_s)
        else:
            state = InstanceState.PENDING  # CREATED, RESTARTING, or RUNNING without runtime
        machine = pod.get("machine") if isinstance(pod.get("machine"), dict) else {}
        name = str(pod.get("name") or "")
        return Instance(
            provider=self.name,
            instance_id=pod_id,
            state=state,
            endpoint_url=endpoint,
            price_per_hour_usd=_number(pod.get("costPerHr")) or 0.0,
            started_at=started_at,
            labels={"label": name} if name else {},
            gpu=machine.get("gpuDisplayName"),
            message=" ".join(
                x for x in (status.lower(), str(pod.get("lastStatusChange") or "")) if x
            ),
            raw=pod,
        )


def _classify(provider: str, errors: list[Any]) -> ProviderError:
    """The error-tree class for a GraphQL `errors` list (the first error decides)."""
    first = errors[0] if isinstance(errors[0], dict) else {"message": str(errors[0])}
    message = str(first.get("message") or "GraphQL error")
    code = str((first.get("extensions") or {}).get("code") or "").upper()
    lowered = message.lower()
    if code in _AUTH_CODES or any(word in lowered for word in _AUTH_WORDS):
        return CredentialsError(provider, f"the API key was rejected: {message}", hint=KEY_HINT)
    if code in ("RATE_LIMITED", "TOO_MANY_REQUESTS") or any(w in lowered for w in _RATE_WORDS):
        return RateLimitedError(provider, f"rate limited: {message}")
    if any(word in lowered for word in _CAPACITY_WORDS):  # before "try again" below
        return OfferUnavailableError(provider, message)
    if any(word in lowered for word in _TRANSIENT_WORDS):
        return ProviderUnavailableError(provider, message)
    return ProviderError(provider, f"GraphQL error: {message}")


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def docker_args_for(bootstrap: str) -> str:
    """dockerArgs that run `sh -c <bootstrap>` in place of the image's ENTRYPOINT.

    RunPod reads a JSON object `{"entrypoint": [...], "cmd": [...]}` in dockerArgs as an
    entrypoint override (dstack's RunPod backend relies on it); a plain string would only
    replace CMD and be appended to the image's entrypoint. JSON keeps every quote and
    newline of the script intact; the whole value then travels as a GraphQL variable.
    """
    return json.dumps({"entrypoint": ["/bin/sh", "-c"], "cmd": [bootstrap]})


def _parse_offer_id(offer: Offer) -> tuple[str, str]:
    """(gpuTypeId, cloud) from `<gpuTypeId>|<secure|community>|<ondemand|spot>|<count>`."""
    parts = offer.offer_id.rsplit("|", 3)
    if len(parts) != 4 or parts[1] not in _CLOUD_TYPES:
        raise ProviderError("runpod", f"offer id {offer.offer_id!r} is not a RunPod offer id")
    return parts[0], parts[1]


def _http_port(runtime: dict[str, Any]) -> int | None:
    for port in runtime.get("ports") or []:
        if isinstance(port, dict) and str(port.get("type") or "").lower() == "http":
            return _int(port.get("privatePort"))
    return None


def _is_not_found(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _NOT_FOUND_WORDS)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() else None
    except (TypeError, ValueError):
        return None
