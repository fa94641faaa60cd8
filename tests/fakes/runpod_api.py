"""A stateful fake of RunPod's GraphQL API: GPU types, and pods that really run.

Shapes follow the real API as used by runpod/runpod-python (`runpod/api/graphql.py`,
`api/queries/gpus.py`, `api/queries/pods.py`, `api/mutations/pods.py`), dstackai/gpuhunt
and dstack's RunPod backend, and the schema's input types:

    POST /graphql   {"query": "query GpuTypes($input: GpuTypeFilter, ...) { gpuTypes(input:
                     $input) { id displayName ... lowestPrice(input: $lowestPriceInput)
                     { minimumBidPrice uninterruptablePrice stockStatus } } }", "variables"}
    200             {"data": {"gpuTypes": [{"id": "NVIDIA GeForce RTX 4090", ...}]}}
    errors          {"errors": [{"message": "...", "extensions": {"code": "..."}}], "data": null}

GPU types come from `tests/fixtures/catalog/runpod.csv` (SkyPilot's snapshot, secure
cloud only): per-GPU secure and spot prices from its 1x rows, `maxGpuCount` from its
largest row; community prices are synthesised (80 % of secure on-demand, 50 % for spot)
for the types RunPod's community cloud carries. gpuTypes fields are returned when their
name appears in the query text; variables are honoured (`input.id`,
`lowestPriceInput.gpuCount` / `secureCloud`).

Pods (operations are parsed: selection sets are validated against the real type's field
names and projected; anything else is a GRAPHQL_VALIDATION_FAILED 400):

    mutation ($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input:
        $input) { id ... } }                   on-demand pod
    mutation ($input: PodRentInterruptableInput!) { podRentInterruptable(...) { ... } }
                                               spot pod; `bidPerGpu` required
    query ($input: PodFilter!) { pod(input: $input) { id desiredStatus costPerHr machine
        { gpuDisplayName } runtime { uptimeInSeconds ports { ip isIpPublic privatePort
        publicPort type } } ... } }           null for an unknown or terminated pod
    query { myself { pods { ... } } }          live pods
    mutation ($input: PodTerminateInput!) { podTerminate(input: $input) }   -> null;
        unknown: error "pod not found to terminate" (the text dstack matches)
    mutation ($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }
        exists (the pod shows EXITED and still bills); `api.stop_calls` records it

The pod operations insist on variables: a string or number literal anywhere in the query
text, or an argument that is not a `$variable`, is refused (400) and recorded in
`api.literal_queries`. Deploy inputs are checked against the input type's field list
(an unknown field is the server's "Field ... is not defined by type ..." 400) and
types (env a list of {key, value} strings; terminateAfter an ISO-8601 time); every
accepted input is kept in `api.deploys`. A `terminateAfter` that has passed terminates
the pod (`destroyed_by == "terminateAfter"`), as RunPod would.

What runs: dockerArgs as RunPod reads it. The JSON form `{"entrypoint": [...], "cmd":
[...]}` replaces the image's entrypoint, so `{"entrypoint": ["/bin/sh", "-c"], "cmd":
[script]}` runs the script; a plain string is the CMD, appended to the image's
ENTRYPOINT (for vllm/vllm-openai that is the API server itself, which cannot run a
shell script: the pod exits). It runs through `FakeFleet`/`FakeInstanceRunner`
(tests/fakes/instances.py) with what RunPod injects: RUNPOD_POD_ID, a per-pod scoped
RUNPOD_API_KEY, RUNPOD_GPU_COUNT, and RUNPOD_API_BASE_URL = this fake's base URL
(the guard posts its podTerminate there). The scoped key is accepted for one thing only:
podTerminate of its own pod (`api.fleet.destroyed[pod_id].destroyed_by == "scoped"`
proves the guard used it); anything else with it is a FORBIDDEN error, kept in
`api.denied`.

Execution errors answer HTTP 200 with `{"errors": [{"message", "path": [field]}],
"data": {field: null}}`, as a GraphQL server does.

Statuses: FakeFleet's loading -> desiredStatus RUNNING, runtime null; running ->
RUNNING with a runtime (ports from the deploy's `ports`); exited/offline/stopped ->
EXITED, runtime null. Endpoints: a second loopback server, the proxy router, stands in
for `https://{pod_id}-{port}.proxy.runpod.net`: `api.proxy_url` is the template
`http://127.0.0.1:<router>/proxy/{pod_id}-{port}` (give it to the adapter as
RUNPOD_PROXY_URL); `/proxy/<pod>-<port>/<path>` is forwarded to that pod's guard,
streamed chunk by chunk (SSE is not buffered). A pod that is not running answers 502,
an unknown pod or unpublished port 404.

Fault switches: `fail_next(n, status)` (429/5xx), `latency_s`, `drop_next(n)` (before
auth, from FakeApi); `graphql_error_next(n, message, code)`; `no_capacity_next(n)` (the
next deploys answer RunPod's "There are no longer any instances available with the
requested specifications. Please refresh and try again."; `fleet.vanish_next(n)` does
the same); `lose_deploy_answer_next(n)` (the pod is created, the answer is a 502);
on `api.fleet`:
`boot_delay_s`, `stall_next(n)` (the pod never runs: runtime stays null),
`engine_args = "--never-ready"` (FAKE_ENGINE_ARGS for the engine), `preempt(pod_id)`
(killed while serving: EXITED until terminated); billing: `api.fleet.cost_usd(pod_id)`.

Auth: `Authorization: Bearer <key>` (or the legacy `?api_key=`). A wrong or missing key
answers `auth_failure_status` (401 by default; 200 reproduces the API's GraphQL-level
"Unauthorized" error). `serve_runpod()` binds `api.url` and `api.proxy_url` and stops
every pod's processes on exit.
"""

