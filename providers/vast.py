"""Vast.ai adapter: offer search and the instance lifecycle over Vast's REST API.

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

Lifecycle (vast-ai/vast-cli `openapi/yaml/{create_instance,show_instance,show_instances,
destroy_instance}.yaml`, `vastai/api/instances.py`, docs.vast.ai "Creating instances with
the API"):
- rent: `PUT /api/v0/asks/{ask_id}/` with `{"image", "label", "disk", "runtype": "args",
  "onstart": "sh", "args": ["-c", bootstrap], "env": {..., "-p 8000:8000": "1"},
  "cancel_unavail": true, "price": bid}` -> `{"success": true, "new_contract": id}`. In
  the args launch mode the CLI's `--entrypoint` travels as `onstart` and `--args` as
  `args`, so the container runs `sh -c <bootstrap>` whatever the image's ENTRYPOINT is.
  The env is a JSON object whose `-p C:C` keys publish ports. CONTAINER_ID and the
  instance-scoped CONTAINER_API_KEY are set by Vast inside the container, never sent.
  An offer taken meanwhile answers 404/410 `no_such_ask ... not available`.
- show: `GET /api/v0/instances/{id}/?owner=me` -> `{"instances": {...}}` (null when the
  id is not ours); list: `GET /api/v0/instances/?owner=me` -> `{"instances": [...]}`.
  `actual_status` (null/loading/running/stopped/frozen/exited/rebooting/unknown/
  offline) says what the container does; `cur_state` "unloaded" means destroyed;
  `ports` maps "8000/tcp" to `[{"HostIp", "HostPort"}]` on `public_ipaddr`.
- destroy: `DELETE /api/v0/instances/{id}/`; 404 "Instance not found" means gone.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, ClassVar

from orchestrator.errors import (
    CredentialsError,
    OfferUnavailableError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from orchestrator.models import (
    ContainerSpec,
    Instance,
    InstanceState,
    Offer,
    OfferQuery,
)
from orchestrator.retry import DEFAULT_POLICY, RetryPolicy, call_with_retries

from .base import HttpApi, KeyedProvider, canonical_gpu

__all__ = ["VastProvider"]

DEFAULT_URL = "https://console.vast.ai"
SEARCH_PATH = "/api/v0/bundles/"
RENT_PATH = "/api/v0/asks/{ask_id}/"
INSTANCES_PATH = "/api/v0/instances/"
INSTANCE_PATH = "/api/v0/instances/{instance_id}/"
# Set by Vast inside every container; a client value would be ignored or, worse, win.
VAST_INJECTED_ENV = ("CONTAINER_ID", "CONTAINER_API_KEY")
LABELS_ENV = "DEPLOYCTL_LABELS"  # Vast keeps one label string; the rest rides in the env
_RUNNING = {"running"}
_EXITED = {"exited", "stopped", "offline", "frozen"}  # not serving; still billing
# null/loading/created/scheduling/rebooting/unknown: not there yet (the launcher's
# deadline decides). Payload fields that carry the env (secrets) never reach Instance.raw.
_SECRET_FIELDS = ("extra_env", "jupyter_token", "onstart", "image_args")
_UNAVAILABLE_WORDS = ("no_such_ask", "not available", "no longer available", "invalid_price")
_ONE_TRY = RetryPolicy(attempts=1)
KEY_HINT = (
    "set VAST_API_KEY (https://cloud.vast.ai/cli/ shows your key) or pass api_key= to VastProvider"
)
# Vast's stated VRAM (e.g. 24564 MiB for a "24 GB" card) sits a little below the nominal
# size; push VRAM filters down loosely (as gpuhunt does) and let offers.matches decide.
VRAM_PUSHDOWN_SLACK = 0.93


class VastProvider(KeyedProvider):
    """Offers from Vast.ai's marketplace, on-demand and interruptible."""

    name: ClassVar[str] = "vast"
    key_env: ClassVar[str] = "VAST_API_KEY"
    url_env: ClassVar[str] = "VAST_URL"
    default_url: ClassVar[str] = DEFAULT_URL
    key_hint: ClassVar[str] = KEY_HINT
    search_limit: ClassVar[int] = 400  # per search; the API's own default is 64
    # A bid at exactly min_bid is outbid by the next renter; 10 % above keeps the
    # instance for a while at a price still well under on-demand.
    bid_margin: ClassVar[float] = 0.10

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        verified_only: bool = True,
    ) -> None:
        super().__init__(api_key, base_url, timeout_s, policy=policy)
        self.verified_only = verified_only

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

    # -- lifecycle ----------------------------------------------------------------------------
    def launch(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: dict[str, str]
    ) -> Instance:
        """Rent `offer` running `spec.bootstrap`; returns at once with the new instance."""
        ask_id = offer.offer_id.removesuffix("-bid")
        if not ask_id.isdigit():
            raise OfferUnavailableError(self.name, f"{offer.offer_id!r} is not a Vast offer id")
        body = self.rent_body(offer, spec, name=name, labels=labels)
        payload = self._rent(ask_id, body, name=name, offer=offer)
        payload = payload if isinstance(payload, dict) else {"msg": str(payload)}
        new_id = payload.get("new_contract")
        if payload.get("success") is False or new_id is None:
            detail = str(payload.get("msg") or payload.get("error") or payload)[:200]
            if _means_unavailable(detail):
                raise OfferUnavailableError(self.name, f"offer {ask_id}: {detail}")
            raise ProviderError(self.name, f"renting offer {ask_id} failed: {detail}")
        price = offer.price_per_hour_usd
        if "price" in body:  # what the bid really costs: the bid plus the storage part
            price = body["price"] + max(offer.price_per_hour_usd - _min_bid(offer), 0.0)
        return Instance(
            provider=self.name,
            instance_id=str(new_id),
            state=InstanceState.PENDING,
            price_per_hour_usd=round(price, 6),
            started_at=datetime.now(timezone.utc),
            labels={**labels, "name": name},
            gpu=offer.gpu,
            message="rented",
        )

    def rent_body(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: dict[str, str]
    ) -> dict[str, Any]:
        """The JSON body of `PUT /api/v0/asks/{id}/` for `spec` on `offer`."""
        env = {k: v for k, v in spec.all_env().items() if k not in VAST_INJECTED_ENV}
        if labels:
            env[LABELS_ENV] = json.dumps(labels, sort_keys=True, separators=(",", ":"))
        env[f"-p {spec.guard_port}:{spec.guard_port}"] = "1"  # publish the guard only
        body: dict[str, Any] = {
            "client_id": "me",
            "image": spec.image,
            "label": name,
            "disk": spec.disk_gib,
            "runtype": "args",
            "onstart": "sh",  # the entrypoint in args mode (vastai create --entrypoint)
            "args": ["-c", spec.bootstrap],
            "env": env,
            "cancel_unavail": True,  # fail now rather than leave a stopped instance
            "target_state": "running",
        }
        if offer.spot or offer.offer_id.endswith("-bid"):
            body["price"] = self.bid_price(offer)
        return body

    def bid_price(self, offer: Offer) -> float:
        """Per-machine bid in $/h: the offer's min_bid plus `bid_margin`, rounded up."""
        return max(math.ceil(_min_bid(offer) * (1 + self.bid_margin) * 1e4) / 1e4, 0.001)

    def _rent(
        self, ask_id: str, body: dict[str, Any], *, name: str, offer: Offer
    ) -> dict[str, Any]:
        """One rent. A 429 is retried (refused before anything happened); a 5xx or timeout
        is not (a second rent could leave a duplicate): instead the instance list is read
        for the one this call may have created, and that one is returned if it exists."""
        api = self._api(_ONE_TRY)
        path = RENT_PATH.format(ask_id=ask_id)

        def once() -> Any:
            try:
                return api.request_json("PUT", path, json=body)
            except (ProviderUnavailableError, ProviderTimeoutError) as exc:
                raise _AmbiguousRentError(exc) from exc

        try:
            return call_with_retries(once, self.policy)
        except _AmbiguousRentError as ambiguous:
            created = self._find_rented(name, offer)
            if created is None:
                raise ambiguous.cause from None
            return {"success": True, "new_contract": created}
        except ProviderError as exc:  # 404/410 no_such_ask, 400 invalid_price: next offer
            gone = any(f"HTTP {code} " in exc.message for code in (404, 410))
            if type(exc) is ProviderError and (gone or _means_unavailable(exc.message)):
                raise OfferUnavailableError(self.name, exc.message.split(": ", 1)[-1]) from exc
            raise

    def _find_rented(self, name: str, offer: Offer) -> str | None:
        machine_id = offer.raw.get("machine_id")
        try:
            rows = self._rows()
        except ProviderError:
            return None
        for row in rows:
            same_machine = machine_id is None or row.get("machine_id") == machine_id
            if row.get("label") == name and same_machine and row.get("cur_state") != "unloaded":
                return str(row.get("id"))
        return None

    def get(self, instance_id: str) -> Instance | None:
        """The instance now; None when Vast does not know it (destroyed or never ours)."""
        if not str(instance_id).isdigit():
            return None
        path = INSTANCE_PATH.format(instance_id=instance_id)
        try:
            payload = self._api().request_json(
                "GET", path, params={"owner": "me"}, missing_is_unavailable=True
            )
        except OfferUnavailableError:  # 404/410: no such instance
            return None
        row = payload.get("instances") if isinstance(payload, dict) else None
        if isinstance(row, list):  # tolerate a one-element list
            row = next((r for r in row if str(r.get("id")) == str(instance_id)), None)
        if not isinstance(row, dict):
            return None
        return self._to_instance(row)

    def list_instances(self, label_prefix: str = "deployctl-") -> list[Instance]:
        """Every instance of the account whose label starts with `label_prefix`."""
        found = []
        for row in self._rows():
            if str(row.get("label") or "").startswith(label_prefix):
                instance = self._to_instance(row)
                if instance is not None:
                    found.append(instance)
        return found

    def _rows(self) -> list[dict[str, Any]]:
        payload = self._api().request_json("GET", INSTANCES_PATH, params={"owner": "me"})
        rows = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(rows, list):
            raise ProviderError(self.name, "the instance list answered without 'instances'")
        return [r for r in rows if isinstance(r, dict)]

    def terminate(self, instance_id: str) -> None:
        """Destroy (never stop: a stopped instance still bills its disk). Gone is success."""
        if not str(instance_id).isdigit():
            return
        path = INSTANCE_PATH.format(instance_id=instance_id)
        try:
            payload = self._api().request_json("DELETE", path, json={}, missing_is_unavailable=True)
        except OfferUnavailableError:  # 404: already gone
            return
        if isinstance(payload, dict) and payload.get("success") is False:
            if self.get(instance_id) is None:
                return
            detail = str(payload.get("msg") or payload.get("error") or "")[:200]
            raise ProviderError(self.name, f"destroying instance {instance_id} failed: {detail}")

    def _to_instance(self, row: dict[str, Any]) -> Instance | None:
        if row.get("cur_state") == "unloaded":
            return None  # destroyed; Vast may list it for a moment
        status = str(row.get("actual_status") or "").lower()
        if row.get("next_state") == "unloaded":
            state = InstanceState.GONE  # destroy requested, not finished
        elif status in _RUNNING:
            state = InstanceState.RUNNING
        elif status in _EXITED:
            state = InstanceState.EXITED
        else:
            state = InstanceState.PENDING
        env = _extra_env(row.get("extra_env"))
        endpoint = None
        if state is InstanceState.RUNNING:
            endpoint = _endpoint(row, env.get("DEPLOYCTL_GUARD_PORT") or "8000")
        labels = _labels(env.get(LABELS_ENV))
        label = str(row.get("label") or "")
        if label:
            labels["name"] = label
        started = row.get("start_date")
        gpu_name = str(row.get("gpu_name") or "")
        gpu = canonical_gpu(
            [gpu_name], vram_mib=_float(row.get("gpu_ram")), hint="vast", unknown=set()
        )
        message = " ".join(str(part) for part in (status, row.get("status_msg")) if part).strip()
        return Instance(
            provider=self.name,
            instance_id=str(row.get("id")),
            state=state,
            endpoint_url=endpoint,
            price_per_hour_usd=_float(row.get("dph_total")) or 0.0,
            started_at=(datetime.fromtimestamp(float(started), timezone.utc) if started else None),
            labels=labels,
            gpu=gpu or gpu_name or None,
            message=message[:300],
            raw={k: v for k, v in row.items() if k not in _SECRET_FIELDS},
        )


