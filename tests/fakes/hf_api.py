"""A stateful fake of Hugging Face Inference Endpoints: the API and the endpoints' URLs.

Shapes are what `huggingface_hub` sends and parses (`HfApi.create_inference_endpoint`,
`get/list/delete/pause/resume/scale_to_zero_inference_endpoint`, `InferenceEndpoint.
from_raw`, which needs `name`, `model.{repository,framework,revision,task}`, `status.
{state,url,createdAt,updatedAt}`, `healthRoute` and `type`), under the client's base
`https://api.endpoints.huggingface.cloud/v2`:

    POST   /v2/endpoint/{ns}                      create -> the endpoint (state pending)
    GET    /v2/endpoint/{ns}                      {"items": [endpoint, ...]}
    GET    /v2/endpoint/{ns}/{name}               endpoint, or 404
    DELETE /v2/endpoint/{ns}/{name}               202, or 404
    POST   /v2/endpoint/{ns}/{name}/pause|resume|scale-to-zero   -> the endpoint
    GET    /v2/provider                           vendor catalog: {"vendors": [{"name",
           "status", "regions": [{"name", "label", "status", "computes": [{"id",
           "accelerator", "instanceType", "instanceSize", "numAccelerators", "numCpus",
           "memoryGb", "gpuMemoryGb", "architecture", "pricePerHour", "status"}]}]}]}
    GET    /api/whoami-v2                         the hub's whoami (namespace lookup)

Every API route wants `Authorization: Bearer <token>` (401 otherwise). Prices in the
catalog follow the published pricing page's instance list (figures are indicative).

Each endpoint's own URL is `{inference_url}/{name}` on a second loopback server (the real
one is a host per endpoint), protected by the same token: `GET /health`, `GET /v1/models`
and `POST /v1/chat/completions` (deterministic words, OpenAI shape, with `usage`).
Time moves the state on, lazily: pending -> initializing after `pending_s`, ->
running after `initializing_s`; a running endpoint with minReplica 0 and no request
for `scaleToZeroTimeout` x `minute_s` seconds becomes scaledToZero (tests shrink
`minute_s`); a request to it then answers 503 and wakes it (initializing, running after
`cold_start_s`), as the platform's proxy does.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from .server import FakeApi, FakeResponse, FakeServer, RecordedRequest, bearer_token

__all__ = ["DEFAULT_HF_NAMESPACE", "DEFAULT_HF_TOKEN", "FakeHfApi", "serve_hf"]

DEFAULT_HF_TOKEN = "hf_FakeTokenForTests0123456789"
DEFAULT_HF_NAMESPACE = "deployctl-tester"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_ENDPOINT = re.compile(r"^/v2/endpoint/([^/]+)(?:/([^/]+))?(?:/(pause|resume|scale-to-zero))?$")


def _compute(vendor: str, region: str, kind: str, size: str, count: int, gpu_gb: int,
             price: float, arch: str, *, status: str = "available",
             accelerator: str = "gpu") -> dict[str, Any]:  # fmt: skip
    return {
        "id": f"{vendor}-{region}-{kind}-{size}",
        "accelerator": accelerator,
        "instanceType": kind,
        "instanceSize": size,
        "numAccelerators": count,
        "numCpus": 4 * count,
        "memoryGb": 16 * count,
        "gpuMemoryGb": gpu_gb,
        "architecture": arch,
        "pricePerHour": price,
        "status": status,
    }


def default_catalog() -> list[dict[str, Any]]:
    aws = [
        _compute("aws", "us-east-1", "intel-spr", "x2", 1, 0, 0.067, "Intel Sapphire Rapids",
                 accelerator="cpu"),
        _compute("aws", "us-east-1", "nvidia-t4", "x1", 1, 14, 0.5, "NVIDIA T4"),
        _compute("aws", "us-east-1", "nvidia-t4", "x4", 4, 56, 3.0, "NVIDIA T4"),
        _compute("aws", "us-east-1", "nvidia-l4", "x1", 1, 24, 0.8, "NVIDIA L4"),
        _compute("aws", "us-east-1", "nvidia-l4", "x4", 4, 96, 3.8, "NVIDIA L4"),
        _compute("aws", "us-east-1", "nvidia-a10g", "x1", 1, 24, 1.0, "NVIDIA A10G"),
        _compute("aws", "us-east-1", "nvidia-a10g", "x4", 4, 96, 5.0, "NVIDIA A10G"),
        _compute("aws", "us-east-1", "nvidia-l40s", "x1", 1, 48, 1.8, "NVIDIA L40S"),
        _compute("aws", "us-east-1", "nvidia-l40s", "x4", 4, 192, 8.3, "NVIDIA L40S"),
        _compute("aws", "us-east-1", "nvidia-a100", "x1", 1, 80, 2.5, "NVIDIA A100"),
        _compute("aws", "us-east-1", "nvidia-a100", "x2", 2, 160, 5.0, "NVIDIA A100"),
        _compute("aws", "us-east-1", "nvidia-a100", "x4", 4, 320, 10.0, "NVIDIA A100"),
        _compute("aws", "us-east-1", "nvidia-h200", "x1", 1, 141, 5.0, "NVIDIA H200",
                 status="unavailable"),
        _compute("aws", "us-east-1", "imaginary-x9000", "x1", 1, 24, 0.9, "Imaginary X9000"),
    ]  # fmt: skip
    gcp = [
        _compute("gcp", "us-east4", "nvidia-l4", "x1", 1, 24, 0.7, "NVIDIA L4"),
        _compute("gcp", "us-east4", "nvidia-h100", "x1", 1, 80, 10.0, "NVIDIA H100"),
        _compute("gcp", "us-east4", "nvidia-h100", "x2", 2, 160, 20.0, "NVIDIA H100"),
    ]
    return [
        {"name": "aws", "status": "available", "regions": [
            {"name": "us-east-1", "label": "N. Virginia", "status": "available",
             "computes": aws},
            {"name": "eu-west-1", "label": "Ireland", "status": "unavailable", "computes": [
                _compute("aws", "eu-west-1", "nvidia-t4", "x1", 1, 14, 0.4, "NVIDIA T4")]},
        ]},
        {"name": "gcp", "status": "available", "regions": [
            {"name": "us-east4", "label": "Virginia", "status": "available", "computes": gcp},
        ]},
    ]  # fmt: skip


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class FakeHfInference(FakeApi):
    """The endpoints' own URLs: `/{name}/health`, `/{name}/v1/...` (protected)."""

    def __init__(self, api: FakeHfApi) -> None:
        super().__init__()
        self.api = api

    def handle(self, request: RecordedRequest) -> FakeResponse:
        name, _, route = request.path.lstrip("/").partition("/")
        return self.api.serve_inference(request, name, "/" + route)


