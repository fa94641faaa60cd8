"""RunPod adapter: GPU offers from RunPod's GraphQL API (lifecycle arrives later).

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
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from orchestrator.errors import (
    CredentialsError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
)
from orchestrator.models import CredentialStatus, Offer, OfferQuery
from orchestrator.retry import DEFAULT_POLICY, RetryPolicy, call_with_retries

from .base import HttpApi, canonical_gpu, env_secret

__all__ = ["GPU_TYPES_QUERY", "RunPodProvider"]

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

_AUTH_CODES = {"UNAUTHENTICATED", "FORBIDDEN", "UNAUTHORIZED"}
_AUTH_WORDS = ("unauthorized", "unauthenticated", "api key", "forbidden", "permission")
_RATE_WORDS = ("rate limit", "too many requests", "throttl")
_TRANSIENT_WORDS = ("try again", "temporarily", "timed out", "timeout", "unavailable")


class RunPodProvider:
    """Offers from RunPod's secure and community clouds, on-demand and spot."""

    name: ClassVar[str] = "runpod"

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self.api_key = (api_key or "").strip() or env_secret("RUNPOD_API_KEY")
        url = base_url or os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_URL
        self.base_url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.policy = policy
        self.unknown_gpu_names: set[str] = set()

    # -- credentials ----------------------------------------------------------------------
    def check_credentials(self) -> CredentialStatus:
        """Whether a key is configured (it is validated by the first real call)."""
        if not self.api_key:
            return CredentialStatus(ok=False, hint=KEY_HINT)
        return CredentialStatus(ok=True)

    # -- GraphQL --------------------------------------------------------------------------
    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one GraphQL operation; return its `data`. Raises the ProviderError tree."""
        if not self.api_key:
            raise CredentialsError(self.name, "no API key configured", hint=KEY_HINT)
        # One HTTP attempt per try: the retry loop is out here so that GraphQL-level
        # errors (HTTP 200) are classified before deciding whether to retry.
        http = HttpApi(
            self.name,
            self.base_url,
            headers={"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"},
            timeout_s=self.timeout_s,
            policy=RetryPolicy(attempts=1, deadline_s=self.timeout_s * 2),
            secrets=(self.api_key,),
        )
        body = {"query": query, "variables": variables or {}}

        def once() -> dict[str, Any]:
            try:
                payload = http.request_json("POST", "/graphql", json=body)
            except CredentialsError as exc:
                exc.hint = exc.hint or KEY_HINT
                raise
            return self._data_or_raise(payload)

        return call_with_retries(once, self.policy)

    def _data_or_raise(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ProviderUnavailableError(self.name, "GraphQL answer is not a JSON object")
        errors = payload.get("errors") or []
        if not isinstance(errors, list):
            errors = [errors]
        data = payload.get("data")
        if errors:
            error = _classify(self.name, errors)
            # Partial data with a non-fatal error is still usable; auth never is.
            if isinstance(error, CredentialsError) or not isinstance(data, dict):
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
    if any(word in lowered for word in _TRANSIENT_WORDS):
        return ProviderUnavailableError(provider, message)
    return ProviderError(provider, f"GraphQL error: {message}")


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
