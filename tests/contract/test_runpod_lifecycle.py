"""RunPod pod lifecycle against the fake GraphQL API, with pods that really run.

Each pod's bootstrap runs as a local process group (tests/fakes/instances.py): the real
guard in front of the fake vLLM engine, reached through the fake's proxy router, which
stands in for `https://{pod_id}-{port}.proxy.runpod.net` (RUNPOD_PROXY_URL). The
guard's idle self-destroy goes through the fake's podTerminate with the pod-scoped key.
Every process a test starts is stopped by the fixture, which then checks for strays.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from orchestrator.engines import build_spec
from orchestrator.errors import (
    CredentialsError,
    LaunchFailedError,
    OfferUnavailableError,
    ProviderUnavailableError,
)
from orchestrator.models import ContainerSpec, Instance, InstanceState, Offer, OfferQuery
from orchestrator.retry import RetryPolicy
from orchestrator.taskfile import load_task
from providers.runpod import TERMINATE_AFTER_GRACE_S, RunPodProvider
from tests.fakes import DEFAULT_RUNPOD_KEY, FakeRunPodApi, serve_runpod

pytestmark = pytest.mark.slow

ENDPOINT_KEY = "dk-test-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {ENDPOINT_KEY}"}
FAST_POLICY = RetryPolicy(attempts=3, deadline_s=5.0, base_s=0.001, cap_s=0.005)
GPU_TYPE = "NVIDIA GeForce RTX 4090"
AWKWARD = "say \"hi\" it's\nline two $HOME `id` \\n \\ }{ ${X} '\"'\"' %s\ttab"


@pytest.fixture
def runpod(monkeypatch) -> Iterator[tuple[RunPodProvider, FakeRunPodApi]]:
    """(provider, fake) wired as in production: env base URL, key and proxy template."""
    with serve_runpod() as (api, url):
        monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
        monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_RUNPOD_KEY)
        monkeypatch.setenv("RUNPOD_PROXY_URL", api.proxy_url)
        runner = api.fleet.runner
        try:
            yield RunPodProvider(policy=FAST_POLICY), api
        finally:
            api.close()  # serve_runpod closes again on exit; closing twice is harmless
            assert runner.stray_pids() == [], "a pod's processes outlived the test"


def _spec(keep_alive_s: int = 600, ttl_s: int = 3600, **env: str) -> ContainerSpec:
    spec = build_spec(
        load_task("qwen2.5-7b"),
        gpu_count=1,
        endpoint_key=ENDPOINT_KEY,
        keep_alive_s=keep_alive_s,
        ttl_s=ttl_s,
        teardown="runpod",
    )
    return spec.model_copy(update={"env": {**spec.env, **env}}) if env else spec


def _offer(provider: RunPodProvider, *, spot: bool = False, cloud: str = "secure") -> Offer:
    kind = "spot" if spot else "ondemand"
    offers = provider.list_offers(OfferQuery(spot=spot, max_gpu_count=1))
    return next(o for o in offers if o.offer_id == f"{GPU_TYPE}|{cloud}|{kind}|1")


def _wait(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def _running(provider: RunPodProvider, pod_id: str, timeout_s: float = 10) -> Instance:
    def check() -> Instance | None:
        inst = provider.get(pod_id)
        return inst if inst is not None and inst.state is InstanceState.RUNNING else None

    return _wait(check, timeout_s, f"pod {pod_id} to run")


def _healthy(endpoint: str, timeout_s: float = 15, *, engine_ready: bool = True) -> dict:
    """The guard's /health through the router, once it answers (and its engine is ready)."""

    def check() -> dict[str, Any] | None:
        try:
            answer = httpx.get(f"{endpoint}/health", timeout=2)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        health = answer.json()
        return health if health.get("engine") == "ready" or not engine_ready else None

    return _wait(check, timeout_s, f"{endpoint}/health")


def _launch(provider: RunPodProvider, offer: Offer, spec: ContainerSpec, dep: str) -> Instance:
    return provider.launch(offer, spec, name=f"deployctl-{dep}", labels={"deployment": dep})


def _gone(provider: RunPodProvider, pod_id: str) -> bool:
    return provider.get(pod_id) is None and pod_id not in {
        i.instance_id for i in provider.list_instances("deployctl-")
    }


# -- the whole lifecycle ------------------------------------------------------------------