from __future__ import annotations

import csv
import http.client
import json
import re
import secrets
import shlex
import string
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .instances import FakeFleet, FakeInstance
from .server import FakeApi, FakeResponse, FakeServer, RecordedRequest, bearer_token

__all__ = [
    "DEFAULT_RUNPOD_KEY",
    "NO_CAPACITY",
    "FakeRunPodApi",
    "load_runpod_gpu_types",
    "parse_operation",
    "serve_runpod",
]

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


# -- a small GraphQL reader: enough to validate and project what clients send ----------

_TOKEN = re.compile(
    r'"""[\s\S]*?"""|"(?:\\.|[^"\\\n])*"|\.\.\.|\$?[A-Za-z_][A-Za-z0-9_]*'
    r"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[{}()\[\]:!=,@|&]"
)


class GraphQLSyntaxError(ValueError):
    pass


@dataclass
class Field:
    """One selected field: its name, arguments (name -> raw value token) and selection."""

    name: str
    args: dict[str, str]
    children: list[Field] | None


@dataclass
class Operation:
    kind: str  # query | mutation
    variable_types: dict[str, str]  # "$input" -> "PodFilter!"
    fields: list[Field]
    literals: list[str]  # string/number literals and non-variable argument values


def parse_operation(query: str) -> Operation:
    """Parse one GraphQL operation (no fragments). Raises GraphQLSyntaxError."""
    text = re.sub(r"#[^\n]*", "", query)
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise GraphQLSyntaxError("Syntax Error: Unexpected <EOF>.")
    literals = [t for t in tokens if t[0] == '"' or t[0].isdigit() or t[0] == "-"]
    pos, kind, variable_types = 0, "query", {}
    if tokens[0] in ("query", "mutation", "subscription"):
        kind, pos = tokens[0], 1
        if pos < len(tokens) and re.fullmatch(r"[A-Za-z_]\w*", tokens[pos]):
            pos += 1
        if pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            while pos < len(tokens) and tokens[pos] != ")":
                name = tokens[pos]
                if not name.startswith("$") or tokens[pos + 1] != ":":
                    raise GraphQLSyntaxError(f"Syntax Error: Unexpected {name!r}.")
                pos += 2
                type_tokens = []
                while tokens[pos] not in (")", ",", "=") and not tokens[pos].startswith("$"):
                    type_tokens.append(tokens[pos])
                    pos += 1
                variable_types[name] = "".join(type_tokens)
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
    if pos >= len(tokens) or tokens[pos] != "{":
        raise GraphQLSyntaxError("Syntax Error: Expected '{'.")
    try:
        fields, pos = _selection(tokens, pos + 1, literals)
    except IndexError:
        raise GraphQLSyntaxError("Syntax Error: Unexpected <EOF>.") from None
    if pos != len(tokens):
        raise GraphQLSyntaxError(f"Syntax Error: Unexpected {tokens[pos]!r}.")
    return Operation(kind, variable_types, fields, literals)


def _selection(tokens: list[str], pos: int, literals: list[str]) -> tuple[list[Field], int]:
    fields = []
    while tokens[pos] != "}":
        if tokens[pos] == ",":
            pos += 1
            continue
        if tokens[pos] == "...":
            raise GraphQLSyntaxError("fragments are not supported by this fake")
        name = tokens[pos]
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise GraphQLSyntaxError(f"Syntax Error: Unexpected {name!r}.")
        pos += 1
        if tokens[pos] == ":":  # alias
            name, pos = tokens[pos + 1], pos + 2
        args: dict[str, str] = {}
        if tokens[pos] == "(":
            pos += 1
            while tokens[pos] != ")":
                if tokens[pos] == ",":
                    pos += 1
                    continue
                arg, value = tokens[pos], tokens[pos + 2]
                if tokens[pos + 1] != ":":
                    raise GraphQLSyntaxError(f"Syntax Error: Expected ':' after {arg!r}.")
                args[arg] = value
                if not value.startswith("$"):
                    literals.append(f"{arg}: {value}")
                pos += 2
                depth = 0
                while True:  # skip the value (an object or list literal may nest)
                    depth += tokens[pos] in ("{", "[")
                    depth -= tokens[pos] in ("}", "]")
                    pos += 1
                    if depth <= 0:
                        break
            pos += 1
        children = None
        if tokens[pos] == "{":
            children, pos = _selection(tokens, pos + 1, literals)
        fields.append(Field(name, args, children))
    return fields, pos + 1


