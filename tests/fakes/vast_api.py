"""A stateful fake of Vast.ai's REST API (offer search for now; instances come later).

Payloads follow the real API field for field, as documented in vast-ai/vast-cli
`openapi/yaml/search_offers.yaml` (POST /api/v0/bundles/) and used by `vast.py search
offers`: the body is the query itself, `{"verified": {"eq": true}, "gpu_ram": {"gte":
24000}, "type": "bid", "order": [["dph_total", "asc"]], "limit": 64, ...}`, with operators
eq, neq, gt, gte, lt, lte, in, nin (notin); the answer is `{"offers": [...]}`.

Offers are built from `tests/fixtures/catalog/vast.csv` (SkyPilot's snapshot of live Vast
offers): one offer per row, with Vast's own GPU name strings ("H100 SXM", "RTX 4090",
"A100 SXM4", "Tesla V100"), per-GPU `gpu_ram` in MB as nvidia-smi counts it (MiB),
`dph_total` = the catalog price. The snapshot has no bid prices (its SpotPrice is 0.00),
so `min_bid` is synthesised at 45 % of the GPU part (`dph_base`), in line with Vast's
"interruptible: 50 %+ cheaper". A few rows are made unverified or already rented so the
default filters have something to remove.

Auth: `Authorization: Bearer <key>` (or the legacy `?api_key=` parameter); a wrong or
missing key answers `auth_failure_status` (401 by default; Vast's OpenAPI file documents
404 with `{"error": "auth_error", "msg": "Invalid user key"}`).
"""

from __future__ import annotations

import ast
import csv
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .server import FakeApi, FakeResponse, FakeServer, RecordedRequest, bearer_token

__all__ = ["DEFAULT_VAST_KEY", "FakeVastApi", "load_vast_offers", "serve_vast"]

DEFAULT_VAST_KEY = "vast-test-key-0123456789abcdef"
CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "catalog" / "vast.csv"

# Facts Vast reports per offer, by its own gpu_name: (compute_cap, gpu_mem_bw GB/s,
# TFLOPS per GPU, dlperf per GPU). Approximate; only their shape matters to the adapter.
_GPU_FACTS: dict[str, tuple[int, float, float, float]] = {
    "H100 SXM": (900, 3350.0, 267.6, 190.0),
    "H100 NVL": (900, 3938.0, 239.0, 170.0),
    "H200": (900, 4800.0, 267.6, 200.0),
    "A100 SXM4": (800, 2039.0, 77.9, 100.0),
    "A40": (860, 696.0, 37.4, 45.0),
    "A10": (860, 600.0, 31.2, 38.0),
    "L40S": (890, 864.0, 91.6, 80.0),
    "RTX 6000Ada": (890, 960.0, 91.1, 80.0),
    "RTX A6000": (860, 768.0, 38.7, 48.0),
    "RTX A5000": (860, 768.0, 27.8, 36.0),
    "RTX A4000": (860, 448.0, 19.2, 25.0),
    "RTX 5090": (1200, 1792.0, 104.8, 110.0),
    "RTX 4090": (890, 1008.0, 82.6, 75.0),
    "RTX 4080S": (890, 736.0, 52.2, 50.0),
    "RTX 3090": (860, 936.0, 35.6, 40.0),
    "RTX 3060": (860, 360.0, 12.7, 15.0),
    "Tesla V100": (700, 900.0, 15.7, 21.0),
}

_CONTROL_KEYS = {"type", "order", "limit", "allocated_storage", "disable_bundling"}


def _vast_gpu_name(instance_type: str) -> str:
    """'1x-H100_SXM-32-65536' -> 'H100 SXM' (SkyPilot built the name from gpu_name)."""
    return instance_type.split("-")[1].replace("_", " ")


def _geolocation(region: str) -> str:
    """'Czechia, CZ, EU' -> 'Czechia, CZ'; ', US, NA' -> 'US' (SkyPilot added the continent)."""
    parts = [p.strip() for p in region.split(",")]
    parts = parts[:-1] if len(parts) == 3 else parts
    return ", ".join(p for p in parts if p)


