"""The fake RunPod API, extended with Serverless: templates, endpoints and their workers.

GraphQL (same server, auth and literal-value refusal as `FakeRunPodApi`; shapes as
runpod-python's `api/mutations/templates.py` / `endpoints.py` and the schema's input
types):

    mutation ($input: SaveTemplateInput) { saveTemplate(input: $input) { id name ... env
        { key value } } }                   name unique; env [{key, value}] strings
    mutation ($input: EndpointInput!) { saveEndpoint(input: $input) { id ... } }
                                            create (name, templateId, gpuIds required) or,
                                            with `id`, update (e.g. workersMax 0)
    mutation ($id: String!) { deleteEndpoint(id: $id) }
                                            refused while workersMax > 0 ("scale the
                                            endpoint's workers to 0 first"); unknown: error
    mutation ($templateName: String!) { deleteTemplate(templateName: $templateName) }
                                            refused while an endpoint uses it
    query { myself { endpoints { ... } podTemplates { ... } } }

Every accepted saveEndpoint input is kept in `api.endpoint_saves`, every saveTemplate
input in `api.template_saves`.

The endpoint API, `https://api.runpod.ai/v2/{endpoint_id}/...` on loopback
(`api.serverless_url` = `<base>/v2`, give it to the adapter as RUNPOD_SERVERLESS_URL),
authenticated with the account's API key:

    POST /v2/{id}/openai/v1/chat/completions   OpenAI chat completion (non-streaming)
    GET  /v2/{id}/openai/v1/models             the served model (and LoRA names)
    GET  /v2/{id}/health                       {"jobs": {...}, "workers": {...}}

Workers: a request with no live worker starts one (a cold start, `cold_start_s` of fake
time, counted in `api.cold_starts[id]`) unless workersMax of them already run; each job
takes `job_s` of fake time (more than executionTimeoutMs fails it: HTTP 500, status
TIMED_OUT). A worker idle for idleTimeout is gone (scale to zero). Time is
`time.time() + api.offset_s`: `api.advance(s)` moves it, so tests need not wait.
Billing: `api.billed_s(id)` = seconds workers existed (cold start, jobs and idle).
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .runpod_api import _USER_TYPE as _BASE_USER_TYPE
from .runpod_api import (
    FakeRunPodApi,
    GraphQLSyntaxError,
    _field_error,
    _graphql_error,
    _invalid,
    _project,
    _validate,
    _words,
    parse_operation,
    serve_runpod,
)
from .server import FakeResponse, RecordedRequest

__all__ = ["FakeRunPodServerlessApi", "serve_runpod_serverless"]

_ENDPOINT_TYPE: dict[str, Any] = _BASE_USER_TYPE["endpoints"]
_TEMPLATE_TYPE: dict[str, Any] = _BASE_USER_TYPE["podTemplates"]
_USER_TYPE: dict[str, Any] = {"endpoints": _ENDPOINT_TYPE, "podTemplates": _TEMPLATE_TYPE}

_TEMPLATE_INPUT = set(_words("""id name imageName isServerless containerDiskInGb volumeInGb
    volumeMountPath dockerArgs env ports readme startSsh startJupyter isPublic
    containerRegistryAuthId category"""))
_ENDPOINT_INPUT = set(_words("""id name templateId gpuIds gpuCount workersMin workersMax
    idleTimeout executionTimeoutMs scalerType scalerValue flashBootType locations
    networkVolumeId allowedCudaVersions instanceIds"""))
_ENDPOINT_INTS = {"gpuCount", "workersMin", "workersMax", "idleTimeout", "executionTimeoutMs",
                  "scalerValue"}
# root -> (variable name, its declared type without "!")
_ROOTS = {
    "saveTemplate": ("input", "SaveTemplateInput"),
    "saveEndpoint": ("input", "EndpointInput"),
    "deleteEndpoint": ("id", "String"),
    "deleteTemplate": ("templateName", "String"),
}


def _id(n: int = 14) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


class FakeRunPodServerlessApi(FakeRunPodApi):
    """FakeRunPodApi plus serverless templates, endpoints, workers and the endpoint API."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, list[dict[str, float]]] = {}  # endpoint id -> live workers
        self.cold_starts: dict[str, int] = {}
        self.jobs: dict[str, dict[str, int]] = {}
        self._billed: dict[str, float] = {}  # seconds of workers already gone
        self.template_saves: list[dict[str, Any]] = []
        self.endpoint_saves: list[dict[str, Any]] = []
        self.completions: list[tuple[str, dict[str, Any]]] = []  # (endpoint id, body)
        self.offset_s = 0.0
        self.cold_start_s = 2.0
        self.job_s = 0.5
        self.serverless_url: str | None = None

    # -- time, workers, billing -----------------------------------------------------------
    def now(self) -> float:
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.offset_s += seconds

    def _sweep(self, endpoint_id: str) -> list[dict[str, float]]:
        """Drop workers idle past idleTimeout (billing them up to then); the live ones."""
        endpoint = self.endpoints.get(endpoint_id) or {}
        idle_s = float(endpoint.get("idleTimeout") or 0)
        now, live = self.now(), []
        for w in self.workers.get(endpoint_id, []):
            gone_at = w["last_active"] + idle_s
            if gone_at <= now:
                self._billed[endpoint_id] = self._billed.get(endpoint_id, 0.0) + (
                    gone_at - w["started"])
            else:
                live.append(w)
        self.workers[endpoint_id] = live
        return live

    def worker_count(self, endpoint_id: str) -> int:
        with self.lock:
            return len(self._sweep(endpoint_id))

    def billed_s(self, endpoint_id: str) -> float:
        with self.lock:
            live = self._sweep(endpoint_id)
            now = self.now()
            return self._billed.get(endpoint_id, 0.0) + sum(now - w["started"] for w in live)

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> FakeResponse:
        if request.path.startswith("/v2/"):
            return self._endpoint_api(request)
        if request.path.rstrip("/") != "/graphql" or request.method != "POST":
            return super().handle(request)
        try:
            body = request.json() or {}
            operation = parse_operation(body["query"])
            variables = body.get("variables") or {}
        except (ValueError, KeyError, TypeError, GraphQLSyntaxError):
            return super().handle(request)
        if len(operation.fields) != 1:
            return super().handle(request)
        root = operation.fields[0]
        mine = root.name in _ROOTS or (
            root.name == "myself" and root.children
            and {f.name for f in root.children} <= set(_USER_TYPE)
        )
        if not mine:
            return super().handle(request)
        caller, own_pod = self._caller(request)
        if caller is None:
            return _graphql_error("Unauthorized", "UNAUTHENTICATED", self.auth_failure_status)
        if caller != "account":
            return self._deny(root.name, own_pod)
        if self._graphql_errors:
            return _graphql_error(*self._graphql_errors.pop(0))
        if operation.literals:
            self.literal_queries.append(body["query"])
            return _invalid("deployctl fake: values must travel as GraphQL variables, found "
                            + ", ".join(operation.literals[:5]))
        with self.lock:
            if root.name == "myself":
                error = _validate(root.children, _USER_TYPE, "User")
                if error:
                    return _invalid(error)
                for eid in list(self.endpoints):
                    self._sweep(eid)
                data = {"endpoints": list(self.endpoints.values()),
                        "podTemplates": list(self.templates.values())}
                return FakeResponse(200, {"data": {"myself": _project(data, root.children)}})
            var_name, var_type = _ROOTS[root.name]
            var = root.args.get(var_name)
            if var is None or operation.variable_types.get(var, "").rstrip("!") != var_type:
                return _invalid(f'Field "{root.name}" argument "{var_name}" of type '
                                f'"{var_type}!" must be a variable of that type.')
            value = variables.get(var[1:])
            return getattr(self, "_" + root.name)(value, root)

    # -- mutations ------------------------------------------------------------------------
    def _saveTemplate(self, value: Any, root: Any) -> FakeResponse:
        error = _input_problem(value, _TEMPLATE_INPUT, "SaveTemplateInput", ("name", "imageName"))
        env = (value or {}).get("env") or []
        if error is None and not (isinstance(env, list) and all(
            isinstance(e, dict) and set(e) == {"key", "value"}
            and isinstance(e["key"], str) and isinstance(e["value"], str) for e in env
        )):
            error = 'Field "env" expects [EnvironmentVariableInput] ({key: String, value: String}).'
        if error:
            return _graphql_error(f'Variable "$input" got invalid value; {error}',
                                  "BAD_USER_INPUT", 400)
        if any(t["name"] == value["name"] for t in self.templates.values()):
            return _field_error("saveTemplate", "Template name must be unique")
        self.template_saves.append(dict(value))
        tid = _id(10)
        template = {f: value.get(f) for f in _TEMPLATE_TYPE if f in value}
        template.update({"id": tid, "env": env, "isServerless": bool(value.get("isServerless")),
                         "__typename": "PodTemplate"})
        self.templates[tid] = template
        return FakeResponse(200, {"data": {"saveTemplate": _project(template, root.children)}})

    def _saveEndpoint(self, value: Any, root: Any) -> FakeResponse:
        update = isinstance(value, dict) and value.get("id")
        required = () if update else ("name", "templateId", "gpuIds")
        error = _input_problem(value, _ENDPOINT_INPUT, "EndpointInput", required)
        if error is None:
            for key in _ENDPOINT_INTS & set(value):
                v = value[key]
                if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                    error = f'Int cannot represent non-integer value: {json.dumps(v)} at "{key}"'
            if value.get("flashBootType") not in (None, "OFF", "FLASHBOOT"):
                error = f'Value "{value["flashBootType"]}" does not exist in "FlashBootType" enum.'
        if error:
            return _graphql_error(f'Variable "$input" got invalid value; {error}',
                                  "BAD_USER_INPUT", 400)
        if value.get("templateId") is not None and value["templateId"] not in self.templates:
            return _field_error("saveEndpoint", "Template not found")
        self.endpoint_saves.append(dict(value))
        if update:
            endpoint = self.endpoints.get(value["id"])
            if endpoint is None:
                return _field_error("saveEndpoint", "Endpoint not found")
            endpoint.update({k: v for k, v in value.items() if k in _ENDPOINT_TYPE})
        else:
            eid = _id()
            endpoint = {f: value.get(f) for f in _ENDPOINT_TYPE}
            endpoint.update({"id": eid, "type": "QB", "computeType": "GPU",
                             "userId": "user_fake", "__typename": "Endpoint"})
            endpoint.setdefault("gpuCount", 1)
            for key, default in (("gpuCount", 1), ("workersMin", 0), ("workersMax", 3),
                                 ("idleTimeout", 5), ("executionTimeoutMs", 600000),
                                 ("flashBootType", "OFF"), ("scalerType", "QUEUE_DELAY"),
                                 ("scalerValue", 4)):
                if endpoint.get(key) is None:
                    endpoint[key] = default  # RunPod's defaults when a field is left out
            self.endpoints[eid] = endpoint
            self.workers[eid], self.cold_starts[eid] = [], 0
            self.jobs[eid] = {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0,
                              "retried": 0}
        return FakeResponse(200, {"data": {"saveEndpoint": _project(endpoint, root.children)}})

    def _deleteEndpoint(self, value: Any, root: Any) -> FakeResponse:
        endpoint = self.endpoints.get(str(value))
        if endpoint is None:
            return _field_error("deleteEndpoint", "Endpoint not found")
        if int(endpoint.get("workersMax") or 0) > 0:
            return _field_error("deleteEndpoint", "Please scale the endpoint's workers to 0 "
                                "(workersMin and workersMax) before deleting it")
        self._sweep(endpoint["id"])
        for w in self.workers.get(endpoint["id"], []):
            self._billed[endpoint["id"]] = self._billed.get(endpoint["id"], 0.0) + (
                self.now() - w["started"])
        self.workers[endpoint["id"]] = []
        del self.endpoints[endpoint["id"]]
        return FakeResponse(200, {"data": {"deleteEndpoint": None}})

    def _deleteTemplate(self, value: Any, root: Any) -> FakeResponse:
        tid = next((k for k, t in self.templates.items() if t["name"] == value), None)
        if tid is None:
            return _field_error("deleteTemplate", "Template not found")
        if any(e.get("templateId") == tid for e in self.endpoints.values()):
            return _field_error("deleteTemplate", "Template is in use by an endpoint")
        del self.templates[tid]
        return FakeResponse(200, {"data": {"deleteTemplate": None}})

    # -- the endpoint API -----------------------------------------------------------------
    def _endpoint_api(self, request: RecordedRequest) -> FakeResponse:
        if self._caller(request)[0] != "account":
            return FakeResponse(401, {"error": "Unauthorized"})
        parts = request.path.split("/", 3)  # ["", "v2", id, rest]
        eid = parts[2] if len(parts) > 2 else ""
        rest = "/" + (parts[3] if len(parts) > 3 else "")
        with self.lock:
            endpoint = self.endpoints.get(eid)
            if endpoint is None:
                return FakeResponse(404, {"error": f"endpoint {eid} not found"})
            template = self.templates.get(endpoint["templateId"]) or {}
            env = {e["key"]: e["value"] for e in template.get("env") or []}
            served = env.get("OPENAI_SERVED_MODEL_NAME_OVERRIDE") or env.get("MODEL_NAME", "")
            loras = [m.get("name") for m in json.loads(env.get("LORA_MODULES") or "[]")]
            if rest == "/health" and request.method == "GET":
                live = self._sweep(eid)
                busy = sum(1 for w in live if w["busy_until"] > self.now())
                return FakeResponse(200, {"jobs": dict(self.jobs[eid]), "workers": {
                    "idle": len(live) - busy, "initializing": 0, "ready": len(live),
                    "running": busy, "throttled": 0, "unhealthy": 0}})
            if rest == "/openai/v1/models" and request.method == "GET":
                data = [{"id": m, "object": "model", "owned_by": "vllm"}
                        for m in [served, *loras] if m]
                return FakeResponse(200, {"object": "list", "data": data})
            if rest == "/openai/v1/chat/completions" and request.method == "POST":
                return self._chat(eid, endpoint, request, served, loras)
        return FakeResponse(404, {"error": f"no route {request.method} {rest}"})

    def _chat(self, eid: str, endpoint: dict, request: RecordedRequest, served: str,
              loras: list) -> FakeResponse:
        try:
            body = request.json() or {}
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return FakeResponse(400, {"error": {"message": "messages is required"}})
        if body.get("model") not in (served, *loras):
            return FakeResponse(404, {"error": {"message": f"The model `{body.get('model')}` "
                                                "does not exist.", "code": 404}})
        live = self._sweep(eid)
        now = self.now()
        worker = min(live, key=lambda w: w["busy_until"]) if live else None
        if worker is None or (worker["busy_until"] > now
                              and len(live) < int(endpoint["workersMax"] or 0)):
            if len(live) >= int(endpoint["workersMax"] or 0):
                self.jobs[eid]["inQueue"] += 1
                return FakeResponse(503, {"error": "no worker can start: workersMax is 0"})
            worker = {"started": now, "busy_until": now + self.cold_start_s,
                      "last_active": now + self.cold_start_s}
            live.append(worker)
            self.workers[eid] = live
            self.cold_starts[eid] += 1
        start = max(worker["busy_until"], now)
        self.completions.append((eid, body))
        if self.job_s * 1000 > int(endpoint["executionTimeoutMs"] or 0):
            end = start + int(endpoint["executionTimeoutMs"]) / 1000
            worker["busy_until"] = worker["last_active"] = end
            self.jobs[eid]["failed"] += 1
            return FakeResponse(500, {"error": "job timed out", "status": "TIMED_OUT"})
        worker["busy_until"] = worker["last_active"] = start + self.job_s
        self.jobs[eid]["completed"] += 1
        text = "Hello from the fake vLLM worker."
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages
                     if isinstance(m, dict))
        return FakeResponse(200, {
            "id": f"chatcmpl-{_id(24)}", "object": "chat.completion", "created": int(now),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 7,
                      "total_tokens": prompt + 7},
        })


def _input_problem(value: Any, allowed: set[str], type_name: str,
                   required: tuple[str, ...]) -> str | None:
    if not isinstance(value, dict):
        return f'Expected type "{type_name}" to be an object.'
    for key in value:
        if key not in allowed:
            return f'Field "{key}" is not defined by type "{type_name}".'
    for key in required:
        if not isinstance(value.get(key), str) or not value[key]:
            return f'Field "{type_name}.{key}" of required type "String!" was not provided.'
    return None


@contextmanager
def serve_runpod_serverless(
    api: FakeRunPodServerlessApi | None = None,
) -> Iterator[tuple[FakeRunPodServerlessApi, str]]:
    """Run the fake (GraphQL + endpoint API) on loopback: yields (api, graphql base URL);
    `api.serverless_url` is the RUNPOD_SERVERLESS_URL for it."""
    api = api or FakeRunPodServerlessApi()
    with serve_runpod(api) as (served, url):
        served.serverless_url = url + "/v2"
        yield served, url