def _words(text: str) -> list[str]:
    return text.split()


# Object types as far as clients select them: field -> None (scalar) or nested type.
_PORT_TYPE: dict[str, Any] = dict.fromkeys(
    ("ip", "isIpPublic", "privatePort", "publicPort", "type", "__typename")
)
_RUNTIME_TYPE: dict[str, Any] = {
    "uptimeInSeconds": None,
    "ports": _PORT_TYPE,
    "gpus": dict.fromkeys(("id", "gpuUtilPercent", "memoryUtilPercent")),
    "container": dict.fromkeys(("cpuPercent", "memoryPercent")),
    "__typename": None,
}
_MACHINE_TYPE: dict[str, Any] = dict.fromkeys(
    _words("""id costPerHr currentPricePerGpu diskMBps gpuAvailable gpuDisplayName gpuTypeId
    listed location machineType maintenanceEnd maintenanceNote maintenanceStart
    maxDownloadSpeedMbps maxUploadSpeedMbps note podHostId runpodIp secureCloud
    supportPublicIp minPodGpuCount dataCenterId cpuTypeId cpuCount vcpuTotal memoryTotal
    __typename""")
)
_POD_TYPE: dict[str, Any] = {
    **dict.fromkeys(
        _words("""lowestBidPriceToResume aiApiId apiKey consumerUserId containerDiskInGb
        containerRegistryAuthId costMultiplier costPerHr createdAt adjustedCostPerHr
        desiredStatus dockerArgs dockerId env gpuCount gpuPowerLimitPercent id imageName
        lastStatusChange locked machineId memoryInGb name podType port ports templateId
        uptimeSeconds vcpuCount version volumeEncrypted volumeInGb volumeKey
        volumeMountPath lastStartedAt cpuFlavorId machineType networkVolumeId
        __typename""")
    ),
    "machine": _MACHINE_TYPE,
    "runtime": _RUNTIME_TYPE,
}
_TYPE_NAMES = {
    id(_POD_TYPE): "Pod",
    id(_MACHINE_TYPE): "PodMachineInfo",
    id(_RUNTIME_TYPE): "PodRuntime",
    id(_PORT_TYPE): "PodRuntimePorts",
}
_USER_TYPE: dict[str, Any] = {"pods": _POD_TYPE}
# Serverless endpoints and templates: an account without any here (every `reap` asks);
# tests/fakes/runpod_serverless_api.py serves real ones.
_USER_TYPE["endpoints"] = dict.fromkeys(_words("""id name templateId gpuIds gpuCount workersMin
    workersMax idleTimeout executionTimeoutMs scalerType scalerValue flashBootType locations
    networkVolumeId type computeType instanceIds userId allowedCudaVersions __typename"""))
_USER_TYPE["podTemplates"] = {
    **dict.fromkeys(_words("""id name imageName isServerless containerDiskInGb volumeInGb
    volumeMountPath dockerArgs ports readme startSsh startJupyter isPublic category
    containerRegistryAuthId advancedStart boundEndpointId __typename""")),
    "env": dict.fromkeys(("key", "value")),
}

# Input types (runpod schema): the fields each accepts.
_DEPLOY_FIELDS = set(
    _words("""aiApiId cloudType containerDiskInGb countryCode deployCost dockerArgs env gpuCount
    gpuTypeId gpuTypeIdList imageName minDisk minDownload minMemoryInGb minUpload
    minVcpuCount name networkVolumeId port ports startJupyter startSsh stopAfter
    supportPublicIp templateId terminateAfter volumeInGb volumeKey volumeMountPath
    dataCenterId savingsPlan cudaVersion allowedCudaVersions instanceIds computeType""")
)
_SPOT_FIELDS = (_DEPLOY_FIELDS - {"aiApiId", "deployCost", "gpuTypeIdList", "savingsPlan"}) | {
    "bidPerGpu"
}
_INT_FIELDS = {"gpuCount", "containerDiskInGb", "volumeInGb", "minVcpuCount", "minMemoryInGb"}
_BOOL_FIELDS = {"supportPublicIp", "startSsh", "startJupyter"}
_STRING_FIELDS = {"name", "imageName", "gpuTypeId", "dockerArgs", "ports", "volumeMountPath"}

