"""A stateful fake of Vast.ai's REST API: offer search and instances that really run.

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

Instances (vast-ai/vast-cli `openapi/yaml/create_instance.yaml`, `show_instance(s).yaml`,
`destroy_instance.yaml`):

    PUT    /api/v0/asks/{ask_id}/    rent: {"success": true, "new_contract": id}; the offer
                                     leaves the search until the instance is destroyed.
                                     Unknown id: 404 "no_such_ask ... is not available";
                                     taken: 410 "... is no longer available"; a bid below
                                     min_bid: 400 invalid_price; limits as documented
                                     (label 256, args+onstart 4096, env 32768 chars).
    GET    /api/v0/instances/        {"instances": [row, ...]}
    GET    /api/v0/instances/{id}/   {"instances": row} ({"instances": null} if unknown)
    DELETE /api/v0/instances/{id}/   {"success": true}; 404 "Instance not found" after

A row carries the real field names (actual_status, cur_state, next_state,
intended_status, status_msg, label, image_uuid, image_args, image_runtype, extra_env as
[[k, v], ...], public_ipaddr "127.0.0.1", ports {"8000/tcp": [{"HostIp": "0.0.0.0",
"HostPort": "<guard's loopback port>"}]} once running, dph_total, start_date, gpu_name,
machine_id, ...). What runs: in the args launch mode `onstart` is the entrypoint and
`args` its arguments, so `sh -c <script>` runs `<script>`; in ssh/jupyter modes `onstart`
is the script. It runs through `FakeFleet`/`FakeInstanceRunner` (tests/fakes/instances.py)
with CONTAINER_ID, a per-instance CONTAINER_API_KEY and VAST_URL (this fake's URL) in
its environment. The scoped key is accepted for one thing only: DELETE of its own
instance (`api.fleet.destroyed[iid].destroyed_by == "scoped"` proves the guard used it).

Lifecycle fault switches live on `api.fleet` (see instances.py): `boot_delay_s`,
`vanish_next(n)` (the next rents answer 410 and the offer is gone), `stall_next(n)`
(stays loading), `engine_args = "--never-ready"`, `preempt(iid, status="exited",
gone=False)`; billing: `api.fleet.cost_usd(iid)`. `serve_vast()` binds `api.url` and
stops every instance's processes on exit.
"""

from __future__ import annotations

