"""The Vast adapter's lifecycle against the fake Vast API, with the real guard running.

Each rented instance really runs its bootstrap (tests/fakes/instances.py): the guard from
orchestrator/guard.py in front of the fake OpenAI engine (tests/fakes/engine.py, behind
the fake vllm image's `python3` shim). So the endpoint answers for real, and the guard's
idle self-destroy reaches the fake's DELETE with the instance-scoped key. Every test
leaves no process behind (the fixture checks).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from orchestrator.engines import build_spec
from orchestrator.errors import OfferUnavailableError, ProviderUnavailableError
from orchestrator.models import ContainerSpec, Instance, InstanceState, Offer, OfferQuery
from orchestrator.retry import RetryPolicy
from orchestrator.taskfile import load_task
from tests.fakes import DEFAULT_VAST_KEY, FakeResponse, FakeVastApi, serve_vast
from tests.fakes.server import bearer_token

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="container emulation uses /proc"
)

FAST_POLICY = RetryPolicy(attempts=3, deadline_s=5.0, base_s=0.001, cap_s=0.005)
ENDPOINT_KEY = "dk-endpoint-key-for-tests-0123456789"
T = TypeVar("T")


@pytest.fixture
def cloud(monkeypatch) -> Iterator[tuple[FakeVastApi, Any]]:
    from providers.vast import VastProvider

    api = FakeVastApi()  # with Vast's documented input limits, which the real spec meets
    with serve_vast(api) as (_, url):
        monkeypatch.setenv("VAST_URL", url)
        monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
        yield api, VastProvider(policy=FAST_POLICY)
    assert api.fleet.runner.stray_pids() == [], "an instance process outlived the test"


def spec_for(keep_alive_s: int = 600, ttl_s: int = 3600, env: dict | None = None) -> ContainerSpec:
    task = load_task("qwen2.5-7b", {"env": env} if env else None)
    return build_spec(
        task,
        gpu_count=1,
        endpoint_key=ENDPOINT_KEY,
        keep_alive_s=keep_alive_s,
        ttl_s=ttl_s,
        teardown="vast",
    )


def cheapest(provider: Any, *, spot: bool = False) -> Offer:
    return min(provider.list_offers(OfferQuery(spot=spot)), key=lambda o: o.price_per_hour_usd)


def wait_for(probe: Callable[[], T | None], timeout_s: float = 20.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or probe}")
        time.sleep(0.05)


def wait_running(provider: Any, instance_id: str, timeout_s: float = 20.0) -> Instance:
    def probe() -> Instance | None:
        inst = provider.get(instance_id)
        return inst if inst and inst.state is InstanceState.RUNNING else None

    return wait_for(probe, timeout_s, f"instance {instance_id} running")


def http_ok(method: str, url: str, **kwargs: Any) -> httpx.Response | None:
    try:
        response = httpx.request(method, url, timeout=5.0, **kwargs)
    except httpx.TransportError:
        return None
    return response if response.status_code == 200 else None


AUTH = {"Authorization": f"Bearer {ENDPOINT_KEY}"}


# -- the whole lifecycle ---------------------------------------------------------------------


def test_launch_serve_terminate(cloud):
    api, provider = cloud
    api.fleet.boot_delay_s = 0.3
    offer, spec = cheapest(provider), spec_for()
    t0 = time.monotonic()
    launched = provider.launch(offer, spec, name="deployctl-life1", labels={"deployctl": "life1"})
    iid = launched.instance_id
    assert launched.state is InstanceState.PENDING and iid.isdigit()
    assert launched.price_per_hour_usd == pytest.approx(offer.price_per_hour_usd)

    body = api.rents[-1]  # the real API's shape
    assert body["image"] == spec.image == "vllm/vllm-openai:v0.10.2"
    assert (body["runtype"], body["onstart"], body["args"]) == (
        "args",
        "sh",
        ["-c", spec.bootstrap],
    )
    assert body["label"] == "deployctl-life1" and body["disk"] == spec.disk_gib
    assert body["env"]["-p 8000:8000"] == "1" and "price" not in body
    assert body["env"]["DEPLOYCTL_ENDPOINT_KEY"] == ENDPOINT_KEY
    assert not {"CONTAINER_ID", "CONTAINER_API_KEY"} & set(body["env"])

    pending = provider.get(iid)
    assert pending.state is InstanceState.PENDING and pending.endpoint_url is None
    running = wait_running(provider, iid)
    port = api.fleet.runner.get(iid).guard_port
    assert running.endpoint_url == f"http://127.0.0.1:{port}"
    assert running.labels == {"deployctl": "life1", "name": "deployctl-life1"}
    assert running.gpu == offer.gpu and running.started_at is not None
    assert "extra_env" not in running.raw  # the env holds secrets: never in Instance.raw
    url = running.endpoint_url

    health = wait_for(lambda: http_ok("GET", f"{url}/health"), what="guard /health").json()
    assert health["status"] == "ok"
    assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
    models = wait_for(lambda: http_ok("GET", f"{url}/v1/models", headers=AUTH), what="models")
    assert spec.model_name in [m["id"] for m in models.json()["data"]]
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": spec.model_name,
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8,
        },
        headers=AUTH,
        timeout=10,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]
    ready_s = time.monotonic() - t0
    assert str(offer.offer_id) not in {o.offer_id for o in provider.list_offers(OfferQuery())}

    provider.terminate(iid)
    assert provider.get(iid) is None
    assert iid not in {i.instance_id for i in provider.list_instances()}
    provider.terminate(iid)  # idempotent: gone is success
    wait_for(lambda: not api.fleet.runner.alive(iid), 10, "the container to stop")
    assert api.fleet.destroyed[iid].destroyed_by == "account"
    assert api.fleet.cost_usd(iid) > 0
    assert ready_s < 15, f"ready after {ready_s:.1f} s"


def test_list_instances_filters_on_the_label_prefix(cloud):
    api, provider = cloud
    api.fleet.stall_next(3)  # no process needed: they stay loading
    offers = sorted(provider.list_offers(OfferQuery()), key=lambda o: o.price_per_hour_usd)
    spec = spec_for()
    ours = provider.launch(offers[0], spec, name="deployctl-aaa", labels={"deployctl": "aaa"})
    also = provider.launch(offers[1], spec, name="deployctl-bbb", labels={})
    other = provider.launch(offers[2], spec, name="notebook-ccc", labels={})
    assert {i.instance_id for i in provider.list_instances()} == {
        ours.instance_id,
        also.instance_id,
    }
    assert [i.instance_id for i in provider.list_instances("notebook-")] == [other.instance_id]
    (aaa,) = provider.list_instances("deployctl-aaa")
    assert aaa.labels == {"deployctl": "aaa", "name": "deployctl-aaa"}
    assert aaa.state is InstanceState.PENDING  # stalled: the instance never runs
    for inst in (ours, also, other):
        provider.terminate(inst.instance_id)
    assert provider.list_instances("") == []


# -- renting ------------------------------------------------------------------------------------


def test_offer_that_vanishes_at_rent_is_unavailable(cloud):
    api, provider = cloud
    offer = cheapest(provider)
    api.fleet.vanish_next(1)
    with pytest.raises(OfferUnavailableError, match="no longer available"):
        provider.launch(offer, spec_for(), name="deployctl-gone", labels={})
    assert provider.list_instances("") == []
    assert offer.offer_id not in {o.offer_id for o in provider.list_offers(OfferQuery())}
    unknown = offer.model_copy(update={"offer_id": "1"})
    with pytest.raises(OfferUnavailableError, match="not available"):
        provider.launch(unknown, spec_for(), name="deployctl-gone", labels={})


def test_spot_launch_sends_a_bid(cloud):
    api, provider = cloud
    api.fleet.stall_next(1)
    offer = cheapest(provider, spot=True)
    assert offer.spot and offer.offer_id.endswith("-bid")
    launched = provider.launch(offer, spec_for(), name="deployctl-spot", labels={})
    body = api.rents[-1]
    min_bid = offer.raw["min_bid"]
    assert min_bid <= body["price"] <= min_bid * 1.1 + 1e-4
    assert body["price"] == pytest.approx(min_bid * 1.1, abs=1e-4)
    row = api.fleet.instances[launched.instance_id]
    assert row.extra["is_bid"] is True
    shown = provider.get(launched.instance_id)
    assert shown.price_per_hour_usd == pytest.approx(launched.price_per_hour_usd, abs=1e-4)
    assert shown.price_per_hour_usd < offer.raw["dph_total"]
    provider.terminate(launched.instance_id)


def test_env_values_with_quotes_and_newlines_survive(cloud):
    api, provider = cloud
    awkward = "say \"hi\" and 'bye'\nsecond line $HOME `uname` \\ }{ ;|&"
    spec = spec_for(env={"AWKWARD": awkward})
    launched = provider.launch(cheapest(provider), spec, name="deployctl-env", labels={})
    assert api.rents[-1]["env"]["AWKWARD"] == awkward
    wait_running(provider, launched.instance_id)
    environ = api.fleet.runner.environ(launched.instance_id)  # the container's main process
    assert environ["AWKWARD"] == awkward
    assert environ["CONTAINER_ID"] == launched.instance_id
    assert environ["CONTAINER_API_KEY"] == api.scoped_keys[launched.instance_id]
    assert DEFAULT_VAST_KEY not in environ.values()  # the account key never enters
    provider.terminate(launched.instance_id)


def test_rent_that_fails_before_the_api_is_not_retried_and_leaves_nothing(cloud):
    api, provider = cloud
    offer = cheapest(provider)
    api.fail_next(1, status=503)  # answered by the load balancer: nothing was rented
    with pytest.raises(ProviderUnavailableError):
        provider.launch(offer, spec_for(), name="deployctl-5xx", labels={})
    assert len(api.rents) == 1, "a rent is never retried after a 5xx"
    assert provider.list_instances("") == []
    api.fail_next(2, status=429)  # refused before anything happened: safe to retry
    api.fleet.stall_next(1)
    launched = provider.launch(offer, spec_for(), name="deployctl-429", labels={})
    assert len(api.rents) == 4
    provider.terminate(launched.instance_id)


def test_rent_whose_answer_is_lost_returns_the_instance_it_created(cloud, monkeypatch):
    api, provider = cloud
    api.fleet.stall_next(1)
    real_handle = api.handle

    def lossy(request):  # the rent happens, then a proxy answers 502
        response = real_handle(request)
        return FakeResponse(502, {"error": "bad gateway"}) if request.method == "PUT" else response

    monkeypatch.setattr(api, "handle", lossy)
    launched = provider.launch(cheapest(provider), spec_for(), name="deployctl-lost", labels={})
    assert len(api.rents) == 1
    assert [i.instance_id for i in provider.list_instances()] == [launched.instance_id]
    provider.terminate(launched.instance_id)


def test_rent_body_fits_vasts_documented_limits(monkeypatch):
    from providers.vast import VastProvider

    with serve_vast() as (api, url):  # the fake's documented limits, left as they are
        monkeypatch.setenv("VAST_URL", url)
        monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
        api.fleet.stall_next(1)
        provider = VastProvider(policy=FAST_POLICY)
        launched = provider.launch(cheapest(provider), spec_for(), name="deployctl-big", labels={})
        provider.terminate(launched.instance_id)


# -- get / terminate edge cases -----------------------------------------------------------------


def test_unknown_ids_are_gone_and_terminate_is_idempotent(cloud):
    _, provider = cloud
    assert provider.get("999999") is None
    assert provider.get("not-a-vast-id") is None
    provider.terminate("999999")
    provider.terminate("not-a-vast-id")


# -- faults while booting and serving ---------------------------------------------------------


def test_instance_that_never_runs_stays_pending(cloud):
    api, provider = cloud
    api.fleet.stall_next(1)
    launched = provider.launch(cheapest(provider), spec_for(), name="deployctl-stall", labels={})
    time.sleep(0.5)
    inst = provider.get(launched.instance_id)
    assert inst.state is InstanceState.PENDING and inst.endpoint_url is None
    assert api.fleet.runner.get(launched.instance_id) is None  # nothing was started
    provider.terminate(launched.instance_id)


def test_engine_that_never_becomes_ready(cloud):
    api, provider = cloud
    api.fleet.engine_args = "--never-ready"
    launched = provider.launch(cheapest(provider), spec_for(), name="deployctl-slow", labels={})
    url = wait_running(provider, launched.instance_id).endpoint_url
    health = wait_for(lambda: http_ok("GET", f"{url}/health"), what="guard /health").json()
    time.sleep(1.0)
    assert health["engine"] != "ready"
    assert httpx.get(f"{url}/health", timeout=5).json()["engine"] != "ready"
    models = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=5)
    assert models.status_code != 200 or "qwen2.5-7b" not in models.text
    provider.terminate(launched.instance_id)


@pytest.mark.parametrize("gone", [False, True], ids=["exited", "vanished"])
def test_preempted_instance_shows_exited_or_gone(cloud, gone):
    api, provider = cloud
    launched = provider.launch(cheapest(provider), spec_for(), name="deployctl-pre", labels={})
    iid = launched.instance_id
    wait_running(provider, iid)
    api.fleet.preempt(iid, status="exited", gone=gone)
    assert not api.fleet.runner.alive(iid)
    inst = provider.get(iid)
    if gone:
        assert inst is None
        assert iid not in {i.instance_id for i in provider.list_instances()}
    else:
        assert inst.state is InstanceState.EXITED and inst.endpoint_url is None
        assert "exited" in inst.message
        assert [i.state for i in provider.list_instances()] == [InstanceState.EXITED]
        cost = api.fleet.cost_usd(iid)
        provider.terminate(iid)  # still billing until destroyed
        assert provider.get(iid) is None
        assert api.fleet.cost_usd(iid) == pytest.approx(cost)  # the clock stopped at preemption


def test_guard_destroys_its_idle_instance_with_the_scoped_key(cloud):
    api, provider = cloud
    spec = spec_for(keep_alive_s=2)
    launched = provider.launch(cheapest(provider), spec, name="deployctl-idle", labels={})
    iid = launched.instance_id
    url = wait_running(provider, iid).endpoint_url
    wait_for(lambda: http_ok("GET", f"{url}/v1/models", headers=AUTH), what="engine ready")
    ready = time.monotonic()
    wait_for(lambda: provider.get(iid) is None, 30, "the guard's self-destroy")
    gone_after_s = time.monotonic() - ready
    deletes = [c for c in api.calls if c.method == "DELETE" and iid in c.path]
    assert deletes and bearer_token(deletes[0]) == api.scoped_keys[iid]
    assert api.fleet.destroyed[iid].destroyed_by == "scoped"
    assert iid not in {i.instance_id for i in provider.list_instances()}
    wait_for(lambda: not api.fleet.runner.alive(iid), 10, "the container to stop")
    assert 1.5 <= gone_after_s <= 2 + 8, f"gone {gone_after_s:.1f} s after ready"


def test_scoped_key_cannot_do_anything_else(cloud):
    api, provider = cloud
    api.fleet.stall_next(2)
    offers = sorted(provider.list_offers(OfferQuery()), key=lambda o: o.price_per_hour_usd)
    first = provider.launch(offers[0], spec_for(), name="deployctl-s1", labels={})
    second = provider.launch(offers[1], spec_for(), name="deployctl-s2", labels={})
    scoped = {"Authorization": f"Bearer {api.scoped_keys[first.instance_id]}"}
    base = f"{provider.base_url}/api/v0/instances"
    assert httpx.get(f"{base}/", headers=scoped).status_code == 401
    assert httpx.get(f"{base}/{first.instance_id}/", headers=scoped).status_code == 401
    assert httpx.delete(f"{base}/{second.instance_id}/", headers=scoped).status_code == 401
    assert httpx.delete(f"{base}/{first.instance_id}/", headers=scoped).status_code == 200
    assert provider.get(first.instance_id) is None
    provider.terminate(second.instance_id)