class _AmbiguousRentError(Exception):
    """A rent that may or may not have happened (5xx or timeout): never retried blindly."""

    def __init__(self, cause: ProviderError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _means_unavailable(text: str) -> bool:
    text = text.lower()
    return any(word in text for word in _UNAVAILABLE_WORDS)


def _min_bid(offer: Offer) -> float:
    try:
        return float(offer.raw["min_bid"])
    except (KeyError, TypeError, ValueError):
        return offer.price_per_hour_usd  # no bid market quoted: bid what the plan priced


def _extra_env(value: Any) -> dict[str, str]:
    """Vast returns the env as [[key, value], ...] (the CLI turns it into a dict)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(p[0]): str(p[1]) for p in value if isinstance(p, list | tuple) and len(p) == 2}
    return {}


def _labels(value: str | None) -> dict[str, str]:
    try:
        decoded = json.loads(value) if value else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}


def _endpoint(row: dict[str, Any], container_port: str) -> str | None:
    """http://{public_ipaddr}:{host port of container_port/tcp}, once Vast reports both."""
    host = str(row.get("public_ipaddr") or "").strip()
    ports = row.get("ports")
    if not host or not isinstance(ports, dict):
        return None
    for mapping in ports.get(f"{container_port}/tcp") or []:
        host_port = str((mapping or {}).get("HostPort") or "").strip()
        if host_port.isdigit():
            bracketed = f"[{host}]" if ":" in host else host
            return f"http://{bracketed}:{host_port}"
    return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