# root field -> (operation kind, input type of its `input` argument, result type)
_ROOTS: dict[str, tuple[str, str | None, dict[str, Any] | None]] = {
    "pod": ("query", "PodFilter", _POD_TYPE),
    "myself": ("query", None, _USER_TYPE),
    "podFindAndDeployOnDemand": ("mutation", "PodFindAndDeployOnDemandInput", _POD_TYPE),
    "podRentInterruptable": ("mutation", "PodRentInterruptableInput", _POD_TYPE),
    "podTerminate": ("mutation", "PodTerminateInput", None),
    "podStop": ("mutation", "PodStopInput", _POD_TYPE),
}

# Image ENTRYPOINTs the fake knows (a plain dockerArgs string is appended to these).
_IMAGE_ENTRYPOINTS = {
    "vllm/vllm-openai": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
    "ghcr.io/huggingface/text-generation-inference": ["text-generation-launcher"],
}

NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)


def _validate(fields: list[Field], schema: dict[str, Any], type_name: str) -> str | None:
    """The first validation error of a selection against a type, or None."""
    for f in fields:
        if f.name not in schema:
            return f'Cannot query field "{f.name}" on type "{type_name}".'
        sub = schema[f.name]
        if sub is None and f.children is not None:
            return f'Field "{f.name}" must not have a selection since it is a scalar.'
        if sub is not None:
            sub_name = _TYPE_NAMES.get(id(sub), "Object")
            if not f.children:
                return f'Field "{f.name}" of type "{sub_name}" must have a selection of subfields.'
            error = _validate(f.children, sub, sub_name)
            if error:
                return error
    return None


def _project(value: Any, fields: list[Field] | None) -> Any:
    if fields is None or value is None:
        return value
    if isinstance(value, list):
        return [_project(v, fields) for v in value]
    return {f.name: _project(value.get(f.name), f.children) for f in fields}


def _graphql_error(message: str, code: str, status: int = 200) -> FakeResponse:
    return FakeResponse(
        status, {"errors": [{"message": message, "extensions": {"code": code}}], "data": None}
    )


def _field_error(root: str, message: str, code: str = "INTERNAL_SERVER_ERROR") -> FakeResponse:
    """An execution error as a GraphQL server reports it: HTTP 200, the field null."""
    error = {"message": message, "path": [root], "extensions": {"code": code}}
    return FakeResponse(200, {"errors": [error], "data": {root: None}})


def _invalid(message: str) -> FakeResponse:
    return _graphql_error(message, "GRAPHQL_VALIDATION_FAILED", 400)


