"""RunPod Serverless against the fake GraphQL + endpoint API on loopback.

Contract: create -> get -> list -> delete -> verify gone (endpoint and template), delete
again (idempotent); every value travels as a GraphQL variable; every limit is set. The
end-to-end test creates, calls the OpenAI route, lets the worker scale to zero, deletes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from orchestrator.models import InstanceState
from orchestrator.retry import RetryPolicy
from orchestrator.taskfile import load_task
from providers import get_provider
from providers.runpod_serverless import EndpointConfig, RunPodServerlessProvider, worker_env
from tests.fakes import DEFAULT_RUNPOD_KEY
from tests.fakes.runpod_serverless_api import FakeRunPodServerlessApi, serve_runpod_serverless

FAST_POLICY = RetryPolicy(attempts=3, deadline_s=5.0, base_s=0.001, cap_s=0.005)
AWKWARD = "say \"hi\" it's\nline two $HOME `id` \\n }{ ${X} '\"'\"' %s\ttab"


@pytest.fixture
def serverless(monkeypatch) -> Iterator[tuple[RunPodServerlessProvider, FakeRunPodServerlessApi]]:
    with serve_runpod_serverless() as (api, url):
        monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
        monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_RUNPOD_KEY)
        monkeypatch.setenv("RUNPOD_SERVERLESS_URL", api.serverless_url)
        yield RunPodServerlessProvider(policy=FAST_POLICY), api


def _config(name: str = "deployctl-dtest0001", **kw) -> EndpointConfig:
    task = load_task("qwen2.5-7b", {})
    env = worker_env(task, hf_token="hf_secret_token_value")
    env["NOTE"] = AWKWARD
    defaults = dict(name=name, pool="AMPERE_48", gpu_count=1, env=env, idle_timeout_s=5,
                    execution_timeout_s=120, workers_max=1, ttl_s=3600)
    return EndpointConfig(**{**defaults, **kw})


def test_registered_for_reap():
    assert get_provider("runpod-serverless").name == "runpod-serverless"


def test_contract_create_get_list_delete(serverless):
    provider, api = serverless
    inst = provider.create(_config(), labels={"deployctl": "dtest0001"})
    assert inst.state is InstanceState.RUNNING
    assert inst.endpoint_url == f"{api.serverless_url}/{inst.instance_id}/openai"
    assert inst.labels["deployctl"] == "dtest0001"
    # every value through variables; the limits set
    assert api.literal_queries == []
    save = api.endpoint_saves[0]
    assert save["workersMin"] == 0 and save["workersMax"] == 1
    assert save["idleTimeout"] == 5 and save["executionTimeoutMs"] == 120_000
    assert save["flashBootType"] == "FLASHBOOT" and save["gpuIds"] == "AMPERE_48"
    template = api.template_saves[0]
    env = {e["key"]: e["value"] for e in template["env"]}
    assert template["isServerless"] is True and template["volumeInGb"] == 0
    assert env["NOTE"] == AWKWARD  # quotes and newlines survive
    assert env["MODEL_NAME"] and env["MAX_MODEL_LEN"] and "DEPLOYCTL_DEADLINE" in env
    # get, list
    got = provider.get(inst.instance_id)
    assert got is not None and got.state is InstanceState.RUNNING
    assert [i.instance_id for i in provider.list_instances("deployctl-")] == [inst.instance_id]
    assert provider.list_instances("other-") == []
    # delete: scaled to zero first, endpoint and template gone
    provider.terminate(inst.instance_id)
    assert provider.get(inst.instance_id) is None
    assert provider.list_instances("deployctl-") == []
    assert api.endpoints == {} and api.templates == {}
    assert api.endpoint_saves[-1]["workersMax"] == 0
    provider.terminate(inst.instance_id)  # idempotent
    assert api.literal_queries == []


def test_past_ttl_reads_as_exited(serverless):
    provider, _api = serverless
    inst = provider.create(_config(ttl_s=1), labels={})
    time.sleep(1.1)
    assert provider.get(inst.instance_id).state is InstanceState.EXITED
    provider.terminate(inst.instance_id)
    assert provider.get(inst.instance_id) is None


def test_leftover_template_is_listed_and_removed(serverless):
    provider, api = serverless
    inst = provider.create(_config(), labels={})
    # simulate a crash that deleted the endpoint but left the template
    endpoint = api.endpoints[inst.instance_id]
    endpoint["workersMax"] = 0
    del api.endpoints[inst.instance_id]
    listed = provider.list_instances("deployctl-")
    assert [i.instance_id.startswith("template:") for i in listed] == [True]
    provider.terminate(listed[0].instance_id)
    assert api.templates == {} and provider.list_instances("deployctl-") == []


def test_end_to_end_call_scale_to_zero_delete(serverless):
    provider, api = serverless
    config = _config(idle_timeout_s=30)
    inst = provider.create(config, labels={})
    eid = inst.instance_id
    url = f"{inst.endpoint_url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {DEFAULT_RUNPOD_KEY}"}
    model = config.env["MODEL_NAME"]
    assert api.worker_count(eid) == 0
    r = httpx.post(url, headers=auth, json={"model": model, "messages": [
        {"role": "user", "content": "Hello"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert api.worker_count(eid) == 1 and api.cold_starts[eid] == 1
    httpx.post(url, headers=auth, json={"model": model, "messages": [
        {"role": "user", "content": "again"}]})
    assert api.cold_starts[eid] == 1  # warm worker reused
    assert httpx.post(url, json={"model": model, "messages": []}).status_code == 401
    api.advance(31 + api.cold_start_s + 2 * api.job_s)
    assert api.worker_count(eid) == 0  # scaled to zero after idleTimeout
    health = httpx.get(f"{api.serverless_url}/{eid}/health", headers=auth).json()
    assert health["workers"]["running"] == 0 and health["jobs"]["completed"] == 2
    billed = api.billed_s(eid)
    assert 30 < billed < 40  # cold start + 2 jobs + idle timeout
    provider.terminate(eid)
    assert provider.get(eid) is None and api.templates == {}
    assert json.dumps(api.template_saves).count("hf_secret_token_value") == 1


def test_execution_timeout_bounds_a_runaway_job(serverless):
    provider, api = serverless
    inst = provider.create(_config(execution_timeout_s=1), labels={})
    api.job_s = 5.0
    auth = {"Authorization": f"Bearer {DEFAULT_RUNPOD_KEY}"}
    model = {e["key"]: e["value"] for e in api.template_saves[0]["env"]}["MODEL_NAME"]
    r = httpx.post(f"{inst.endpoint_url}/v1/chat/completions", headers=auth,
                   json={"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 500 and r.json()["status"] == "TIMED_OUT"
    provider.terminate(inst.instance_id)


def test_limits_are_never_unbounded():
    with pytest.raises(ValueError):
        _config(idle_timeout_s=0)
    with pytest.raises(ValueError):
        _config(workers_max=0)


# -- `deployctl up --serverless` end to end, through the CLI, on the fake -------------------


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from orchestrator.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_up_serverless_status_down(serverless, capsys):
    _, api = serverless
    code, out, err = _cli(capsys, "up", "qwen2.5-7b", "--provider", "runpod", "--serverless",
                          "--traffic", "3000 req/month, 8.5 s", "--json")
    assert code == 0, err
    doc = json.loads(out)
    eid = doc["instance_id"]
    assert doc["provider"] == "runpod-serverless" and doc["workers_min"] == 0
    assert doc["workers_max"] == 1 and doc["flashboot"] is True
    assert doc["idle_timeout_s"] == 5 and doc["execution_timeout_s"] == 600
    assert doc["endpoint_url"] == f"{api.serverless_url}/{eid}/openai/v1"
    assert DEFAULT_RUNPOD_KEY not in out + err  # the key is never printed
    assert api.completions and api.completions[0][0] == eid  # readiness = a chat completion
    assert api.literal_queries == []
    env = {e["key"]: e["value"] for e in api.template_saves[0]["env"]}
    assert env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == doc["model"] == "qwen2.5-7b"
    # the endpoint answers clients with the RunPod key
    r = httpx.post(f"{doc['endpoint_url']}/chat/completions",
                   headers={"Authorization": f"Bearer {DEFAULT_RUNPOD_KEY}"},
                   json={"model": doc["model"], "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    code, out, _ = _cli(capsys, "status", "--json")
    rows = json.loads(out)["deployments"]
    assert [r["status"] for r in rows] == ["ready"] and rows[0]["provider"] == "runpod-serverless"
    code, out, _ = _cli(capsys, "reap", "--json")  # a live endpoint is not an orphan
    assert code == 0 and json.loads(out)["destroyed"] == []
    assert eid in api.endpoints
    code, out, err = _cli(capsys, "down", doc["deployment_id"], "--json")
    assert code == 0, err
    assert api.endpoints == {} and api.templates == {}


def test_cli_reap_finds_orphan_endpoints(serverless, capsys):
    provider, api = serverless
    orphan = provider.create(_config(name="deployctl-dgone0001"), labels={})
    code, out, _ = _cli(capsys, "reap", "--provider", "runpod-serverless", "--json")
    assert json.loads(out)["destroyed"] == []  # young and unknown: maybe a launch elsewhere
    for template in api.templates.values():  # ... now 700 s old
        for e in template["env"]:
            if e["key"] == "DEPLOYCTL_CREATED":
                e["value"] = str(int(time.time()) - 700)
    code, out, _ = _cli(capsys, "reap", "--provider", "runpod-serverless", "--json")
    doc = json.loads(out)
    assert code == 0
    assert [d["instance_id"] for d in doc["destroyed"]] == [orphan.instance_id]
    assert api.endpoints == {} and api.templates == {}


def test_cli_status_ends_an_endpoint_past_its_ttl(serverless, capsys):
    _, api = serverless
    code, out, err = _cli(capsys, "up", "qwen2.5-7b", "--provider", "runpod", "--serverless",
                          "--ttl", "2s", "--json")
    assert code == 0, err
    time.sleep(2.2)
    code, out, _ = _cli(capsys, "status", "--all", "--json")
    rows = json.loads(out)["deployments"]
    assert rows[0]["status"] != "ready"
    assert api.endpoints == {} and api.templates == {}


def test_cli_up_serverless_budget_refusal(serverless, capsys, monkeypatch):
    _, api = serverless
    code, _, err = _cli(capsys, "--set", "budget.monthly=0.5", "up", "qwen2.5-7b",
                        "--provider", "runpod", "--serverless")
    assert code == 3, err
    assert "budget" in err and api.endpoints == {} and api.templates == {}