def load_vast_offers(path: Path = CATALOG) -> list[dict[str, Any]]:
    """One realistic Vast offer per catalog row (deterministic)."""
    offers = []
    with path.open(newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            gpu_name = _vast_gpu_name(row["InstanceType"])
            num_gpus = int(row["AcceleratorCount"])
            info = ast.literal_eval(row["GpuInfo"])
            gpu_ram = round(info["TotalGpuMemoryInMiB"] / num_gpus)
            cc, bw, tflops, dlperf = _GPU_FACTS.get(gpu_name, (800, 900.0, 30.0, 30.0))
            dph_total = float(row["Price"])
            disk_space = 200.0 + 50 * (i % 7)
            storage_cost = 0.10 + 0.01 * (i % 5)  # $/GB/month
            # the search prices a small default allocation: the disk part of dph_total
            storage_dph = round(10 * storage_cost / 30 / 24, 6)
            dph_base = round(dph_total - storage_dph, 6)
            offer_id = 20_000_000 + 7919 * i
            offers.append(
                {
                    "id": offer_id,
                    "ask_contract_id": offer_id,
                    "bundle_id": 900_000_000 + i,
                    "machine_id": 30_000 + 13 * i,
                    "host_id": 100_000 + i,
                    "gpu_name": gpu_name,
                    "gpu_arch": "nvidia",
                    "num_gpus": num_gpus,
                    "gpu_ram": gpu_ram,
                    "gpu_total_ram": gpu_ram * num_gpus,
                    "gpu_frac": 1.0,
                    "gpu_mem_bw": bw,
                    "gpu_max_power": 450,
                    "gpu_display_active": False,
                    "compute_cap": cc,
                    "total_flops": round(tflops * num_gpus, 1),
                    "dlperf": round(dlperf * num_gpus, 2),
                    "dlperf_per_dphtotal": round(dlperf * num_gpus / dph_total, 2),
                    "flops_per_dphtotal": round(tflops * num_gpus / dph_total, 2),
                    "cuda_max_good": 12.8 if cc < 1200 else 13.0,
                    "driver_version": "570.133.07",
                    "cpu_arch": "amd64",
                    "cpu_name": "AMD EPYC 7B13 64-Core Processor",
                    "cpu_cores": int(float(row["vCPUs"])),
                    "cpu_cores_effective": float(row["vCPUs"]),
                    "cpu_ram": int(float(row["MemoryGiB"]) * 1024),
                    "cpu_ghz": 3.0,
                    "disk_space": disk_space,
                    "disk_bw": 2500.0,
                    "disk_name": "Samsung SSD 990 PRO",
                    "inet_down": 900.0 + 100 * (i % 9),
                    "inet_up": 800.0 + 50 * (i % 9),
                    "inet_down_cost": 0.005,
                    "inet_up_cost": 0.005,
                    "internet_down_cost_per_tb": 5.0,
                    "internet_up_cost_per_tb": 5.0,
                    "direct_port_count": 100,
                    "pci_gen": 4.0,
                    "pcie_bw": 24.5,
                    "geolocation": _geolocation(row["Region"]),
                    "geolocode": 1_000 + i,
                    "reliability": round(0.95 + 0.0049 * (i % 10), 4),
                    "reliability2": round(0.95 + 0.0049 * (i % 10), 4),
                    "dph_base": dph_base,
                    "dph_total": dph_total,
                    "min_bid": round(0.45 * dph_base, 6),
                    "storage_cost": storage_cost,
                    "storage_total_cost": storage_dph,
                    "is_bid": False,
                    "verified": i % 11 != 5,
                    "verification": "verified" if i % 11 != 5 else "unverified",
                    "rentable": True,
                    "rented": i % 17 == 16,
                    "external": None,
                    "static_ip": True,
                    "hosting_type": 1,
                    "duration": 2_592_000.0,
                    "end_date": 1_900_000_000,
                    "vms_enabled": False,
                    "resource_type": "gpu",
                    "cluster_id": None,
                    "score": 100.0 - i,
                    "search": {
                        "gpuCostPerHour": dph_base,
                        "diskHour": storage_dph,
                        "totalHour": dph_total,
                    },
                }
            )
    return offers


def _matches(value: Any, op: str, target: Any) -> bool:
    if isinstance(target, bool) and value is None:
        value = False  # the API treats a null flag as false
    if value is None:
        return op in ("neq", "nin", "notin")
    if op == "eq":
        return value == target
    if op == "neq":
        return value != target
    if op in ("in", "nin", "notin"):
        found = value in target
        return found if op == "in" else not found
    if op == "gt":
        return value > target
    if op == "gte":
        return value >= target
    if op == "lt":
        return value < target
    if op == "lte":
        return value <= target
    raise ValueError(f"unknown operator {op!r}")


class FakeVastApi(FakeApi):
    """Vast's offer search, with auth, filters, ordering, limit and fault switches."""

    def __init__(self, api_key: str = DEFAULT_VAST_KEY, offers: list[dict] | None = None):
        super().__init__()
        self.api_key = api_key
        self.offers: list[dict[str, Any]] = load_vast_offers() if offers is None else offers
        self.auth_failure_status = 401
        self._ids = itertools.count(29_000_000)

    def add_offer(self, **fields: Any) -> dict[str, Any]:
        """Add an offer (a copy of the first catalog offer with `fields` changed)."""
        offer_id = next(self._ids)
        offer = {**self.offers[0], "id": offer_id, "ask_contract_id": offer_id, **fields}
        if "gpu_ram" in fields and "gpu_total_ram" not in fields:
            offer["gpu_total_ram"] = offer["gpu_ram"] * offer["num_gpus"]
        with self.lock:
            self.offers.append(offer)
        return offer

    @property
    def searches(self) -> list[dict[str, Any]]:
        """The JSON bodies of every offer search received so far."""
        return [c.json() for c in self.calls if c.path.rstrip("/") == "/api/v0/bundles"]

    def _authorised(self, request: RecordedRequest) -> bool:
        key = bearer_token(request) or (request.query.get("api_key") or [None])[0]
        return key == self.api_key

    def handle(self, request: RecordedRequest) -> FakeResponse:
        if not self._authorised(request):
            return FakeResponse(
                self.auth_failure_status,
                {"success": False, "error": "auth_error", "msg": "Invalid user key"},
            )
        if request.method == "POST" and request.path.rstrip("/") == "/api/v0/bundles":
            return self._search(request)
        return FakeResponse(404, {"success": False, "error": "not_found", "msg": "Not found"})

    def _search(self, request: RecordedRequest) -> FakeResponse:
        try:
            query = request.json() or {}
        except ValueError:
            return FakeResponse(400, {"error": "invalid_request", "msg": "Invalid json body"})
        rows = list(self.offers)
        try:
            for key, condition in query.items():
                if key in _CONTROL_KEYS:
                    continue
                if not isinstance(condition, dict):
                    raise ValueError(f"filter {key} must be an object")
                for op, target in condition.items():
                    rows = [r for r in rows if _matches(r.get(key), op, target)]
        except (TypeError, ValueError) as exc:
            return FakeResponse(400, {"error": "invalid_request", "msg": str(exc)})
        kind = query.get("type", "on-demand")
        if kind not in ("on-demand", "bid", "reserved"):
            return FakeResponse(400, {"error": "invalid_request", "msg": f"bad type {kind}"})
        for field_name, direction in reversed(query.get("order") or [["score", "desc"]]):
            rows.sort(key=lambda r, f=field_name: r.get(f) or 0, reverse=direction == "desc")
        limit = int(query.get("limit") or 64)
        return FakeResponse(200, {"offers": [dict(r) for r in rows[:limit]]})


@contextmanager
def serve_vast(api: FakeVastApi | None = None) -> Iterator[tuple[FakeVastApi, str]]:
    """Run a fake Vast API on loopback: yields (api, base_url)."""
    api = api or FakeVastApi()
    with FakeServer(api) as server:
        yield api, server.url