class FakeRunPodApi(FakeApi):
    """RunPod's GraphQL endpoint: gpuTypes and pods, with auth and fault switches."""

    def __init__(
        self,
        api_key: str = DEFAULT_RUNPOD_KEY,
        gpu_types: list[dict] | None = None,
        *,
        fleet: FakeFleet | None = None,
    ):
        super().__init__()
        self.api_key = api_key
        self.gpu_types: list[dict[str, Any]] = (
            load_runpod_gpu_types() if gpu_types is None else gpu_types
        )
        self.auth_failure_status = 401
        self._graphql_errors: list[tuple[str, str]] = []
        self.fleet = fleet or FakeFleet()
        self.url: str | None = None  # serve_runpod sets it (RUNPOD_API_BASE_URL in pods)
        self.proxy_url: str | None = None  # RUNPOD_PROXY_URL template for the router
        self.scoped_keys: dict[str, str] = {}  # pod id -> its RUNPOD_API_KEY
        self.deploys: list[dict[str, Any]] = []  # accepted deploy inputs (+ "_mutation")
        self.literal_queries: list[str] = []
        self.denied: list[tuple[str, str]] = []  # (root field, pod id) refused to a scoped key
        self.stop_calls: list[str] = []
        self.proxied: list[tuple[str, str, int]] = []  # (pod id, path, status) via the router
        self._no_capacity = 0
        self._lost_answers = 0

    # -- fault switches -------------------------------------------------------------------
    def graphql_error_next(self, count: int, message: str, code: str) -> None:
        """Answer the next `count` authorised requests with HTTP 200 and a GraphQL error."""
        with self.lock:
            self._graphql_errors.extend([(message, code)] * count)

    def no_capacity_next(self, count: int = 1) -> None:
        """The next `count` deploys fail with RunPod's "no longer any instances" error."""
        with self.lock:
            self._no_capacity += count

    def lose_deploy_answer_next(self, count: int = 1) -> None:
        """The next `count` deploys create their pod, then answer 502 (a gateway lost the
        answer): the client cannot know the pod exists unless it looks."""
        with self.lock:
            self._lost_answers += count

    def preempt(self, pod_id: str) -> None:
        """Kill a serving pod as an outbid spot host would: EXITED until terminated."""
        self.fleet.preempt(pod_id, status="exited")

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

    def close(self) -> None:
        """Stop every pod's processes (serve_runpod does this on exit)."""
        self.fleet.close()

    # -- dispatch -------------------------------------------------------------------------
    def _caller(self, request: RecordedRequest) -> tuple[str | None, str | None]:
        """("account", None), ("scoped", pod id) or (None, None) for an unknown key."""
        key = bearer_token(request) or (request.query.get("api_key") or [None])[0]
        if key and key == self.api_key:
            return "account", None
        for pod_id, scoped in self.scoped_keys.items():
            if key and key == scoped:
                return "scoped", pod_id
        return None, None

    def handle(self, request: RecordedRequest) -> FakeResponse:
        if request.path.rstrip("/") != "/graphql" or request.method != "POST":
            return FakeResponse(404, b"Not Found", {"Content-Type": "text/plain"})
        caller, own_pod = self._caller(request)
        if caller is None:
            return _graphql_error("Unauthorized", "UNAUTHENTICATED", self.auth_failure_status)
        if self._graphql_errors:
            return _graphql_error(*self._graphql_errors.pop(0))
        try:
            body = request.json() or {}
            query = body["query"]
            variables = body.get("variables") or {}
            if not isinstance(query, str) or not isinstance(variables, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _graphql_error("Must provide query string.", "BAD_REQUEST", 400)
        self._sweep_terminate_after()
        try:
            operation = parse_operation(query)
        except GraphQLSyntaxError as exc:
            return _graphql_error(str(exc), "GRAPHQL_PARSE_FAILED", 400)
        if len(operation.fields) != 1:
            return _invalid("This fake answers one root field per operation.")
        root = operation.fields[0]
        if root.name == "gpuTypes" and operation.kind == "query":
            if caller != "account":
                return self._deny(root.name, own_pod)
            return FakeResponse(200, {"data": {"gpuTypes": self._gpu_types(query, variables)}})
        if root.name not in _ROOTS or _ROOTS[root.name][0] != operation.kind:
            type_name = "Mutation" if operation.kind == "mutation" else "Query"
            return _invalid(f'Cannot query field "{root.name}" on type "{type_name}".')
        error = self._check_operation(query, operation, root)
        if error:
            return error
        pod_input = variables.get(root.args["input"][1:]) if "input" in root.args else None
        if caller == "scoped" and not (
            root.name == "podTerminate"
            and isinstance(pod_input, dict)
            and pod_input.get("podId") == own_pod
        ):
            return self._deny(root.name, own_pod)
        return self._execute(root, pod_input, caller)

    def _check_operation(
        self, query: str, operation: Operation, root: Field
    ) -> FakeResponse | None:
        if operation.literals:
            self.literal_queries.append(query)
            return _invalid(
                "deployctl fake: values must travel as GraphQL variables, found "
                + ", ".join(operation.literals[:5])
            )
        _, input_type, result_type = _ROOTS[root.name]
        if input_type is not None:
            var = root.args.get("input")
            if var is None:
                return _invalid(
                    f'Field "{root.name}" argument "input" of type "{input_type}!" is required.'
                )
            declared = operation.variable_types.get(var)
            if declared is None:
                return _invalid(f'Variable "{var}" is not defined.')
            if declared.rstrip("!") != input_type:
                return _invalid(
                    f'Variable "{var}" of type "{declared}" used in position expecting type '
                    f'"{input_type}!".'
                )
        if result_type is None:
            if root.children is not None:
                return _invalid(f'Field "{root.name}" must not have a selection.')
            return None
        if not root.children:
            return _invalid(f'Field "{root.name}" must have a selection of subfields.')
        type_name = "User" if result_type is _USER_TYPE else "Pod"
        error = _validate(root.children, result_type, type_name)
        return _invalid(error) if error else None

    def _deny(self, root: str, pod_id: str | None) -> FakeResponse:
        self.denied.append((root, pod_id or ""))
        return _graphql_error(
            "You do not have permission to perform this action with this API key.", "FORBIDDEN"
        )

    def _execute(self, root: Field, pod_input: Any, caller: str) -> FakeResponse:
        name = root.name
        if name == "myself":
            return _data(
                "myself",
                _project({"pods": [self.pod(i) for i in self.fleet.live()], "endpoints": [],
                          "podTemplates": []}, root.children),
            )
        if not isinstance(pod_input, dict):
            return _graphql_error(
                f'Variable "{root.args["input"]}" of required type was not provided.',
                "BAD_USER_INPUT",
                400,
            )
        if name in ("podFindAndDeployOnDemand", "podRentInterruptable"):
            return self._deploy(name, pod_input, root)
        pod_id = str(pod_input.get("podId") or "")
        if name == "pod":
            inst = self.fleet.get(pod_id)
            return _data("pod", _project(self.pod(inst), root.children) if inst else None)
        if name == "podTerminate":
            if pod_id not in self.fleet.instances or not self.fleet.destroy(pod_id, by=caller):
                return _field_error(name, "pod not found to terminate")
            self.scoped_keys.pop(pod_id, None)
            return _data("podTerminate", None)
        # podStop: the pod stays (and bills its disk); deployctl must never use it.
        self.stop_calls.append(pod_id)
        inst = self.fleet.get(pod_id)
        if inst is None:
            return _field_error(name, "pod not found")
        inst.status, inst.message = "stopped", "Stopped by user"
        inst.ended_at = self.fleet.clock()
        self.fleet._stop_process(pod_id, wait=False)
        return _data("podStop", _project(self.pod(inst), root.children))

    # -- pods -----------------------------------------------------------------------------
    def _deploy(self, mutation: str, pod_input: dict[str, Any], root: Field) -> FakeResponse:
        spot = mutation == "podRentInterruptable"
        type_name = "PodRentInterruptableInput" if spot else "PodFindAndDeployOnDemandInput"
        error = _input_error(pod_input, _SPOT_FIELDS if spot else _DEPLOY_FIELDS, type_name)
        if error is None and spot and not isinstance(pod_input.get("bidPerGpu"), (int, float)):
            error = f'Field "{type_name}.bidPerGpu" of required type "Float!" was not provided.'
        if error:
            return _graphql_error(
                f'Variable "$input" got invalid value; {error}', "BAD_USER_INPUT", 400
            )
        self.deploys.append({**pod_input, "_mutation": mutation})
        gpu_type = next((t for t in self.gpu_types if t["id"] == pod_input["gpuTypeId"]), None)
        if gpu_type is None:
            return _field_error(mutation, f"Invalid GPU type: {pod_input['gpuTypeId']}")
        count = int(pod_input.get("gpuCount") or 1)
        cloud = str(pod_input.get("cloudType") or "ALL")
        prices = self._price_per_gpu(gpu_type, cloud, spot)
        if self._no_capacity > 0 or not prices or count > int(gpu_type.get("maxGpuCount") or 0):
            self._no_capacity = max(self._no_capacity - 1, 0)
            return _field_error(mutation, NO_CAPACITY)
        if self.fleet.take_vanish():
            return _field_error(mutation, NO_CAPACITY)
        per_gpu = float(pod_input["bidPerGpu"]) if spot else min(prices)
        if spot and per_gpu < min(prices):
            return _field_error(
                mutation,
                f"Your bid of ${per_gpu:.3f}/GPU/hr is below the minimum bid of "
                f"${min(prices):.3f}/GPU/hr.",
            )
        pod_id = _pod_id()
        scoped = "rpa_" + secrets.token_hex(16).upper()
        env = {e["key"]: e["value"] for e in pod_input.get("env") or []}
        injected = {
            "RUNPOD_POD_ID": pod_id,
            "RUNPOD_API_KEY": scoped,
            "RUNPOD_API_BASE_URL": self.url or "",
            "RUNPOD_GPU_COUNT": str(count),
            "RUNPOD_POD_HOSTNAME": f"{pod_id}-{secrets.token_hex(4)}",
        }
        image = str(pod_input["imageName"])
        bootstrap, why = _what_runs(image, pod_input.get("dockerArgs"))
        inst = self.fleet.create(
            pod_id,
            label=str(pod_input.get("name") or ""),
            image=image,
            bootstrap=bootstrap,
            env=env,
            injected=injected,
            price_per_hour_usd=round(per_gpu * count, 4),
            extra={
                "input": dict(pod_input),
                "spot": spot,
                "gpu_display": gpu_type.get("displayName"),
                "ports": _ports(str(pod_input.get("ports") or "")),
                "terminate_after": _parse_time(pod_input.get("terminateAfter")),
                "why_exited": why,
            },
        )
        self.scoped_keys[pod_id] = scoped
        if self._lost_answers > 0:
            self._lost_answers -= 1
            return FakeResponse(502, b"502 Bad Gateway", {"Content-Type": "text/plain"})
        return _data(mutation, _project(self.pod(inst), root.children))

    @staticmethod
    def _price_per_gpu(gpu_type: dict[str, Any], cloud: str, spot: bool) -> list[float]:
        fields = {
            ("SECURE", False): ["securePrice"],
            ("COMMUNITY", False): ["communityPrice"],
            ("ALL", False): ["securePrice", "communityPrice"],
            ("SECURE", True): ["secureSpotPrice"],
            ("COMMUNITY", True): ["communitySpotPrice"],
            ("ALL", True): ["secureSpotPrice", "communitySpotPrice"],
        }.get((cloud, spot), [])
        return [float(gpu_type[f]) for f in fields if gpu_type.get(f)]

    def pod(self, inst: FakeInstance) -> dict[str, Any]:
        """The full Pod object for a fleet instance (projected by the caller)."""
        now = self.fleet.clock()
        extra = inst.extra
        pod_input = extra.get("input") or {}
        running = inst.status == "running"
        status = "RUNNING" if inst.status in ("loading", "running") else "EXITED"
        if inst.status == "exited" and extra.get("why_exited"):
            inst.message = extra["why_exited"]
        uptime = int(now - inst.running_at) if running and inst.running_at else 0
        runtime = None
        if running:
            runtime = {
                "uptimeInSeconds": uptime,
                "ports": [
                    {
                        "ip": "100.65.12.34",
                        "isIpPublic": False,
                        "privatePort": port,
                        "publicPort": 60000 + port % 1000,
                        "type": kind,
                    }
                    for port, kind in extra.get("ports") or []
                ],
                "gpus": [
                    {"id": f"GPU-{i}", "gpuUtilPercent": 0, "memoryUtilPercent": 0}
                    for i in range(int(pod_input.get("gpuCount") or 1))
                ],
                "container": {"cpuPercent": 1, "memoryPercent": 2},
            }
        stamp = time.strftime("%a %b %d %Y %H:%M:%S GMT+0000", time.gmtime(inst.created_at))
        return {
            "id": inst.instance_id,
            "name": inst.label,
            "desiredStatus": status,
            "lastStatusChange": f"{inst.message}: {stamp}",
            "costPerHr": inst.price_per_hour_usd,
            "adjustedCostPerHr": inst.price_per_hour_usd,
            "imageName": inst.image,
            "gpuCount": int(pod_input.get("gpuCount") or 1),
            "podType": "INTERRUPTABLE" if extra.get("spot") else "RESERVED",
            "dockerArgs": pod_input.get("dockerArgs") or "",
            "env": [f"{k}={v}" for k, v in inst.env.items()],
            "ports": pod_input.get("ports") or "",
            "containerDiskInGb": pod_input.get("containerDiskInGb"),
            "volumeInGb": pod_input.get("volumeInGb") or 0,
            "volumeMountPath": pod_input.get("volumeMountPath") or "/workspace",
            "uptimeSeconds": uptime,
            "machineId": f"m{inst.instance_id[:8]}",
            "createdAt": _iso(inst.created_at),
            "lastStartedAt": _iso(inst.running_at) if inst.running_at else None,
            "machine": {
                "gpuDisplayName": extra.get("gpu_display"),
                "gpuTypeId": pod_input.get("gpuTypeId"),
                "podHostId": f"{inst.instance_id}-64410a1b",
                "secureCloud": pod_input.get("cloudType") != "COMMUNITY",
                "location": "EU-RO-1",
                "dataCenterId": "EU-RO-1",
            },
            "runtime": runtime,
        }

    def guard_port(self, pod_id: str, port: int) -> int | None:
        """Where the router forwards `<pod_id>-<port>`: the guard's loopback port, or None."""
        inst = self.fleet.get(pod_id)
        if inst is None or port not in [p for p, _ in inst.extra.get("ports") or []]:
            return None
        if inst.status != "running" or inst.process is None:
            return 0
        return inst.process.guard_port

    def _sweep_terminate_after(self) -> None:
        now = self.fleet.clock()
        for inst in self.fleet.live():
            deadline = inst.extra.get("terminate_after")
            if deadline is not None and deadline <= now:
                self.fleet.destroy(inst.instance_id, by="terminateAfter")
                self.scoped_keys.pop(inst.instance_id, None)

    # -- gpuTypes -------------------------------------------------------------------------
    def _gpu_types(self, query: str, variables: dict[str, Any]) -> list[dict[str, Any]]:
        type_filter = _argument(query, "gpuTypes", variables) or {}
        price_input = _argument(query, "lowestPrice", variables) or {}
        rows = [
            t for t in self.gpu_types if "id" not in type_filter or t["id"] == type_filter["id"]
        ]
        wanted = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query))
        return [self._project_gpu_type(t, wanted, price_input) for t in rows]

    def _project_gpu_type(
        self, gpu_type: dict, wanted: set[str], price_input: dict
    ) -> dict[str, Any]:
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


