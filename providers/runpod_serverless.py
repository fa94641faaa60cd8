"""RunPod Serverless: a template and an endpoint running RunPod's vLLM worker.

Everything goes through RunPod's GraphQL API with *variables* (RunPodProvider.graphql:
same auth, error tree and retries as the pods adapter). Shapes as runpod-python's
`api/mutations/templates.py` and `api/mutations/endpoints.py`, with the schema's input
types `SaveTemplateInput` and `EndpointInput`:

- template: `saveTemplate(input: $input)` with name (`deployctl-<id>`), imageName (the
  vLLM worker, `runpod/worker-v1-vllm`), isServerless true, containerDiskInGb,
  volumeInGb 0, dockerArgs "" and env [{key, value}]: the worker reads MODEL_NAME,
  MAX_MODEL_LEN, QUANTIZATION, DTYPE, ENABLE_LORA + LORA_MODULES (JSON list of
  {name, path}) + MAX_LORA_RANK, MAX_NUM_SEQS, ENABLE_PREFIX_CACHING,
  GPU_MEMORY_UTILIZATION, TENSOR_PARALLEL_SIZE, OPENAI_SERVED_MODEL_NAME_OVERRIDE and
  HF_TOKEN (runpod-workers/worker-vllm docs/configuration.md). deployctl adds
  DEPLOYCTL_CREATED / DEPLOYCTL_DEADLINE (epoch seconds): the ttl is deployctl's to
  enforce, read back by `get`.
- endpoint: `saveEndpoint(input: $input)` with name, templateId, gpuIds (a pool such as
  AMPERE_48), gpuCount, workersMin 0, workersMax (limits.max_workers), idleTimeout (s),
  executionTimeoutMs, scalerType QUEUE_DELAY, scalerValue 4 and flashBootType FLASHBOOT
  (the GraphQL field is the enum `flashBootType`; the REST API's `flashboot: true` is the
  same switch).
- get / list: `myself { endpoints { ... } podTemplates { ... } }` (there is no
  single-endpoint query in the public schema that runpod-python uses).
- terminate: scale to zero (`saveEndpoint` with workersMin = workersMax = 0), then
  `deleteEndpoint(id: $id)`, then `deleteTemplate(templateName: $templateName)` (RunPod
  refuses to delete a template an endpoint still uses), then check the template is gone.
  An endpoint already gone is success. Leftover `deployctl-` templates with no endpoint
  are listed as instances `template:<id>` so that `reap` removes them too.

There is no guard in serverless: nothing on RunPod's side ends an endpoint at the ttl.
`get` reports an endpoint past its DEPLOYCTL_DEADLINE as exited, so `deployctl status`
and `deployctl reap` delete it; run `deployctl reap` from cron for the ttl to hold while
nobody looks (`schedule tick` looks only at scheduled sessions' deployments). Idle
workers scale to zero on their own (idleTimeout); executionTimeoutMs bounds a runaway
job; workersMax bounds the spend rate.

The endpoint URL is `{RUNPOD_SERVERLESS_URL or https://api.runpod.ai/v2}/{id}/openai`
(+ `/v1/chat/completions`), authenticated with the RunPod API key.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Any, ClassVar

from orchestrator.errors import (
    LaunchFailedError,
    OfferUnavailableError,
    ProviderError,
    RetryableProviderError,
)
from orchestrator.models import (
    CredentialStatus,
    Instance,
    InstanceState,
    Offer,
    OfferQuery,
    TaskSpec,
)

from .runpod import RunPodProvider, _is_not_found

__all__ = [
    "DEFAULT_SERVERLESS_URL",
    "DELETE_ENDPOINT_MUTATION",
    "DELETE_TEMPLATE_MUTATION",
    "MY_ENDPOINTS_QUERY",
    "SAVE_ENDPOINT_MUTATION",
    "SAVE_TEMPLATE_MUTATION",
    "WORKER_IMAGE",
    "EndpointConfig",
    "RunPodServerlessProvider",
    "worker_env",
]

DEFAULT_SERVERLESS_URL = "https://api.runpod.ai/v2"
WORKER_IMAGE = "runpod/worker-v1-vllm:v2.7.0stable-cuda12.1.0"
EXECUTION_TIMEOUT_DEFAULT_S = 600  # one request may run this long, never unbounded
SERVERLESS_LABEL = "label"

_TEMPLATE_FIELDS = "id name imageName isServerless containerDiskInGb env { key value }"
_ENDPOINT_FIELDS = (
    "id name templateId gpuIds gpuCount workersMin workersMax idleTimeout "
    "executionTimeoutMs scalerType scalerValue flashBootType"
)
SAVE_TEMPLATE_MUTATION = (
    "mutation SaveTemplate($input: SaveTemplateInput) {\n"
    f"  saveTemplate(input: $input) {{ {_TEMPLATE_FIELDS} }}\n}}\n"
)
SAVE_ENDPOINT_MUTATION = (
    "mutation SaveEndpoint($input: EndpointInput!) {\n"
    f"  saveEndpoint(input: $input) {{ {_ENDPOINT_FIELDS} }}\n}}\n"
)
DELETE_ENDPOINT_MUTATION = (
    "mutation DeleteEndpoint($id: String!) {\n  deleteEndpoint(id: $id)\n}\n"
)
DELETE_TEMPLATE_MUTATION = (
    "mutation DeleteTemplate($templateName: String!) {\n"
    "  deleteTemplate(templateName: $templateName)\n}\n"
)
MY_ENDPOINTS_QUERY = (
    "query MyEndpoints {\n  myself {\n"
    f"    endpoints {{ {_ENDPOINT_FIELDS} }}\n"
    f"    podTemplates {{ {_TEMPLATE_FIELDS} }}\n"
    "  }\n}\n"
)

_VLLM_QUANT = {"awq": "awq", "gptq": "gptq", "fp8": "fp8"}
_VLLM_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


def worker_env(task: TaskSpec, gpu_count: int = 1, *, hf_token: str | None = None,
               served_name: str | None = None) -> dict[str, str]:
    """The environment runpod-workers/worker-vllm reads, for `task` (all values strings)."""
    env = {
        "MODEL_NAME": task.model,
        "MAX_MODEL_LEN": str(task.context_tokens),
        "TENSOR_PARALLEL_SIZE": str(gpu_count),
        "MAX_NUM_SEQS": str(max(task.concurrency, 1)),
        "GPU_MEMORY_UTILIZATION": "0.90",
        "ENABLE_PREFIX_CACHING": "true",
    }
    quant = task.quant.value
    if quant in _VLLM_QUANT:
        env["QUANTIZATION"] = _VLLM_QUANT[quant]
    if quant in _VLLM_DTYPE:
        env["DTYPE"] = _VLLM_DTYPE[quant]
    if served_name:
        env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = served_name
    if task.adapter:
        name = task.adapter.name or "adapter"
        env["ENABLE_LORA"] = "true"
        env["LORA_MODULES"] = json.dumps([{"name": name, "path": task.adapter.repo}])
        env["MAX_LORA_RANK"] = str(task.adapter.rank)
    env.update(task.env)
    if hf_token:
        env["HF_TOKEN"] = hf_token
    return env


class EndpointConfig:
    """What one endpoint is created with (every limit set, none unbounded)."""

    def __init__(self, *, name: str, pool: str, gpu_count: int, env: dict[str, str],
                 idle_timeout_s: int, execution_timeout_s: int, workers_max: int,
                 ttl_s: int, disk_gib: int = 40, image: str = WORKER_IMAGE) -> None:
        if idle_timeout_s <= 0 or execution_timeout_s <= 0 or workers_max <= 0:
            raise ValueError("idle timeout, execution timeout and workersMax must be set")
        self.name, self.pool, self.gpu_count, self.env = name, pool, gpu_count, dict(env)
        self.idle_timeout_s, self.execution_timeout_s = idle_timeout_s, execution_timeout_s
        self.workers_max, self.ttl_s, self.disk_gib, self.image = (
            workers_max, ttl_s, disk_gib, image)


class RunPodServerlessProvider:
    """Serverless endpoints on RunPod (registered as `runpod-serverless` for `reap`)."""

    name: ClassVar[str] = "runpod-serverless"

    def __init__(self, api_key: str | None = None, base_url: str | None = None, *,
                 serverless_url: str | None = None, **kwargs: Any) -> None:
        self.rp = RunPodProvider(api_key=api_key, base_url=base_url, **kwargs)
        url = serverless_url or os.environ.get("RUNPOD_SERVERLESS_URL") or DEFAULT_SERVERLESS_URL
        self.serverless_url = url.rstrip("/")

    @property
    def api_key(self) -> str | None:
        return self.rp.api_key

    def check_credentials(self) -> CredentialStatus:
        return self.rp.check_credentials()

    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """Serverless is priced by `orchestrator.traffic` (per second), not as offers."""
        return []

    def endpoint_url(self, endpoint_id: str) -> str:
        return f"{self.serverless_url}/{endpoint_id}/openai"

    # -- create ---------------------------------------------------------------------------
    def create(self, config: EndpointConfig, *, labels: dict[str, str]) -> Instance:
        """saveTemplate then saveEndpoint. A template whose endpoint could not be made is
        deleted again; LaunchFailedError carries an endpoint id created without an answer."""
        now = time.time()
        env = {**config.env, "DEPLOYCTL_CREATED": str(int(now))}
        if config.ttl_s:
            env["DEPLOYCTL_DEADLINE"] = str(int(now + config.ttl_s))
        template_input = {
            "name": config.name, "imageName": config.image, "isServerless": True,
            "containerDiskInGb": config.disk_gib, "volumeInGb": 0, "dockerArgs": "",
            "env": [{"key": k, "value": v} for k, v in env.items()], "readme": "",
        }  # fmt: skip
        data = self.rp.graphql(SAVE_TEMPLATE_MUTATION, {"input": template_input},
                               partial_ok=False)
        template = data.get("saveTemplate") or {}
        if not template.get("id"):
            raise ProviderError(self.name, "saveTemplate answered without a template id")
        endpoint_input = self._endpoint_input(config, str(template["id"]))
        try:
            data = self.rp.graphql(SAVE_ENDPOINT_MUTATION, {"input": endpoint_input},
                                   partial_ok=False)
        except RetryableProviderError as exc:
            created = self._named(config.name)
            if created is not None:
                raise LaunchFailedError(self.name, f"saveEndpoint failed ({exc.message}) but "
                                        f"endpoint {created['id']} exists",
                                        instance_id=str(created["id"])) from exc
            self._delete_template(config.name)
            raise
        except ProviderError as exc:
            self._delete_template(config.name)
            if "no" in exc.message.lower() and "available" in exc.message.lower():
                raise OfferUnavailableError(self.name, exc.message) from exc
            raise
        endpoint = data.get("saveEndpoint") or {}
        if not endpoint.get("id"):
            self._delete_template(config.name)
            raise ProviderError(self.name, "saveEndpoint answered without an endpoint id")
        instance = self._instance(endpoint, {str(template["id"]): template})
        return instance.model_copy(update={"labels": {**instance.labels, **labels}})

    @staticmethod
    def _endpoint_input(config: EndpointConfig, template_id: str, *,
                        workers_max: int | None = None) -> dict[str, Any]:
        return {
            "name": config.name, "templateId": template_id, "gpuIds": config.pool,
            "gpuCount": config.gpu_count, "workersMin": 0,
            "workersMax": config.workers_max if workers_max is None else workers_max,
            "idleTimeout": int(config.idle_timeout_s),
            "executionTimeoutMs": int(config.execution_timeout_s * 1000),
            "scalerType": "QUEUE_DELAY", "scalerValue": 4, "flashBootType": "FLASHBOOT",
            "locations": "", "networkVolumeId": "",
        }  # fmt: skip

    # -- look -----------------------------------------------------------------------------
    def _myself(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        data = self.rp.graphql(MY_ENDPOINTS_QUERY, {}, partial_ok=False)
        myself = data.get("myself") or {}
        endpoints = myself.get("endpoints") if isinstance(myself, dict) else None
        templates = myself.get("podTemplates") if isinstance(myself, dict) else None
        if not isinstance(endpoints, list) or not isinstance(templates, list):
            raise ProviderError(self.name, "myself.endpoints/podTemplates is not a list")
        by_id = {str(t.get("id")): t for t in templates if isinstance(t, dict)}
        return [e for e in endpoints if isinstance(e, dict) and e.get("id")], by_id

    def _named(self, name: str) -> dict[str, Any] | None:
        try:
            endpoints, _ = self._myself()
        except ProviderError:
            return None
        return next((e for e in endpoints if e.get("name") == name), None)

    def get(self, instance_id: str) -> Instance | None:
        """The endpoint now (exited when past its ttl); None when it is gone."""
        endpoints, templates = self._myself()
        if instance_id.startswith("template:"):
            tid = instance_id.split(":", 1)[1]
            t = templates.get(tid)
            return self._template_instance(t) if t else None
        for endpoint in endpoints:
            if str(endpoint["id"]) == instance_id:
                return self._instance(endpoint, templates)
        return None

    def list_instances(self, label_prefix: str = "deployctl-") -> list[Instance]:
        """`deployctl-` endpoints, and `deployctl-` serverless templates no endpoint uses."""
        endpoints, templates = self._myself()
        out = [self._instance(e, templates) for e in endpoints
               if str(e.get("name") or "").startswith(label_prefix)]
        used = {str(e.get("templateId")) for e in endpoints}
        out += [self._template_instance(t) for tid, t in templates.items()
                if tid not in used and str(t.get("name") or "").startswith(label_prefix)
                and t.get("isServerless")]
        return out

    # -- delete ---------------------------------------------------------------------------
    def terminate(self, instance_id: str) -> None:
        """Scale to zero, delete the endpoint, delete its template; gone is success."""
        endpoints, templates = self._myself()
        if instance_id.startswith("template:"):
            t = templates.get(instance_id.split(":", 1)[1])
            if t:
                self._delete_template(str(t.get("name")), verify=True)
            return
        endpoint = next((e for e in endpoints if str(e["id"]) == instance_id), None)
        if endpoint is None:
            return
        template = templates.get(str(endpoint.get("templateId"))) or {}
        if int(endpoint.get("workersMax") or 0) > 0:
            scale = {
                "id": instance_id, "name": endpoint.get("name"),
                "templateId": endpoint.get("templateId"), "gpuIds": endpoint.get("gpuIds"),
                "workersMin": 0, "workersMax": 0,
            }  # fmt: skip
            self.rp.graphql(SAVE_ENDPOINT_MUTATION, {"input": scale}, partial_ok=False)
        try:
            self.rp.graphql(DELETE_ENDPOINT_MUTATION, {"id": instance_id}, partial_ok=False)
        except ProviderError as exc:
            if not (type(exc) is ProviderError and _is_not_found(exc.message)):
                raise
        if template.get("name"):
            self._delete_template(str(template["name"]), verify=True)

    def _delete_template(self, name: str, *, verify: bool = False) -> None:
        try:
            self.rp.graphql(DELETE_TEMPLATE_MUTATION, {"templateName": name},
                            partial_ok=False)
        except ProviderError as exc:
            if not (type(exc) is ProviderError and _is_not_found(exc.message)):
                if verify:
                    raise
                return
        if verify:
            _, templates = self._myself()
            if any(t.get("name") == name for t in templates.values()):
                raise ProviderError(self.name, f"template {name} still exists after delete")

    # -- shapes ---------------------------------------------------------------------------
    def _instance(self, endpoint: dict[str, Any], templates: dict[str, dict]) -> Instance:
        template = templates.get(str(endpoint.get("templateId"))) or {}
        env = {str(e.get("key")): str(e.get("value")) for e in template.get("env") or []
               if isinstance(e, dict)}
        created = _int(env.get("DEPLOYCTL_CREATED"))
        deadline = _int(env.get("DEPLOYCTL_DEADLINE"))
        past_ttl = deadline is not None and time.time() >= deadline
        name = str(endpoint.get("name") or "")
        labels = {"label": name}
        if name.startswith("deployctl-"):
            labels["deployctl"] = name[len("deployctl-"):]
        eid = str(endpoint["id"])
        return Instance(
            provider=self.name, instance_id=eid,
            state=InstanceState.EXITED if past_ttl else InstanceState.RUNNING,
            endpoint_url=self.endpoint_url(eid),
            price_per_hour_usd=0.0,
            started_at=datetime.fromtimestamp(created, timezone.utc) if created else None,
            labels=labels, gpu=str(endpoint.get("gpuIds") or "") or None,
            message="past its ttl: deployctl deletes it" if past_ttl else "serverless endpoint",
            raw={**endpoint, "name": name},
        )  # fmt: skip

    def _template_instance(self, template: dict[str, Any]) -> Instance:
        name = str(template.get("name") or "")
        env = {str(e.get("key")): e.get("value") for e in template.get("env") or []
               if isinstance(e, dict)}
        created = _int(env.get("DEPLOYCTL_CREATED"))  # young: maybe a launch in progress
        return Instance(
            provider=self.name, instance_id=f"template:{template.get('id')}",
            state=InstanceState.EXITED, price_per_hour_usd=0.0,
            started_at=datetime.fromtimestamp(created, timezone.utc) if created else None,
            labels={"label": name}, message="serverless template without an endpoint",
            raw={"name": name},
        )  # fmt: skip


def _int(value: Any) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
