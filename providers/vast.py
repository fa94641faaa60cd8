"""Vast.ai adapter: offer search over Vast's REST API (lifecycle arrives later).

Search is `POST {VAST_URL}/api/v0/bundles/` with the query as the JSON body (operators
eq/neq/gt/gte/lt/lte/in/nin), answered by `{"offers": [...]}` (vast-ai/vast-cli
`openapi/yaml/search_offers.yaml`, `vast.py search offers`). One search per rental type:
`"type": "on-demand"` and/or `"type": "bid"` (interruptible, deployctl's spot).

Units and prices, per the Vast CLI's field list:
- `gpu_ram` is per GPU in MB as nvidia-smi counts it (an RTX 4090 reports 24564, an H100
  81559): that is MiB, so vram_gib = gpu_ram / 1024. The CLI multiplies a `gpu_ram>24`
  query by 1000 before sending it; we send MiB directly.
- `dph_total` is the whole offer's on-demand $/h including the storage of the default
  allocation; `dph_base` is the GPU part alone.
- `min_bid` is the current minimum winning bid for an interruptible rental, $/h for the
  whole offer (bids are "per machine" in `vastai create instance --bid_price`). An
  interruptible rental also pays storage, so its price is min_bid + (dph_total - dph_base).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from orchestrator.errors import CredentialsError, ProviderError
from orchestrator.models import CredentialStatus, Offer, OfferQuery
from orchestrator.retry import DEFAULT_POLICY, RetryPolicy

from .base import HttpApi, canonical_gpu, env_secret

__all__ = ["VastProvider"]

DEFAULT_URL = "https://console.vast.ai"
SEARCH_PATH = "/api/v0/bundles/"
KEY_HINT = (
    "set VAST_API_KEY (https://cloud.vast.ai/cli/ shows your key) or pass api_key= to VastProvider"
)
# Vast's stated VRAM (e.g. 24564 MiB for a "24 GB" card) sits a little below the nominal
# size; push VRAM filters down loosely (as gpuhunt does) and let offers.matches decide.
VRAM_PUSHDOWN_SLACK = 0.93


class VastProvider:
    """Offers from Vast.ai's marketplace, on-demand and interruptible."""

    name: ClassVar[str] = "vast"
    search_limit: ClassVar[int] = 400  # per search; the API's own default is 64

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        verified_only: bool = True,
    ) -> None:
        self.api_key = (api_key or "").strip() or env_secret("VAST_API_KEY")
        self.base_url = (base_url or os.environ.get("VAST_URL") or DEFAULT_URL).rstrip("/")
        self.timeout_s = timeout_s
        self.policy = policy
        self.verified_only = verified_only
        self.unknown_gpu_names: set[str] = set()

    # -- credentials ----------------------------------------------------------------------
    def check_credentials(self) -> CredentialStatus:
        """Whether a key is configured (it is validated by the first real call)."""
        if not self.api_key:
            return CredentialStatus(ok=False, hint=KEY_HINT)
        return CredentialStatus(ok=True)

    def _api(self) -> HttpApi:
        if not self.api_key:
            raise CredentialsError(self.name, "no API key configured", hint=KEY_HINT)
        return HttpApi(
            self.name,
            self.base_url,
            headers={"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"},
            timeout_s=self.timeout_s,
            policy=self.policy,
            secrets=(self.api_key,),
        )

    # -- offers -----------------------------------------------------------------------------
    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """On-demand and/or interruptible offers; filters pushed down, may over-return."""
        self.unknown_gpu_names = set()
        api = self._api()
        kinds = {None: ("on-demand", "bid"), False: ("on-demand",), True: ("bid",)}[query.spot]
        offers: list[Offer] = []
        for kind in kinds:
            for raw in self._search(api, self.search_body(query, kind)):
                gpu = canonical_gpu(
                    [str(raw.get("gpu_name") or "")],
                    vram_mib=raw.get("gpu_ram"),
                    hint="vast",
                    unknown=self.unknown_gpu_names,
                )
                if gpu is None:
                    continue
                offer = self._to_offer(raw, gpu, spot=kind == "bid")
                if offer is not None:
                    offers.append(offer)
        return offers

    def search_body(self, query: OfferQuery, kind: str) -> dict[str, Any]:
        """The JSON body of one search; `kind` is "on-demand" or "bid"."""
        body: dict[str, Any] = {
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "external": {"eq": False},
            "num_gpus": {"gte": query.min_gpu_count, "lte": query.max_gpu_count},
        }
        if self.verified_only:
            body["verified"] = {"eq": True}
        if query.min_vram_gib:
            body["gpu_ram"] = {"gte": int(query.min_vram_gib * 1024 * VRAM_PUSHDOWN_SLACK)}
        if query.min_total_vram_gib:
            total_mib = query.min_total_vram_gib * 1024 * VRAM_PUSHDOWN_SLACK
            body["gpu_total_ram"] = {"gte": int(total_mib)}
        price_field = "min_bid" if kind == "bid" else "dph_total"
        if query.max_price_per_hour_usd:
            body[price_field] = {"lte": query.max_price_per_hour_usd}
        body["type"] = kind
        body["order"] = [[price_field, "asc"]]
        body["limit"] = self.search_limit
        return body

    def _search(self, api: HttpApi, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            payload = api.request_json("POST", SEARCH_PATH, json=body)
        except CredentialsError as exc:
            exc.hint = exc.hint or KEY_HINT
            raise
        except ProviderError as exc:
            # Vast's OpenAPI file documents a bad key on search as 404 {"error": "auth_error"}.
            if type(exc) is ProviderError and "auth_error" in exc.message:
                raise CredentialsError(
                    self.name, "the API key was rejected", hint=KEY_HINT
                ) from exc
            raise
        offers = payload.get("offers") if isinstance(payload, dict) else None
        if not isinstance(offers, list):
            raise ProviderError(self.name, "offer search answered without an 'offers' list")
        return [o for o in offers if isinstance(o, dict)]

    def _to_offer(self, raw: dict[str, Any], gpu: str, *, spot: bool) -> Offer | None:
        try:
            dph_total = float(raw["dph_total"])
            if spot:
                min_bid = float(raw["min_bid"])
                if min_bid <= 0:
                    return None  # no bid market on this machine right now
                storage_dph = max(dph_total - float(raw.get("dph_base") or dph_total), 0.0)
                price = min_bid + storage_dph
            else:
                price = dph_total
            gpu_ram_mib = float(raw["gpu_ram"])
            gpu_count = int(raw["num_gpus"])
        except (KeyError, TypeError, ValueError):
            return None  # an offer without a price or GPU facts cannot be planned on
        if price <= 0 or gpu_count < 1:
            return None
        reliability = raw.get("reliability2", raw.get("reliability"))
        return Offer(
            provider=self.name,
            # The same ask appears in both searches; the suffix keeps Offer.key unique.
            offer_id=f"{raw['id']}-bid" if spot else str(raw["id"]),
            gpu=gpu,
            gpu_count=gpu_count,
            vram_gib=round(gpu_ram_mib / 1024, 2),
            price_per_hour_usd=round(price, 6),
            spot=spot,
            region=str(raw.get("geolocation") or ""),
            reliability=float(reliability) if reliability is not None else None,
            # Vast states disk_space in GB; the GB/GiB gap (7 %) is below what matters here.
            disk_gib=_float(raw.get("disk_space")),
            inet_down_mbps=_float(raw.get("inet_down")),
            source="live",
            raw=raw,
        )


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