def _data(field_name: str, value: Any) -> FakeResponse:
    return FakeResponse(200, {"data": {field_name: value}})


def _input_error(pod_input: dict[str, Any], allowed: set[str], type_name: str) -> str | None:
    """The server's complaint about a deploy input, or None when it is acceptable."""
    for key in pod_input:
        if key not in allowed:
            return f'Field "{key}" is not defined by type "{type_name}".'
    for key in ("gpuTypeId", "imageName"):
        if not isinstance(pod_input.get(key), str) or not pod_input[key]:
            return f'Field "{type_name}.{key}" of required type "String!" was not provided.'
    for key, value in pod_input.items():
        if value is None:
            continue
        if key in _INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            return f'Int cannot represent non-integer value: {json.dumps(value)} at "{key}"'
        if key in _BOOL_FIELDS and not isinstance(value, bool):
            return f"Boolean cannot represent a non boolean value: {json.dumps(value)}"
        if key in _STRING_FIELDS and not isinstance(value, str):
            return f"String cannot represent a non string value: {json.dumps(value)}"
    if pod_input.get("cloudType", "ALL") not in ("ALL", "SECURE", "COMMUNITY"):
        return f'Value "{pod_input["cloudType"]}" does not exist in "CloudTypeEnum" enum.'
    env = pod_input.get("env") or []
    if not isinstance(env, list) or not all(
        isinstance(e, dict)
        and set(e) == {"key", "value"}
        and isinstance(e["key"], str)
        and isinstance(e["value"], str)
        for e in env
    ):
        return 'Field "env" expects [EnvironmentVariableInput] ({key: String, value: String}).'
    for key in ("terminateAfter", "stopAfter"):
        if pod_input.get(key) is not None and _parse_time(pod_input[key]) is None:
            return f"DateTime cannot represent an invalid date-time-string {pod_input[key]!r}."
    return None