import ast
import csv
import itertools
import re
import secrets
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .instances import FakeFleet, FakeInstance
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
_INSTANCE_PATH = re.compile(r"/api/v0/instances/(\d+)/?")
_RENT_PATH = re.compile(r"/api/v0/asks/(\d+)/?")
_PORT_KEY = re.compile(r"-p\s+(?:[\d.]+:)?(\d+):(\d+)(?:/tcp)?")
_SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash", "/usr/bin/bash"}
# Machine facts an instance row repeats from the offer it was rented on.
_MACHINE_FIELDS = (
    "machine_id", "host_id", "bundle_id", "gpu_name", "gpu_arch", "num_gpus", "gpu_ram",
    "gpu_frac", "gpu_mem_bw", "compute_cap", "total_flops", "dlperf", "cpu_arch", "cpu_name",
    "cpu_cores", "cpu_cores_effective", "cpu_ram", "disk_name", "disk_bw", "inet_down",
    "inet_up", "geolocation", "reliability2", "verification", "static_ip", "hosting_type",
    "dph_base", "min_bid", "storage_cost", "end_date", "direct_port_count", "pci_gen",
)  # fmt: skip


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

    def __init__(
        self,
        api_key: str = DEFAULT_VAST_KEY,
        offers: list[dict] | None = None,
        *,
        fleet: FakeFleet | None = None,
    ):
        super().__init__()
        self.api_key = api_key
        self.offers: list[dict[str, Any]] = load_vast_offers() if offers is None else offers
        self.auth_failure_status = 401
        self._ids = itertools.count(29_000_000)
        self.fleet = fleet or FakeFleet()
        self.url: str | None = None  # VAST_URL inside instances; serve_vast sets it
        self.scoped_keys: dict[str, str] = {}  # instance id -> its CONTAINER_API_KEY
        self._instance_ids = itertools.count(31_000_001)
        self.env_max_total_chars = 32_768  # documented input limits (create_instance.yaml)
        self.args_max_chars = 4_096

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

    @property
    def rents(self) -> list[dict[str, Any]]:
        """The JSON bodies of every rent (PUT /api/v0/asks/{id}/) received so far."""
        return [c.json() for c in self.calls if c.method == "PUT" and _RENT_PATH.fullmatch(c.path)]

    def _caller(self, request: RecordedRequest) -> str | None:
        """Who is calling: "account" (the account key), "scoped" (an instance's
        CONTAINER_API_KEY, on DELETE of that very instance only) or None (rejected)."""
        key = bearer_token(request) or (request.query.get("api_key") or [None])[0]
        if key == self.api_key:
            return "account"
        target = _INSTANCE_PATH.fullmatch(request.path)
        if (
            key
            and target
            and request.method == "DELETE"
            and self.scoped_keys.get(target.group(1)) == key
        ):
            return "scoped"
        return None

    def handle(self, request: RecordedRequest) -> FakeResponse:
        caller = self._caller(request)
        if caller is None:
            return FakeResponse(
                self.auth_failure_status,
                {"success": False, "error": "auth_error", "msg": "Invalid user key"},
            )
        path, method = request.path, request.method
        if method == "POST" and path.rstrip("/") == "/api/v0/bundles":
            return self._search(request)
        if method == "PUT" and (rent := _RENT_PATH.fullmatch(path)):
            return self._rent(rent.group(1), request)
        if method == "GET" and path.rstrip("/") == "/api/v0/instances":
            return FakeResponse(200, {"instances": [self.row(i) for i in self.fleet.live()]})
        if one := _INSTANCE_PATH.fullmatch(path):
            if method == "GET":
                inst = self.fleet.get(one.group(1))
                return FakeResponse(200, {"instances": self.row(inst) if inst else None})
            if method == "DELETE":
                return self._destroy(one.group(1), caller)
        return FakeResponse(404, {"success": False, "error": "not_found", "msg": "Not found"})

    def close(self) -> None:
        """Stop every instance's processes (serve_vast does this on exit)."""
        self.fleet.close()

    # -- instances ------------------------------------------------------------------------
    def _rent(self, ask_id: str, request: RecordedRequest) -> FakeResponse:
        offer = next((o for o in self.offers if str(o["id"]) == ask_id), None)
        if offer is None:
            msg = f"error 404/3603: no_such_ask Instance type by id {ask_id} is not available."
            return _error(404, "invalid_args", msg, ask_id=int(ask_id))
        if offer.get("rented") or self.fleet.take_vanish():
            self.offers.remove(offer)  # somebody else got it
            msg = f"error 410/3907: no_such_ask Instance type {ask_id} is no longer available."
            return _error(410, "no_such_ask", msg, ask_id=int(ask_id))
        try:
            body = request.json() or {}
            env = _parse_env(body.get("env"))
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, "invalid_args", f"error 400/1782: Invalid args: {exc}")
        problem = self._invalid(body, env, offer)
        if problem:
            return _error(400, *problem, ask_id=int(ask_id))
        if self.url is None:
            return _error(500, "fake_unbound", "FakeVastApi.url is unset (use serve_vast)")
        iid = str(next(self._instance_ids))
        self.scoped_keys[iid] = secrets.token_hex(32)
        injected = {
            "CONTAINER_ID": iid,
            "CONTAINER_API_KEY": self.scoped_keys[iid],
            "VAST_URL": self.url,
            "PUBLIC_IPADDR": "127.0.0.1",
        }
        is_bid = body.get("price") is not None
        storage_dph = float(offer["dph_total"]) - float(offer["dph_base"])
        price = float(body["price"]) + storage_dph if is_bid else float(offer["dph_total"])
        self.fleet.create(
            iid,
            label=str(body.get("label") or ""),
            image=str(body["image"]),
            bootstrap=_script(body),
            env={k: v for k, v in env.items() if not _PORT_KEY.fullmatch(k)},
            injected=injected,
            price_per_hour_usd=price,
            extra={"offer": offer, "body": body, "env": env, "is_bid": is_bid},
        )
        self.offers.remove(offer)
        return FakeResponse(200, {"success": True, "new_contract": int(iid)})

    def _invalid(
        self, body: dict[str, Any], env: dict[str, str], offer: dict[str, Any]
    ) -> tuple[str, str] | None:
        if not body.get("image"):
            return "invalid_args", "error 400/3467: Invalid args: 'image' is required"
        if len(str(body.get("label") or "")) > 256:
            return "invalid_args", "error 400: label longer than 256 characters"
        args = body.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return "invalid_args", "error 400: args must be a list of strings"
        arg_chars = sum(map(len, args)) + len(body.get("args_str") or "")
        if arg_chars + len(body.get("onstart") or "") > self.args_max_chars:
            return "invalid_args", f"error 400: args and onstart over {self.args_max_chars}"
        if sum(len(k) + len(v) for k, v in env.items()) > self.env_max_total_chars:
            return "invalid_args", f"error 400: env over {self.env_max_total_chars} characters"
        if any(len(v) > 256 for v in env.values()):  # create_instance.yaml: maxLength 256
            return "invalid_args", "error 400: an env value is longer than 256 characters"
        if float(body.get("disk") or 8) > float(offer.get("disk_space") or 0):
            return "invalid_args", "error 400: not enough disk space on this machine"
        price = body.get("price")
        if price is not None and not (max(float(offer["min_bid"]), 0.001) <= float(price) <= 128):
            return "invalid_price", f"error 400: bid {price} is below the minimum or over 128"
        return None

    def _destroy(self, iid: str, caller: str) -> FakeResponse:
        inst = self.fleet.instances.get(iid)
        if inst is None or not self.fleet.destroy(iid, by=caller):
            return _error(404, "not_found", "Instance not found")
        self.offers.append(inst.extra["offer"])  # the machine is offered again
        return FakeResponse(200, {"success": True})

    def row(self, inst: FakeInstance) -> dict[str, Any]:
        """The instance as GET /api/v0/instances/ shows it."""
        offer, body, env = inst.extra["offer"], inst.extra["body"], inst.extra["env"]
        now = self.fleet.clock()
        running = inst.status == "running" and inst.process is not None
        ports: dict[str, list[dict[str, str]]] = {}
        published = [m.group(2) for m in map(_PORT_KEY.fullmatch, env) if m]
        guard = env.get("DEPLOYCTL_GUARD_PORT")
        container_port = guard if guard in published else (published or [None])[0]
        if running and container_port:
            host_port = str(inst.process.guard_port)
            ports[f"{container_port}/tcp"] = [
                {"HostIp": "0.0.0.0", "HostPort": host_port},
                {"HostIp": "::", "HostPort": host_port},
            ]
        contract_state = "stopped" if inst.status == "stopped" else "running"
        return {
            **{k: offer.get(k) for k in _MACHINE_FIELDS},
            "id": int(inst.instance_id),
            "actual_status": inst.status,
            "intended_status": "running",
            "cur_state": contract_state,
            "next_state": contract_state,
            "label": inst.label or None,
            "image_uuid": inst.image,
            "image_args": body.get("args") or [],
            "image_runtype": body.get("runtype") or "ssh",
            "extra_env": [[k, v] for k, v in env.items()],
            "onstart": body.get("onstart"),
            "status_msg": inst.message,
            "public_ipaddr": "127.0.0.1",
            "local_ipaddrs": "127.0.0.1 \n",
            "ports": ports,
            "start_date": inst.created_at,
            "uptime_mins": (now - inst.running_at) / 60 if inst.running_at else None,
            "duration": now - inst.created_at,
            "is_bid": inst.extra["is_bid"],
            "dph_total": round(inst.price_per_hour_usd, 6),
            "disk_space": float(body.get("disk") or 8),
            "jupyter_token": secrets.token_hex(16),
        }

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
        api.url = server.url
        try:
            yield api, server.url
        finally:
            api.close()


def _error(status: int, error: str, msg: str, **extra: Any) -> FakeResponse:
    return FakeResponse(status, {"success": False, "error": error, "msg": msg, **extra})


def _parse_env(value: Any) -> dict[str, str]:
    """The env as a JSON object (what the API takes), or the CLI's docker-flag string."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    env: dict[str, str] = {}
    words = iter(shlex.split(value))
    for flag in words:
        arg = next(words, "")
        if flag == "-e":
            key, _, val = arg.partition("=")
            env[key] = val
        elif flag == "-p":
            env[f"-p {arg}"] = "1"
    return env


def _script(body: dict[str, Any]) -> str | None:
    """The shell script the container runs, or None when it is not `<shell> -c script`."""
    if body.get("runtype", "ssh") != "args":
        return body.get("onstart") or None  # ssh/jupyter: onstart runs after Vast's setup
    argv = shlex.split(body.get("onstart") or "")
    argv += body.get("args") or shlex.split(body.get("args_str") or "")
    if len(argv) >= 3 and argv[0] in _SHELLS and argv[1] == "-c":
        return argv[2]
    return None
