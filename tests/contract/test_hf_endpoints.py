"""Hugging Face Inference Endpoints on its loopback fake: what the shared contracts do not
cover. The endpoint is created scale-to-zero with a worker cap, answers an OpenAI chat
completion with the HF token (and nothing without it), scales to zero when idle, wakes on
the next request, and is deleted and verified gone. The lifecycle runs through the real
`huggingface_hub` client, pointed at the fake by HF_ENDPOINTS_API_URL / HF_ENDPOINT.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("huggingface_hub")

from orchestrator.engines import build_spec
from orchestrator.errors import (
    CredentialsError,
    LaunchFailedError,
    OfferUnavailableError,
    ProviderError,
    ProviderUnavailableError,
)
from orchestrator.models import ContainerSpec, InstanceState, Offer, OfferQuery
from orchestrator.retry import RetryPolicy
from orchestrator.taskfile import load_task
from providers.hf_endpoints import HfEndpointsProvider, model_settings
from tests.fakes.hf_api import DEFAULT_HF_NAMESPACE, DEFAULT_HF_TOKEN, FakeHfApi, serve_hf

FAST = RetryPolicy(attempts=3, deadline_s=5, base_s=0.01, cap_s=0.05)
NAME = "deployctl-hftest1"
ENDPOINT_KEY = "deployctl-endpoint-key-never-sent-0001"


@pytest.fixture
def hf(monkeypatch) -> Iterator[tuple[HfEndpointsProvider, FakeHfApi]]:
    with serve_hf() as (api, url):
        monkeypatch.setenv("HF_ENDPOINTS_API_URL", f"{url}/v2")
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", DEFAULT_HF_TOKEN)
        monkeypatch.delenv("HF_NAMESPACE", raising=False)
        yield HfEndpointsProvider(policy=FAST), api


def _spec(keep_alive_s: int = 600, task: str = "qwen2.5-7b") -> ContainerSpec:
    return build_spec(load_task(task), gpu_count=1, endpoint_key=ENDPOINT_KEY,
                      keep_alive_s=keep_alive_s, ttl_s=3600, teardown="none",
                      hf_token=DEFAULT_HF_TOKEN)  # fmt: skip


def _cheapest(provider: HfEndpointsProvider) -> Offer:
    offers = provider.list_offers(OfferQuery(spot=False, max_gpu_count=1))
    return min(offers, key=lambda o: o.price_per_hour_usd)


def _until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _chat(url: str, token: str | None = DEFAULT_HF_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"model": "tgi", "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 3}  # fmt: skip
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def _running(provider: HfEndpointsProvider, name: str = NAME):
    def check():
        inst = provider.get(name)
        ok = inst and inst.state is InstanceState.RUNNING and "scaledToZero" not in inst.message
        return inst if ok and inst.endpoint_url else None

    return _until(check, 10, "running with a URL")


# -- end to end ---------------------------------------------------------------------------


def test_create_call_scale_to_zero_wake_delete(hf):
    provider, api = hf
    api.minute_s = 0.3  # scaleToZeroTimeout is in minutes; shrink them for the test
    launched = provider.launch(_cheapest(provider), _spec(keep_alive_s=60), name=NAME,
                               labels={"deployctl": "hftest1"})  # fmt: skip
    assert launched.state is InstanceState.PENDING and launched.endpoint_url is None
    inst = _running(provider)
    assert provider.ready(inst) is True

    answer = _chat(inst.endpoint_url)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "alpha bravo charlie"
    assert answer.json()["usage"]["completion_tokens"] == 3
    assert _chat(inst.endpoint_url, token=None).status_code == 401
    assert _chat(inst.endpoint_url, token=ENDPOINT_KEY).status_code == 401

    cold = _until(lambda: (i := provider.get(NAME)) and "scaledToZero" in i.message and i,
                  5, "scaled to zero after idle")  # fmt: skip
    assert cold.state is InstanceState.RUNNING and cold.endpoint_url == inst.endpoint_url
    assert api.state_of(NAME) == "scaledToZero"
    assert _chat(cold.endpoint_url).status_code == 503  # the proxy wakes a replica
    assert provider.ready(cold) is False
    _until(lambda: provider.ready(cold), 5, "awake again")

    provider.scale_to_zero(NAME)  # at once, on request
    assert api.state_of(NAME) == "scaledToZero"

    provider.terminate(NAME)
    assert provider.get(NAME) is None
    assert NAME not in {i.instance_id for i in provider.list_instances()}
    assert api.endpoints == {}
    provider.terminate(NAME)  # idempotent


# -- what is created ------------------------------------------------------------------------


def test_create_payload_scale_to_zero_worker_cap_and_no_secrets(hf):
    provider, api = hf
    offer = _cheapest(provider)
    provider.launch(offer, _spec(keep_alive_s=900), name=NAME, labels={"deployctl": "d1"})
    (sent,) = api.created
    assert sent["name"] == NAME and sent["type"] == "protected"
    assert sent["compute"]["scaling"] == {"minReplica": 0, "maxReplica": 1,
                                          "scaleToZeroTimeout": 15}  # fmt: skip
    vendor, region, kind, size = offer.offer_id.split("/")
    assert sent["provider"] == {"vendor": vendor, "region": region}
    assert (sent["compute"]["instanceType"], sent["compute"]["instanceSize"]) == (kind, size)
    assert sent["compute"]["accelerator"] == "gpu"
    model = sent["model"]
    assert (model["framework"], model["task"]) == ("pytorch", "text-generation")
    assert model["repository"] == "Qwen/Qwen2.5-7B-Instruct"
    assert model["env"]["MAX_TOTAL_TOKENS"] == str(load_task("qwen2.5-7b").context_tokens)
    assert "deployctl" in sent["tags"]
    text = str(sent)
    assert ENDPOINT_KEY not in text and DEFAULT_HF_TOKEN not in text
    assert "DEPLOYCTL_" not in text and "secrets" not in model
    provider.terminate(NAME)


def test_worker_cap_and_timeout_bounds(hf):
    provider, api = hf
    capped = HfEndpointsProvider(policy=FAST, max_replica=3)
    capped.launch(_cheapest(provider), _spec(keep_alive_s=20), name=NAME, labels={})
    scaling = api.created[-1]["compute"]["scaling"]
    assert scaling["maxReplica"] == 3
    assert scaling["scaleToZeroTimeout"] == 1  # whole minutes, at least one, never unbounded
    capped.terminate(NAME)


def test_worker_cap_reads_limits_max_workers_when_the_config_has_it(hf, monkeypatch):
    import orchestrator.config as config

    provider, _ = hf

    class Limits:
        max_workers = 2

    class Settings:
        limits = Limits()

    monkeypatch.setattr(config, "load_settings", lambda: Settings())
    assert provider._max_replica() == 2
    monkeypatch.setattr(config, "load_settings", lambda: type("S", (), {"limits": object()})())
    assert provider._max_replica() == 1  # the default while the config has no such key


def test_model_repo_comes_from_every_engine_command():
    for task in ("qwen2.5-7b", "smollm2-135m"):
        spec = _spec(task=task)
        assert model_settings(spec)["repository"] == load_task(task).model.split(":")[0]


# -- status -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected", "has_url"),
    [
        ("pending", InstanceState.PENDING, False),
        ("initializing", InstanceState.PENDING, False),
        ("updating", InstanceState.PENDING, False),
        ("running", InstanceState.RUNNING, True),
        ("scaledToZero", InstanceState.RUNNING, True),
        ("failed", InstanceState.EXITED, False),
        ("updateFailed", InstanceState.EXITED, False),
        ("paused", InstanceState.EXITED, False),
    ],
)
def test_status_mapping(hf, state, expected, has_url):
    provider, api = hf
    provider.launch(_cheapest(provider), _spec(), name=NAME, labels={})
    _running(provider)
    with api.lock:
        api.endpoints[NAME]["status"]["state"] = state
        api._clock[NAME]["since"] = time.monotonic() + 3600  # hold the state still
    inst = provider.get(NAME)
    assert inst.state is expected
    assert bool(inst.endpoint_url) is has_url
    if state == "scaledToZero":
        assert "scaledToZero" in inst.message
    provider.terminate(NAME)


def test_unknown_endpoint_is_gone_and_list_filters_on_the_prefix(hf):
    provider, _ = hf
    assert provider.get("deployctl-never-existed") is None
    provider.terminate("deployctl-never-existed")
    provider.launch(_cheapest(provider), _spec(), name=NAME, labels={})
    provider.launch(_cheapest(provider), _spec(), name="someone-elses", labels={})
    assert [i.instance_id for i in provider.list_instances("deployctl-")] == [NAME]
    for name in (NAME, "someone-elses"):
        provider.terminate(name)


def test_namespace_from_hf_namespace_skips_whoami(hf, monkeypatch):
    provider, api = hf
    monkeypatch.setenv("HF_NAMESPACE", DEFAULT_HF_NAMESPACE)
    HfEndpointsProvider(policy=FAST).get("deployctl-nothing")
    assert not any(c.path == "/api/whoami-v2" for c in api.calls)
    provider.get("deployctl-nothing")
    assert any(c.path == "/api/whoami-v2" for c in api.calls)


# -- failures -------------------------------------------------------------------------------


def test_rejected_token_on_the_lifecycle_is_a_credentials_error(hf):
    _, api = hf
    wrong = "hf_WrongTokenWrongToken0000"
    with pytest.raises(CredentialsError) as info:
        HfEndpointsProvider(api_key=wrong, policy=FAST, namespace=DEFAULT_HF_NAMESPACE).get(NAME)
    assert len(api.calls) == 1
    assert wrong not in str(info.value) and info.value.hint


def test_a_lost_create_answer_is_not_retried_and_the_endpoint_is_handed_back(hf):
    provider, api = hf
    offer = _cheapest(provider)

    def handle_then_drop(request):
        if request.method == "POST" and request.path.endswith(DEFAULT_HF_NAMESPACE):
            with api.lock:
                api.handle(request)  # created; the answer never arrives
            return "drop"
        return None

    api.intercept = handle_then_drop
    with pytest.raises(LaunchFailedError) as info:
        provider.launch(offer, _spec(), name=NAME, labels={})
    api.intercept = None
    assert info.value.instance_id == NAME
    assert len(api.created) == 1
    provider.terminate(NAME)


def test_a_5xx_on_create_with_nothing_created_is_a_retryable_error(hf):
    provider, api = hf
    offer = _cheapest(provider)
    provider.get("warm-up-the-namespace")
    api.fail_next(1, status=503)
    with pytest.raises(ProviderUnavailableError):
        provider.launch(offer, _spec(), name=NAME, labels={})
    assert api.created == [] and api.endpoints == {}


def test_an_offer_that_is_not_ours_or_is_gone_is_unavailable(hf):
    provider, api = hf
    offer = _cheapest(provider)
    with pytest.raises(OfferUnavailableError):
        provider.launch(offer.model_copy(update={"offer_id": "123"}), _spec(), name=NAME,
                        labels={})  # fmt: skip
    gone = offer.model_copy(update={"offer_id": "aws/us-east-1/nvidia-h200/x1"})
    with pytest.raises(ProviderError) as info:
        provider.launch(gone, _spec(), name=NAME, labels={})
    assert "not available" in str(info.value)
    assert api.endpoints == {}


def test_offers_have_per_hour_prices_and_no_spot(hf):
    provider, _ = hf
    offers = {o.offer_id: o for o in provider.list_offers(OfferQuery())}
    a10g4 = offers["aws/us-east-1/nvidia-a10g/x4"]
    assert (a10g4.gpu, a10g4.gpu_count, a10g4.vram_gib) == ("A10G", 4, 24.0)
    assert a10g4.price_per_hour_usd == 5.0 and a10g4.spot is False
    assert (a10g4.cloud, a10g4.region) == ("aws", "us-east-1")
    assert not any(o.offer_id.startswith("aws/eu-west-1/") for o in offers.values())
    assert "aws/us-east-1/nvidia-h200/x1" not in offers  # unavailable instance
    assert "aws/us-east-1/intel-spr/x2" not in offers  # CPU
    assert provider.unknown_gpu_names == {"imaginary-x9000"}
    assert provider.list_offers(OfferQuery(spot=True)) == []


# -- the CLI's hot path ---------------------------------------------------------------------


def test_huggingface_hub_is_not_imported_until_the_lifecycle_needs_it(tmp_path):
    code = (
        "import sys\n"
        "import providers\n"
        "from providers import get_provider\n"
        "p = get_provider('hf', api_key='hf_x')\n"
        "assert p.check_credentials().ok\n"
        "assert 'huggingface_hub' not in sys.modules, 'huggingface_hub was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