def _what_runs(image: str, docker_args: Any) -> tuple[str | None, str]:
    """(script for `sh -c`, or None with why the container cannot run) from dockerArgs."""
    from .instances import _repository

    entrypoint = _IMAGE_ENTRYPOINTS.get(_repository(image), [])
    text = docker_args if isinstance(docker_args, str) else ""
    if text.strip().startswith("{"):
        try:
            spec = json.loads(text)
        except ValueError:
            return None, "exited: dockerArgs is not valid JSON"
        entrypoint = list(spec.get("entrypoint") or entrypoint)
        cmd = list(spec.get("cmd") or [])
        argv = entrypoint + cmd
        if argv[:2] in (["/bin/sh", "-c"], ["sh", "-c"], ["/bin/bash", "-c"], ["bash", "-c"]):
            return (argv[2] if len(argv) > 2 else ""), ""
        return shlex.join(argv), ""
    if entrypoint:
        return None, (
            f"exited: {image} runs its ENTRYPOINT ({' '.join(entrypoint)}), which got the "
            "dockerArgs as arguments"
        )
    return (text or None), "" if text else "exited: nothing to run"


def _ports(text: str) -> list[tuple[int, str]]:
    """ "8000/http,22/tcp" -> [(8000, "http"), (22, "tcp")]."""
    out = []
    for part in text.replace(" ", "").split(","):
        port, _, kind = part.partition("/")
        if port.isdigit():
            out.append((int(port), kind or "http"))
    return out


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _pod_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


