"""A stateful fake of RunPod's GraphQL API (gpuTypes for now; pods come later).

Shapes follow the real API as used by runpod/runpod-python (`runpod/api/graphql.py`,
`runpod/api/queries/gpus.py`) and dstackai/gpuhunt (`providers/runpod.py`):

    POST /graphql   {"query": "query GpuTypes($input: GpuTypeFilter, $lowestPriceInput:
                     GpuLowestPriceInput) { gpuTypes(input: $input) { id displayName ...
                     lowestPrice(input: $lowestPriceInput) { minimumBidPrice
                     uninterruptablePrice stockStatus } } }", "variables": {...}}
    200             {"data": {"gpuTypes": [{"id": "NVIDIA GeForce RTX 4090", ...}]}}
    errors          {"errors": [{"message": "...", "extensions": {"code": "..."}}], "data": null}

Prices on a GPU type (`securePrice`, `communityPrice`, `secureSpotPrice`,
`communitySpotPrice`) are per GPU per hour; a cloud or a spot market that is not offered
is null. `lowestPrice(input: {gpuCount})` gives a stock status for that count (null when
none is available).

GPU types come from `tests/fixtures/catalog/runpod.csv` (SkyPilot's snapshot, secure
cloud only): per-GPU secure and spot prices from its 1x rows, `maxGpuCount` from its
largest row. The snapshot has no community-cloud prices, so community prices are
synthesised (80 % of secure on-demand, 50 % for spot) for the GPU types RunPod's
community cloud carries.

Only the `gpuTypes` root field is understood (anything else is a validation error, as a
real server would answer an unknown field). Fields are returned when their name appears
in the query text: a cheap stand-in for a selection set. Variables are honoured
(`input.id`, `lowestPriceInput.gpuCount` / `secureCloud`); the raw request bodies are
kept in `calls` so tests can check that values travelled as variables.

Auth: `Authorization: Bearer <key>` (or the legacy `?api_key=`). A wrong or missing key
answers `auth_failure_status` (401 by default; 200 reproduces the API's GraphQL-level
"Unauthorized" error) with a GraphQL error body.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .server import FakeApi, FakeResponse, FakeServer, RecordedRequest, bearer_token

__all__ = ["DEFAULT_RUNPOD_KEY", "FakeRunPodApi", "load_runpod_gpu_types", "serve_runpod"]

DEFAULT_RUNPOD_KEY = "rpa_TESTKEY0123456789ABCDEFGHIJ"
CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "catalog" / "runpod.csv"

# SkyPilot accelerator name -> (RunPod gpuTypeId, displayName, memoryInGb, manufacturer,
# in community cloud). Ids as RunPod spells them (SkyPilot's runpod GPU_NAME_MAP and
# public pod-creation scripts); the SXM H100's id really is "NVIDIA H100 80GB HBM3".
_RUNPOD_TYPES: dict[str, tuple[str, str, int, str, bool]] = {
    "A100-80GB-SXM": ("NVIDIA A100-SXM4-80GB", "A100 SXM", 80, "Nvidia", False),
    "A100-80GB": ("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, "Nvidia", True),
    "A40": ("NVIDIA A40", "A40", 48, "Nvidia", True),
    "B200": ("NVIDIA B200", "B200", 180, "Nvidia", False),
    "H100-NVL": ("NVIDIA H100 NVL", "H100 NVL", 94, "Nvidia", False),
    "H100-SXM": ("NVIDIA H100 80GB HBM3", "H100 SXM", 80, "Nvidia", False),
    "H100": ("NVIDIA H100 PCIe", "H100 PCIe", 80, "Nvidia", True),
    "H200-SXM": ("NVIDIA H200", "H200 SXM", 141, "Nvidia", False),
    "L40S": ("NVIDIA L40S", "L40S", 48, "Nvidia", False),
    "L40": ("NVIDIA L40", "L40", 48, "Nvidia", False),
    "L4": ("NVIDIA L4", "L4", 24, "Nvidia", True),
    "MI300X": ("AMD Instinct MI300X OAM", "MI300X", 192, "AMD", False),
    "RTX3090": ("NVIDIA GeForce RTX 3090", "RTX 3090", 24, "Nvidia", True),
    "RTX4000-Ada": ("NVIDIA RTX 4000 Ada Generation", "RTX 4000 Ada", 20, "Nvidia", True),
    "RTX4090": ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "Nvidia", True),
    "RTX6000-Ada": ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", 48, "Nvidia", True),
    "RTXA4000": ("NVIDIA RTX A4000", "RTX A4000", 16, "Nvidia", True),
    "RTXA4500": ("NVIDIA RTX A4500", "RTX A4500", 20, "Nvidia", True),
    "RTXA5000": ("NVIDIA RTX A5000", "RTX A5000", 24, "Nvidia", True),
    "RTXA6000": ("NVIDIA RTX A6000", "RTX A6000", 48, "Nvidia", True),
}

_STOCK = ("High", "Medium", "Low")


def _price(text: str) -> float | None:
    text = (text or "").strip()
    return float(text) if text and float(text) > 0 else None


def load_runpod_gpu_types(path: Path = CATALOG) -> list[dict[str, Any]]:
    """One gpuTypes entry per accelerator in the catalog (deterministic)."""
    per_gpu: dict[str, dict[str, Any]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            name = (row.get("AcceleratorName") or "").strip()
            if name not in _RUNPOD_TYPES:
                continue
            count = int(float(row["AcceleratorCount"]))
            entry = per_gpu.setdefault(name, {"max": 0, "price": None, "spot": None})
            entry["max"] = max(entry["max"], count)
            if count == 1:
                entry["price"] = entry["price"] or _price(row["Price"])
                entry["spot"] = entry["spot"] or _price(row["SpotPrice"])
    types = []
    for i, (name, entry) in enumerate(sorted(per_gpu.items())):
        type_id, display, memory_gb, manufacturer, community = _RUNPOD_TYPES[name]
        secure = entry["price"]
        types.append(
            {
                "id": type_id,
                "displayName": display,
                "manufacturer": manufacturer,
                "memoryInGb": memory_gb,
                "maxGpuCount": entry["max"],
                "maxGpuCountSecureCloud": entry["max"],
                "maxGpuCountCommunityCloud": entry["max"] if community else 0,
                "secureCloud": secure is not None,
                "communityCloud": community,
                "securePrice": secure,
                "secureSpotPrice": entry["spot"],
                "communityPrice": round(secure * 0.8, 2) if community and secure else None,
                "communitySpotPrice": round(secure * 0.5, 2) if community and secure else None,
                "oneWeekPrice": None,
                "oneMonthPrice": None,
                "threeMonthPrice": None,
                "cudaCores": 0,
                "_stock": _STOCK[i % len(_STOCK)],
            }
        )
    return types


def _graphql_error(message: str, code: str, status: int = 200) -> FakeResponse:
    return FakeResponse(
        status, {"errors": [{"message": message, "extensions": {"code": code}}], "data": None}
    )


class FakeRunPodApi(FakeApi):
    """RunPod's GraphQL endpoint: gpuTypes with variables, auth and fault switches."""

    def __init__(self, api_key: str = DEFAULT_RUNPOD_KEY, gpu_types: list[dict] | None = None):
        super().__init__()
        self.api_key = api_key
        self.gpu_types: list[dict[str, Any]] = (
            load_runpod_gpu_types() if gpu_types is None else gpu_types
        )
        self.auth_failure_status = 401
        self._graphql_errors: list[tuple[str, str]] = []

    def graphql_error_next(self, count: int, message: str, code: str) -> None:
        """Answer the next `count` authorised requests with HTTP 200 and a GraphQL error."""
        with self.lock:
            self._graphql_errors.extend([(message, code)] * count)

    def add_gpu_type(self, **fields: Any) -> dict[str, Any]:
        """Add a GPU type (a copy of the first one with `fields` changed)."""
        gpu_type = {**self.gpu_types[0], **fields}
        with self.lock:
            self.gpu_types.append(gpu_type)
        return gpu_type

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies ({query, variables, ...}) of every GraphQL request so far."""
        return [c.json() for c in self.calls if c.path.rstrip("/") == "/graphql"]

    def fault_response(self, status: int) -> FakeResponse:
        if status == 429:
            return FakeResponse(429, b"Too Many Requests", {"Content-Type": "text/plain"})
        return FakeResponse(status, b"upstream error", {"Content-Type": "text/plain"})

    def _authorised(self, request: RecordedRequest) -> bool:
        key = bearer_token(request) or (request.query.get("api_key") or [None])[0]
        return key == self.api_key

    def handle(self, request: RecordedRequest) -> FakeResponse:
        if request.path.rstrip("/") != "/graphql" or request.method != "POST":
            return FakeResponse(404, b"Not Found", {"Content-Type": "text/plain"})
        if not self._authorised(request):
            return _graphql_error("Unauthorized", "UNAUTHENTICATED", self.auth_failure_status)
        if self._graphql_errors:
            return _graphql_error(*self._graphql_errors.pop(0))
        try:
            body = request.json() or {}
            query = body["query"]
            variables = body.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return _graphql_error("Must provide query string.", "BAD_REQUEST", 400)
        if not re.search(r"\bgpuTypes\b", query):
            return _graphql_error(
                'Cannot query field on type "Query".', "GRAPHQL_VALIDATION_FAILED", 400
            )
        return FakeResponse(200, {"data": {"gpuTypes": self._gpu_types(query, variables)}})

    def _gpu_types(self, query: str, variables: dict[str, Any]) -> list[dict[str, Any]]:
        type_filter = _argument(query, "gpuTypes", variables) or {}
        price_input = _argument(query, "lowestPrice", variables) or {}
        rows = [
            t for t in self.gpu_types if "id" not in type_filter or t["id"] == type_filter["id"]
        ]
        wanted = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query))
        return [self._project(t, wanted, price_input) for t in rows]

    def _project(self, gpu_type: dict, wanted: set[str], price_input: dict) -> dict[str, Any]:
        out = {k: v for k, v in gpu_type.items() if k in wanted and not k.startswith("_")}
        if "lowestPrice" in wanted:
            out["lowestPrice"] = {
                k: v for k, v in self._lowest_price(gpu_type, price_input).items() if k in wanted
            }
        if "__typename" in wanted:
            out["__typename"] = "GpuType"
        return out

    @staticmethod
    def _lowest_price(gpu_type: dict, price_input: dict) -> dict[str, Any]:
        count = int(price_input.get("gpuCount") or 1)
        secure_only = price_input.get("secureCloud")
        clouds = {"secure": ("securePrice", "secureSpotPrice")}
        if secure_only is not True:
            clouds["community"] = ("communityPrice", "communitySpotPrice")
        if secure_only is False:
            clouds.pop("secure")
        on_demand = [gpu_type.get(k[0]) for k in clouds.values() if gpu_type.get(k[0])]
        spot = [gpu_type.get(k[1]) for k in clouds.values() if gpu_type.get(k[1])]
        if count > gpu_type.get("maxGpuCount", 0) or not on_demand:
            return {"minimumBidPrice": None, "uninterruptablePrice": None, "stockStatus": None}
        return {
            "minimumBidPrice": min(spot) if spot else None,
            "uninterruptablePrice": min(on_demand),
            "stockStatus": gpu_type.get("_stock", "High"),
            "minVcpu": 8 * count,
            "minMemory": 31 * count,
        }


def _argument(query: str, field_name: str, variables: dict[str, Any]) -> dict | None:
    """The value of `field(input: $var)` from `variables` (None when not given)."""
    match = re.search(rf"\b{field_name}\s*\(\s*input\s*:\s*\$(\w+)\s*\)", query)
    return variables.get(match.group(1)) if match else None


@contextmanager
def serve_runpod(api: FakeRunPodApi | None = None) -> Iterator[tuple[FakeRunPodApi, str]]:
    """Run a fake RunPod API on loopback: yields (api, base_url)."""
    api = api or FakeRunPodApi()
    with FakeServer(api) as server:
        yield api, server.url