class FakeHfApi(FakeApi):
    """The Inference Endpoints API (plus whoami); endpoints live in `self.endpoints`."""

    def __init__(self, token: str = DEFAULT_HF_TOKEN, namespace: str = DEFAULT_HF_NAMESPACE):
        super().__init__()
        self.token = token
        self.namespace = namespace
        self.catalog = default_catalog()
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []  # create payloads, as sent
        self.inference_url = ""
        self.inference = FakeHfInference(self)
        self.pending_s = 0.05
        self.initializing_s = 0.1
        self.cold_start_s = 0.1
        self.minute_s = 60.0  # how long a "minute" of scaleToZeroTimeout lasts here
        self.completions = 0
        self._clock: dict[str, dict[str, float]] = {}

    # -- API ------------------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> FakeResponse:
        if bearer_token(request) != self.token:
            return FakeResponse(401, {"error": "Invalid credentials in Authorization header"})
        if request.path == "/api/whoami-v2" and request.method == "GET":
            return FakeResponse(200, {"type": "user", "name": self.namespace, "orgs": []})
        if request.path == "/v2/provider" and request.method == "GET":
            return FakeResponse(200, {"vendors": self.catalog})
        match = _ENDPOINT.match(request.path)
        if match is None:
            return FakeResponse(404, {"error": f"no route {request.method} {request.path}"})
        namespace, name, action = match.groups()
        if namespace != self.namespace:
            return FakeResponse(403, {"error": f"no access to namespace {namespace}"})
        if name is None:
            if request.method == "POST":
                return self._create(request.json() or {})
            if request.method == "GET":
                return FakeResponse(200, {"items": [self._view(n) for n in list(self.endpoints)]})
            return FakeResponse(405, {"error": "method not allowed"})
        if name not in self.endpoints:
            return FakeResponse(404, {"error": f"Endpoint {name} not found"})
        if action is None and request.method == "GET":
            return FakeResponse(200, self._view(name))
        if action is None and request.method == "DELETE":
            del self.endpoints[name]
            self._clock.pop(name, None)
            return FakeResponse(202, {})
        if action is not None and request.method == "POST":
            return self._act(name, action)
        return FakeResponse(405, {"error": "method not allowed"})

    def _create(self, body: dict[str, Any]) -> FakeResponse:
        self.created.append(body)
        problem = self._invalid(body)
        if problem:
            return FakeResponse(400, {"error": problem})
        name = body["name"]
        if name in self.endpoints:
            return FakeResponse(409, {"error": f"Endpoint {name} already exists"})
        now = _now_iso()
        who = {"id": "u-1", "name": self.namespace}
        model = dict(body["model"])
        model["revision"] = model.get("revision") or "main"
        model.pop("secrets", None)  # secrets are write-only
        self.endpoints[name] = {
            "accountId": body.get("accountId"),
            "compute": {**body["compute"], "id": self._compute_id(body)},
            "model": model,
            "name": name,
            "provider": body["provider"],
            "type": body["type"],
            "tags": body.get("tags") or [],
            "healthRoute": "/health",
            "status": {
                "createdAt": now, "createdBy": who, "updatedAt": now, "updatedBy": who,
                "private": None, "state": "pending", "message": "Endpoint waiting to be scheduled",
                "readyReplica": 0, "targetReplica": 1,
            },
        }  # fmt: skip
        self._clock[name] = {"since": time.monotonic(), "last_request": time.monotonic()}
        return FakeResponse(200, self._view(name))

    def _compute_id(self, body: dict[str, Any]) -> str:
        c, p = body["compute"], body["provider"]
        return f"{p['vendor']}-{p['region']}-{c['instanceType']}-{c['instanceSize']}"

    def _invalid(self, body: dict[str, Any]) -> str | None:
        try:
            name = body["name"]
            compute, model, place = body["compute"], body["model"], body["provider"]
            scaling = compute["scaling"]
            low, high = int(scaling["minReplica"]), int(scaling["maxReplica"])
            needed = (compute["accelerator"], compute["instanceType"], compute["instanceSize"],
                      model["repository"], model["framework"], model["image"],
                      place["vendor"], place["region"])  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            return f"invalid payload: {exc}"
        if not all(needed):
            return "invalid payload: empty required field"
        if not isinstance(name, str) or not _NAME.match(name):
            return "name must be lowercase letters, digits and '-', at most 32 characters"
        if body.get("type") not in ("public", "protected", "private"):
            return "type must be public, protected or private"
        if not 0 <= low <= high or high < 1:
            return "scaling: 0 <= minReplica <= maxReplica, maxReplica >= 1"
        timeout = scaling.get("scaleToZeroTimeout")
        if low == 0 and not (isinstance(timeout, int) and timeout >= 1):
            return "scaling: minReplica 0 needs scaleToZeroTimeout (minutes, >= 1)"
        for vendor in self.catalog:
            for region in vendor["regions"]:
                for c in region["computes"]:
                    if (vendor["name"], region["name"], c["instanceType"], c["instanceSize"]) == (
                        place["vendor"], place["region"], compute["instanceType"],
                        compute["instanceSize"],
                    ):  # fmt: skip
                        ok = "available" == vendor["status"] == region["status"] == c["status"]
                        return None if ok else "this instance is not available"
        return "compute not found for this vendor and region"

    def _act(self, name: str, action: str) -> FakeResponse:
        self._refresh(name)
        ep, clock = self.endpoints[name], self._clock[name]
        if action == "pause":
            self._set(name, "paused", "Endpoint paused", 0)
        elif action == "resume":
            if ep["status"]["state"] in ("paused", "scaledToZero", "failed"):
                clock["since"] = time.monotonic() - self.pending_s
                self._set(name, "initializing", "Endpoint is initializing", 0)
        elif action == "scale-to-zero":
            if ep["status"]["state"] == "paused":
                return FakeResponse(400, {"error": "Endpoint is paused"})
            self._set(name, "scaledToZero", "Endpoint is scaled to zero", 0)
        return FakeResponse(200, self._view(name))

    # -- time ---------------------------------------------------------------------------
    def _set(self, name: str, state: str, message: str, ready: int) -> None:
        status = self.endpoints[name]["status"]
        status.update(state=state, message=message, readyReplica=ready, updatedAt=_now_iso())
        if state in ("running", "scaledToZero"):
            status["url"] = f"{self.inference_url}/{name}"

    def _refresh(self, name: str) -> None:
        ep, clock = self.endpoints[name], self._clock[name]
        state, age = ep["status"]["state"], time.monotonic() - clock["since"]
        if state == "pending" and age >= self.pending_s:
            self._set(name, "initializing", "Endpoint is initializing", 0)
            state = "initializing"
        if state == "initializing" and age >= self.pending_s + self.initializing_s:
            self._set(name, "running", "Endpoint is running", 1)
            clock["last_request"] = time.monotonic()
            state = "running"
        scaling = ep["compute"]["scaling"]
        timeout = scaling.get("scaleToZeroTimeout")
        idle = time.monotonic() - clock["last_request"]
        cold = scaling["minReplica"] == 0 and timeout and idle >= timeout * self.minute_s
        if state == "running" and cold:
            self._set(name, "scaledToZero", "Endpoint is scaled to zero", 0)

    def _view(self, name: str) -> dict[str, Any]:
        self._refresh(name)
        import copy

        return copy.deepcopy(self.endpoints[name])

    def state_of(self, name: str) -> str | None:
        with self.lock:
            return self._view(name)["status"]["state"] if name in self.endpoints else None

    # -- the endpoints' own URLs -------------------------------------------------------------
    def serve_inference(self, request: RecordedRequest, name: str, route: str) -> FakeResponse:
        with self.lock:
            if name not in self.endpoints:
                return FakeResponse(404, {"error": "Not Found"})
            if bearer_token(request) != self.token:
                return FakeResponse(401, {"error": "Authorization header is correct, but the "
                                      "token seems invalid"})  # fmt: skip
            self._refresh(name)
            ep, clock = self.endpoints[name], self._clock[name]
            state = ep["status"]["state"]
            if state == "scaledToZero":  # the proxy wakes a replica and answers 503 meanwhile
                clock["since"] = time.monotonic() - self.pending_s - self.initializing_s
                clock["since"] += self.cold_start_s
                self._set(name, "initializing", "Endpoint is initializing", 0)
                return FakeResponse(503, {"error": "Service Unavailable: scaling up"})
            if state != "running":
                return FakeResponse(503, {"error": f"Service Unavailable: {state}"})
            clock["last_request"] = time.monotonic()
            repo = ep["model"]["repository"]
        if route == "/health" and request.method == "GET":
            return FakeResponse(200, b"", {"Content-Type": "text/plain"})
        if route == "/v1/models" and request.method == "GET":
            return FakeResponse(200, {"object": "list", "data": [
                {"id": repo, "object": "model", "owned_by": "tgi"}]})  # fmt: skip
        if route == "/v1/chat/completions" and request.method == "POST":
            return self._chat(request, repo)
        return FakeResponse(404, {"error": "Not Found"})

    def _chat(self, request: RecordedRequest, repo: str) -> FakeResponse:
        body = request.json() or {}
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return FakeResponse(422, {"error": "messages: field required"})
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        prompt = sum(len(str(m.get("content") or "").split()) + 4 for m in messages)
        text = " ".join(WORDS[i % len(WORDS)] for i in range(n))
        with self.lock:
            self.completions += 1
        return FakeResponse(200, {
            "id": f"chatcmpl-{self.completions}", "object": "chat.completion",
            "created": int(time.time()), "model": repo,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": n,
                      "total_tokens": prompt + n},
        })  # fmt: skip


@contextlib.contextmanager
def serve_hf(api: FakeHfApi | None = None) -> Iterator[tuple[FakeHfApi, str]]:
    """Run the fake API and the endpoints' URLs on loopback: yields (api, base_url).
    Point the adapter at `{base_url}/v2` (HF_ENDPOINTS_API_URL) and `base_url`
    (HF_ENDPOINT, for whoami)."""
    api = api or FakeHfApi()
    with FakeServer(api) as server, FakeServer(api.inference) as endpoints:
        api.inference_url = endpoints.url
        yield api, server.url