# -- the proxy router: https://{pod_id}-{port}.proxy.runpod.net on loopback --------------

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
_ROUTE = re.compile(r"^/proxy/([a-z0-9]+)-(\d+)(/.*)?$")


class _RouterHandler(BaseHTTPRequestHandler):
    server: _RouterServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        parts = urlsplit(self.path)
        route = _ROUTE.match(parts.path)
        target = None
        if route:
            target = self.server.api.guard_port(route.group(1), int(route.group(2)))
        if not route or target is None:
            self._plain(404, b"404 page not found")
            return
        pod_id, path = route.group(1), (route.group(3) or "/")
        if parts.query:
            path += "?" + parts.query
        if not target:
            self._record(pod_id, path, 502)
            self._plain(502, b"502 Bad Gateway: the pod is not running")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", target, timeout=120)
        try:
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
        except OSError:
            upstream.close()
            self._record(pod_id, path, 502)
            self._plain(502, b"502 Bad Gateway: nothing answers on that port")
            return
        self._record(pod_id, path, response.status)
        try:
            self._relay(response)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Copy the answer through as it arrives (chunked when its length is unknown)."""
        length = response.getheader("Content-Length")
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() not in (
                "content-length",
                "date",
                "server",
            ):
                self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", length)
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            chunk = response.read1(65536)
            if not chunk:
                break
            if length is None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                self.wfile.write(chunk)
            self.wfile.flush()
        if length is None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _plain(self, status: int, text: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _record(self, pod_id: str, path: str, status: int) -> None:
        self.server.api.proxied.append((pod_id, path, status))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _RouterServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    api: FakeRunPodApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@contextmanager
def _router(api: FakeRunPodApi) -> Iterator[str]:
    server = _RouterServer(("127.0.0.1", 0), _RouterHandler)
    server.api = api
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_runpod(api: FakeRunPodApi | None = None) -> Iterator[tuple[FakeRunPodApi, str]]:
    """Run a fake RunPod API and its proxy router on loopback: yields (api, base_url).

    `api.proxy_url` is the RUNPOD_PROXY_URL template for the router. On exit every pod's
    processes are stopped."""
    api = api or FakeRunPodApi()
    with FakeServer(api) as server, _router(api) as router_url:
        api.url = server.url
        api.proxy_url = router_url + "/proxy/{pod_id}-{port}"
        try:
            yield api, server.url
        finally:
            api.close()