def test_on_demand_pod_from_launch_to_terminate(runpod):
    provider, api = runpod
    api.fleet.boot_delay_s = 0.5
    offer, spec = _offer(provider), _spec()
    started = time.monotonic()
    launched = _launch(provider, offer, spec, "life1")
    assert time.monotonic() - started < 2, "launch must return without waiting"
    assert launched.state is InstanceState.PENDING and launched.endpoint_url is None
    assert launched.labels == {"deployment": "life1", "label": "deployctl-life1"}
    pod_id = launched.instance_id

    sent = api.deploys[-1]
    assert sent["_mutation"] == "podFindAndDeployOnDemand"
    assert (sent["gpuTypeId"], sent["gpuCount"], sent["cloudType"]) == (GPU_TYPE, 1, "SECURE")
    assert (sent["name"], sent["imageName"]) == ("deployctl-life1", spec.image)
    assert (sent["containerDiskInGb"], sent["volumeInGb"], sent["ports"]) == (
        spec.disk_gib,
        0,
        "8000/http",
    )
    assert "bidPerGpu" not in sent
    env = {e["key"]: e["value"] for e in sent["env"]}
    assert env == spec.all_env()
    assert "RUNPOD_POD_ID" not in env and "RUNPOD_API_KEY" not in env  # RunPod injects them
    assert json.loads(sent["dockerArgs"]) == {
        "entrypoint": ["/bin/sh", "-c"],
        "cmd": [spec.bootstrap],
    }
    terminate_after = datetime.fromisoformat(sent["terminateAfter"].replace("Z", "+00:00"))
    expected = datetime.now(timezone.utc).timestamp() + 3600 + TERMINATE_AFTER_GRACE_S
    assert abs(terminate_after.timestamp() - expected) < 60

    running = _running(provider, pod_id)
    assert running.endpoint_url == api.proxy_url.format(pod_id=pod_id, port=8000)
    assert running.price_per_hour_usd == pytest.approx(offer.price_per_hour_usd)
    endpoint = running.endpoint_url
    assert _healthy(endpoint)["status"] == "ok"

    assert httpx.get(f"{endpoint}/v1/models", timeout=5).status_code == 401
    models = httpx.get(f"{endpoint}/v1/models", headers=AUTH, timeout=5)
    assert models.status_code == 200, models.text
    assert [m["id"] for m in models.json()["data"]] == [spec.model_name]
    chat = httpx.post(
        f"{endpoint}/v1/chat/completions",
        headers=AUTH,
        json={
            "model": spec.model_name,
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 4,
        },
        timeout=10,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"].strip()
    assert chat.json()["usage"]["completion_tokens"] == 4

    listed = {i.instance_id: i for i in provider.list_instances("deployctl-")}
    assert listed[pod_id].labels == {"label": "deployctl-life1"}
    assert provider.list_instances("deployctl-other") == []
    assert api.fleet.cost_usd(pod_id) > 0

    provider.terminate(pod_id)
    assert _gone(provider, pod_id)
    assert api.fleet.destroyed[pod_id].destroyed_by == "account"
    provider.terminate(pod_id)  # idempotent: gone is success
    assert api.stop_calls == [], "a pod must be terminated, never stopped"
    _wait(lambda: not api.fleet.runner.alive(pod_id), 10, "the pod's processes to end")
    cost = api.fleet.cost_usd(pod_id)
    time.sleep(0.2)
    assert api.fleet.cost_usd(pod_id) == cost, "the bill stops at termination"


def test_every_pod_operation_sends_values_only_as_variables(runpod):
    provider, api = runpod
    pod_id = _launch(provider, _offer(provider), _spec(), "vars").instance_id
    provider.get(pod_id)
    provider.list_instances()
    provider.terminate(pod_id)
    provider.terminate(pod_id)
    pod_ops = [r for r in api.requests if "gpuTypes" not in r["query"]]
    assert len(pod_ops) == 5  # deploy, pod, myself, podTerminate x2
    for body in pod_ops:
        arguments = re.findall(r"\(\s*\w+\s*:\s*([^)\s]+)", body["query"])
        assert all(a.startswith("$") for a in arguments), body["query"]
        assert '"' not in body["query"] and not re.search(r"\d", body["query"])
    assert api.literal_queries == []


def test_interruptible_pod_sends_its_bid_as_a_variable(runpod):
    provider, api = runpod
    offer = _offer(provider, spot=True, cloud="community")
    inst = _launch(provider, offer, _spec(), "spot1")
    sent = api.deploys[-1]
    assert sent["_mutation"] == "podRentInterruptable"
    assert sent["bidPerGpu"] == pytest.approx(offer.price_per_hour_usd / offer.gpu_count)
    assert sent["cloudType"] == "COMMUNITY"
    body = next(r for r in api.requests if "podRentInterruptable" in r["query"])
    assert body["variables"]["input"]["bidPerGpu"] == sent["bidPerGpu"]
    assert "$input: PodRentInterruptableInput!" in body["query"]
    assert str(sent["bidPerGpu"]) not in body["query"]
    running = _running(provider, inst.instance_id)
    assert running.raw["podType"] == "INTERRUPTABLE"
    assert running.price_per_hour_usd == pytest.approx(offer.price_per_hour_usd)
    provider.terminate(inst.instance_id)
    assert _gone(provider, inst.instance_id)


def test_env_values_with_quotes_and_newlines_reach_the_process_intact(runpod):
    provider, api = runpod
    spec = _spec(AWKWARD_VALUE=AWKWARD, JSONISH='{"a": "b\\"c", "d": [1, 2]}\n')
    inst = _launch(provider, _offer(provider), spec, "quotes")
    sent_env = {e["key"]: e["value"] for e in api.deploys[-1]["env"]}
    assert sent_env["AWKWARD_VALUE"] == AWKWARD
    body = next(r for r in api.requests if "podFindAndDeployOnDemand" in r["query"])
    assert "say" not in body["query"] and "line two" not in body["query"]
    running = _running(provider, inst.instance_id)
    _healthy(running.endpoint_url)  # the bootstrap itself survived dockerArgs
    environ = api.fleet.runner.environ(inst.instance_id)
    assert environ["AWKWARD_VALUE"] == AWKWARD
    assert environ["JSONISH"] == '{"a": "b\\"c", "d": [1, 2]}\n'
    assert environ["RUNPOD_POD_ID"] == inst.instance_id
    assert environ["RUNPOD_API_KEY"] == api.scoped_keys[inst.instance_id] != DEFAULT_RUNPOD_KEY
    assert environ["DEPLOYCTL_ENDPOINT_KEY"] == ENDPOINT_KEY
    provider.terminate(inst.instance_id)


# -- failures -------------------------------------------------------------------------------


def test_no_capacity_is_offer_unavailable_and_not_retried(runpod):
    provider, api = runpod
    offer = _offer(provider)
    api.no_capacity_next(1)
    with pytest.raises(OfferUnavailableError, match="no longer any instances available"):
        _launch(provider, offer, _spec(), "full")
    assert len([r for r in api.requests if "podFindAndDeployOnDemand" in r["query"]]) == 1
    assert api.fleet.live() == []
    inst = _launch(provider, offer, _spec(), "full")  # capacity is back
    provider.terminate(inst.instance_id)


def test_deploy_is_retried_after_a_rate_limit_but_never_after_a_5xx(runpod):
    provider, api = runpod
    offer = _offer(provider)
    api.fail_next(1, status=429)
    inst = _launch(provider, offer, _spec(), "rl")
    assert len(api.fleet.live()) == 1
    provider.terminate(inst.instance_id)
    api.fail_next(1, status=500)
    deploys_before = len(api.deploys)
    with pytest.raises(ProviderUnavailableError):
        _launch(provider, offer, _spec(), "five")
    assert len(api.deploys) == deploys_before  # refused before the fake handled it
    assert api.fleet.live() == []


def test_a_pod_created_behind_a_lost_answer_is_reported_for_cleanup(runpod):
    provider, api = runpod
    api.lose_deploy_answer_next(1)
    with pytest.raises(LaunchFailedError) as info:
        _launch(provider, _offer(provider), _spec(), "lost")
    (live,) = api.fleet.live()
    assert info.value.instance_id == live.instance_id
    provider.terminate(info.value.instance_id)
    assert _gone(provider, live.instance_id)


def test_a_pod_that_never_runs_stays_pending(runpod):
    provider, api = runpod
    api.fleet.stall_next(1)
    inst = _launch(provider, _offer(provider), _spec(), "stall")
    time.sleep(0.5)
    now = provider.get(inst.instance_id)
    assert now is not None and now.state is InstanceState.PENDING and now.endpoint_url is None
    assert now.raw["runtime"] is None and now.raw["desiredStatus"] == "RUNNING"
    assert not api.fleet.runner.alive(inst.instance_id)
    provider.terminate(inst.instance_id)
    assert _gone(provider, inst.instance_id)


def test_an_engine_that_never_gets_ready_is_visible_through_the_router(runpod):
    provider, api = runpod
    api.fleet.engine_args = "--never-ready"
    inst = _launch(provider, _offer(provider), _spec(), "slow")
    endpoint = _running(provider, inst.instance_id).endpoint_url
    assert _healthy(endpoint, engine_ready=False)["engine"] != "ready"
    time.sleep(0.5)
    assert httpx.get(f"{endpoint}/health", timeout=5).json()["engine"] != "ready"
    assert httpx.get(f"{endpoint}/v1/models", headers=AUTH, timeout=5).status_code != 200
    provider.terminate(inst.instance_id)
    assert _gone(provider, inst.instance_id)


def test_preempted_pod_is_exited_until_terminated(runpod):
    provider, api = runpod
    inst = _launch(provider, _offer(provider, spot=True), _spec(), "preempt")
    endpoint = _running(provider, inst.instance_id).endpoint_url
    _healthy(endpoint)
    api.preempt(inst.instance_id)
    exited = provider.get(inst.instance_id)
    assert exited is not None and exited.state is InstanceState.EXITED
    assert exited.endpoint_url is None and "interrupted" in exited.message
    assert httpx.get(f"{endpoint}/health", timeout=5).status_code == 502
    listed = {i.instance_id: i.state for i in provider.list_instances()}
    assert listed[inst.instance_id] is InstanceState.EXITED  # still there, still billed
    provider.terminate(inst.instance_id)
    assert _gone(provider, inst.instance_id)


def test_idle_guard_terminates_its_own_pod_with_the_pod_scoped_key(runpod):
    provider, api = runpod
    inst = _launch(provider, _offer(provider), _spec(keep_alive_s=2), "idle")
    pod_id = inst.instance_id
    started = time.monotonic()
    _wait(lambda: provider.get(pod_id) is None, 30, "the guard to terminate its pod")
    took_s = time.monotonic() - started
    assert _gone(provider, pod_id)
    assert api.fleet.destroyed[pod_id].destroyed_by == "scoped"
    terminations = [
        c for c in api.calls if c.path == "/graphql" and "podTerminate" in c.json()["query"]
    ]
    assert [c.headers["authorization"] for c in terminations] == [
        f"Bearer {api.fleet.destroyed[pod_id].injected['RUNPOD_API_KEY']}"
    ]
    assert api.denied == []
    assert took_s < 2 + 10, f"idle teardown took {took_s:.1f} s for keep-alive 2 s"
    _wait(lambda: not api.fleet.runner.alive(pod_id), 10, "the guard to exit")


# -- the fake itself ------------------------------------------------------------------------


def test_fake_refuses_literal_values_unknown_fields_and_foreign_scoped_keys(runpod):
    provider, api = runpod
    url = api.url + "/graphql"
    account = {"Authorization": f"Bearer {DEFAULT_RUNPOD_KEY}"}
    literal = httpx.post(
        url, json={"query": 'query { pod(input: {podId: "abc"}) { id } }'}, headers=account
    )
    assert literal.status_code == 400 and api.literal_queries
    unknown = httpx.post(
        url,
        json={"query": "query P($input: PodFilter!) { pod(input: $input) { id uptime } }",
              "variables": {"input": {"podId": "x"}}},
        headers=account,
    )  # fmt: skip
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["message"] == 'Cannot query field "uptime" on type "Pod".'
    offer = _offer(provider)
    from providers.runpod import DEPLOY_ON_DEMAND_MUTATION

    typo = provider._deploy_input(offer, _spec(), name="deployctl-typo") | {"gpuCont": 1}
    bad = httpx.post(
        url,
        json={"query": DEPLOY_ON_DEMAND_MUTATION, "variables": {"input": typo}},
        headers=account,
    )
    assert (
        bad.status_code == 400 and '"gpuCont" is not defined' in bad.json()["errors"][0]["message"]
    )

    one = _launch(provider, offer, _spec(), "one").instance_id
    two = _launch(provider, offer, _spec(), "two").instance_id
    scoped = RunPodProvider(api_key=api.scoped_keys[one], policy=FAST_POLICY)
    with pytest.raises(CredentialsError):
        scoped.list_instances()
    with pytest.raises(CredentialsError):
        scoped.terminate(two)
    assert [d[1] for d in api.denied] == [one, one]
    scoped.terminate(one)  # its own pod: allowed
    assert api.fleet.destroyed[one].destroyed_by == "scoped"
    provider.terminate(two)


def test_fake_terminates_a_pod_once_its_terminate_after_has_passed(runpod):
    provider, api = runpod
    inst = _launch(provider, _offer(provider), _spec(ttl_s=60), "ttl")
    clock = api.fleet.clock
    api.fleet.clock = lambda: clock() + 60 + TERMINATE_AFTER_GRACE_S + 1
    assert provider.get(inst.instance_id) is None
    assert api.fleet.destroyed[inst.instance_id].destroyed_by == "terminateAfter"


def test_router_streams_server_sent_events_without_buffering(runpod):
    provider, api = runpod
    api.fleet.engine_args = "--token-delay-s 0.3"
    inst = _launch(provider, _offer(provider), _spec(), "sse")
    endpoint = _running(provider, inst.instance_id).endpoint_url
    _healthy(endpoint)
    body = {
        "model": "qwen2.5-7b",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 6,
        "stream": True,
    }
    started = time.monotonic()
    arrivals = []
    with httpx.stream(
        "POST", f"{endpoint}/v1/chat/completions", headers=AUTH, json=body, timeout=20
    ) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic() - started, line))
    assert arrivals[-1][1] == "data: [DONE]"
    assert arrivals[0][0] < arrivals[-1][0] - 1.0, "the first event waited for the last"
    provider.terminate(inst.instance_id)
