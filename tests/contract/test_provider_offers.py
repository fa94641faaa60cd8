"""One offer-listing contract that every provider adapter passes.

The fixture `provider_under_test` yields `(provider, expected)` for each adapter. To add
an adapter, write a builder `_case_<name>(monkeypatch) -> contextmanager[ContractCase]`,
register it in CASE_BUILDERS and append its name to PROVIDER_PARAMS. Adapters without an
HTTP fake (skypilot, local) set `fake=None`; the HTTP fault tests then skip for them.

HTTP adapters run against loopback fakes (tests/fakes) that speak the vendors' real
payloads; base URLs and keys come from the environment exactly as in production
(VAST_URL/VAST_API_KEY, RUNPOD_API_BASE_URL/RUNPOD_API_KEY). Retry waits are tiny.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import (
    CredentialsError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from orchestrator.hardware import all_gpus
from orchestrator.models import Offer, OfferQuery
from orchestrator.offers import VRAM_SLACK, matches
from orchestrator.retry import RetryPolicy
from tests.fakes import (
    DEFAULT_RUNPOD_KEY,
    DEFAULT_VAST_KEY,
    FakeApi,
    FakeRunPodApi,
    FakeVastApi,
    serve_runpod,
    serve_vast,
)

CATALOG_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "catalog"
FAST_POLICY = RetryPolicy(attempts=3, deadline_s=5.0, base_s=0.001, cap_s=0.005)
ON_DEMAND_ONLY = OfferQuery(spot=False)  # one vendor request per listing, for call counts


@dataclass
class ContractCase:
    """What the contract needs to know about one adapter under test."""

    name: str
    make: Callable[..., Any]  # make(api_key=..., timeout_s=...) -> a provider
    key_envs: tuple[str, ...]  # environment variables holding its credentials
    secret: str  # the credential configured for the test
    fake: FakeApi | None = None  # its loopback fake, when it speaks HTTP
    has_spot: bool = True
    has_on_demand: bool = True
    needs_credentials: bool = True  # False for `local`: the credential tests then skip
    source: str = "live"  # "catalog" for adapters priced from a dated catalog (skypilot)
    free: bool = False  # offers may cost 0 (local)


@contextmanager
def _case_vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractCase]:
    from providers.vast import VastProvider

    with serve_vast(FakeVastApi()) as (api, url):
        monkeypatch.setenv("VAST_URL", url)
        monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)

        def make(**kwargs: Any) -> VastProvider:
            return VastProvider(policy=FAST_POLICY, **kwargs)

        yield ContractCase("vast", make, ("VAST_API_KEY",), DEFAULT_VAST_KEY, fake=api)


@contextmanager
def _case_runpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractCase]:
    from providers.runpod import RunPodProvider

    with serve_runpod(FakeRunPodApi()) as (api, url):
        monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
        monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_RUNPOD_KEY)

        def make(**kwargs: Any) -> RunPodProvider:
            return RunPodProvider(policy=FAST_POLICY, **kwargs)

        yield ContractCase("runpod", make, ("RUNPOD_API_KEY",), DEFAULT_RUNPOD_KEY, fake=api)


@contextmanager
def _case_skypilot(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractCase]:
    """The fixture catalog laid out as SkyPilot's cache under SKY_RUNTIME_DIR; unsetting
    that variable leaves only the test's empty HOME: the "no credentials" state."""
    import providers.skypilot as skypilot

    with tempfile.TemporaryDirectory() as runtime:
        _sky_cache(Path(runtime) / ".sky" / "catalogs" / "v8")
        monkeypatch.setenv("SKY_RUNTIME_DIR", runtime)
        # Whether the optional SDK is installed is the environment's business; the
        # "SkyPilot specifics" tests below cover its absence.
        monkeypatch.setattr(skypilot, "sdk_installed", lambda: True)

        def make(**_: Any) -> skypilot.SkyPilotProvider:
            return skypilot.SkyPilotProvider()

        yield ContractCase("skypilot", make, ("SKY_RUNTIME_DIR",), "(no API key)", source="catalog")


@contextmanager
def _case_local(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractCase]:
    """This machine, made deterministic by a fake `nvidia-smi` on PATH (4x H100)."""
    from providers.local import LocalProvider

    with tempfile.TemporaryDirectory() as bin_dir:
        _fake_nvidia_smi(Path(bin_dir), "NVIDIA H100 80GB HBM3, 81559\n" * 4)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

        def make(**_: Any) -> LocalProvider:
            return LocalProvider()

        yield ContractCase(
            "local", make, (), "(no API key)", has_spot=False, needs_credentials=False,
            free=True,
        )  # fmt: skip


def _sky_cache(versioned_dir: Path) -> Path:
    """Copy the fixture catalog into SkyPilot's cache layout: <cloud>/vms.csv."""
    for csv_path in CATALOG_DIR.glob("*.csv"):
        cloud = "common" if csv_path.stem == "accelerators" else csv_path.stem
        name = "accelerators.csv" if cloud == "common" else "vms.csv"
        (versioned_dir / cloud).mkdir(parents=True, exist_ok=True)
        shutil.copy(csv_path, versioned_dir / cloud / name)
    return versioned_dir


def _fake_nvidia_smi(bin_dir: Path, output: str, exit_code: int = 0) -> None:
    script = bin_dir / "nvidia-smi"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stdout.write({output!r})\nsys.exit({exit_code})\n",
        encoding="utf-8",
    )
    script.chmod(0o755)


@contextmanager
def _case_hf(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractCase]:
    """Inference Endpoints' catalog (GET /v2/provider) on its fake; no spot market."""
    pytest.importorskip("huggingface_hub")
    from providers.hf_endpoints import HfEndpointsProvider
    from tests.fakes.hf_api import DEFAULT_HF_TOKEN, serve_hf

    with serve_hf() as (api, url):
        monkeypatch.setenv("HF_ENDPOINTS_API_URL", f"{url}/v2")
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", DEFAULT_HF_TOKEN)

        def make(**kwargs: Any) -> HfEndpointsProvider:
            return HfEndpointsProvider(policy=FAST_POLICY, **kwargs)

        yield ContractCase("hf", make, ("HF_TOKEN",), DEFAULT_HF_TOKEN, fake=api, has_spot=False)


CASE_BUILDERS: dict[str, Callable[[pytest.MonkeyPatch], Any]] = {
    "vast": _case_vast,
    "runpod": _case_runpod,
    "skypilot": _case_skypilot,
    "local": _case_local,
    "hf": _case_hf,
}
PROVIDER_PARAMS = [
    pytest.param(name, id=name) for name in ("vast", "runpod", "skypilot", "local", "hf")
]


@pytest.fixture(params=PROVIDER_PARAMS)
def provider_under_test(request, monkeypatch) -> Iterator[tuple[Any, ContractCase]]:
    with CASE_BUILDERS[request.param](monkeypatch) as case:
        yield case.make(), case


def _http_fake(case: ContractCase) -> FakeApi:
    if case.fake is None:
        pytest.skip(f"{case.name} has no HTTP fake")
    return case.fake


def _filtered(provider: Any, query: OfferQuery) -> list[Offer]:
    return [o for o in provider.list_offers(query) if matches(o, query)]


# -- credentials ------------------------------------------------------------------------


def test_missing_credentials_give_a_hint_without_secrets(provider_under_test, monkeypatch):
    _, case = provider_under_test
    if not case.needs_credentials:
        pytest.skip(f"{case.name} needs no credentials")
    for name in case.key_envs:
        monkeypatch.delenv(name, raising=False)
    status = case.make(api_key=None).check_credentials()
    assert status.ok is False
    assert status.hint.strip()
    assert case.secret not in status.hint
    assert not re.search(r"(?i)bearer\s+\S", status.hint)


def test_configured_credentials_are_ok(provider_under_test):
    provider, _ = provider_under_test
    assert provider.check_credentials().ok is True


def test_check_credentials_never_calls_the_api(provider_under_test):
    provider, case = provider_under_test
    provider.check_credentials()
    if case.fake is not None:
        assert case.fake.calls == []


def test_listing_without_credentials_raises_credentials_error(provider_under_test, monkeypatch):
    _, case = provider_under_test
    if not case.needs_credentials:
        pytest.skip(f"{case.name} needs no credentials")
    for name in case.key_envs:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CredentialsError) as info:
        case.make(api_key=None).list_offers(OfferQuery())
    assert info.value.hint
    if case.fake is not None:
        assert case.fake.calls == []


# -- the offers themselves -----------------------------------------------------------------


def test_offers_are_normalised(provider_under_test):
    provider, case = provider_under_test
    offers = provider.list_offers(OfferQuery())
    assert offers, f"{case.name} listed no offers"
    known = {spec.name for spec in all_gpus()}
    for offer in offers:
        assert isinstance(offer, Offer)
        assert offer.provider == case.name
        assert offer.gpu in known, f"{offer.gpu!r} is not in the hardware table"
        assert offer.price_per_hour_usd > 0 or (case.free and offer.price_per_hour_usd == 0)
        assert offer.vram_gib > 0
        assert offer.gpu_count >= 1
        assert offer.source == case.source
        assert offer.raw
    keys = [o.key for o in offers]
    assert len(keys) == len(set(keys)), "offer keys must be unique"
    assert any(o.spot for o in offers) == case.has_spot
    assert any(not o.spot for o in offers) == case.has_on_demand


def test_unknown_gpu_names_are_a_set_of_vendor_names(provider_under_test):
    provider, _ = provider_under_test
    provider.list_offers(OfferQuery())
    assert isinstance(provider.unknown_gpu_names, set)
    assert all(isinstance(name, str) for name in provider.unknown_gpu_names)


FILTER_QUERIES = {
    "max-price": OfferQuery(max_price_per_hour_usd=1.0),
    "min-vram": OfferQuery(min_vram_gib=40),
    "spot-only": OfferQuery(spot=True),
    "on-demand-only": OfferQuery(spot=False),
    "min-total-vram": OfferQuery(min_total_vram_gib=150),
    "gpu-count": OfferQuery(min_gpu_count=2, max_gpu_count=4),
    "combined": OfferQuery(max_price_per_hour_usd=3.0, min_vram_gib=40, spot=True),
}


@pytest.mark.parametrize("query", FILTER_QUERIES.values(), ids=FILTER_QUERIES.keys())
def test_filters_are_respected(provider_under_test, query):
    provider, case = provider_under_test
    offers = _filtered(provider, query)
    if query.spot is True and not case.has_spot:
        assert offers == []
        return
    assert offers, f"{case.name}: nothing matched {query}"
    for offer in offers:
        if query.max_price_per_hour_usd is not None:
            assert offer.price_per_hour_usd <= query.max_price_per_hour_usd
        if query.min_vram_gib is not None:
            assert offer.vram_gib >= query.min_vram_gib * VRAM_SLACK
        if query.min_total_vram_gib is not None:
            assert offer.vram_gib * offer.gpu_count >= query.min_total_vram_gib * VRAM_SLACK
        if query.spot is not None:
            assert offer.spot is query.spot
        assert query.min_gpu_count <= offer.gpu_count <= query.max_gpu_count


@pytest.mark.parametrize("query", FILTER_QUERIES.values(), ids=FILTER_QUERIES.keys())
def test_pushed_down_filters_never_lose_offers(provider_under_test, query):
    """Filtering at the vendor may over-return, never under-return."""
    provider, _ = provider_under_test
    everything = {o.key for o in _filtered(provider, OfferQuery()) if matches(o, query)}
    pushed = {o.key for o in _filtered(provider, query)}
    assert everything <= pushed


# -- HTTP behaviour: auth, retries, timeouts -------------------------------------------------


def test_the_key_travels_in_the_authorization_header(provider_under_test):
    provider, case = provider_under_test
    fake = _http_fake(case)
    provider.list_offers(ON_DEMAND_ONLY)
    assert fake.calls
    for call in fake.calls:
        assert call.headers.get("authorization") == f"Bearer {case.secret}"
        assert case.secret not in "".join(call.query.get("api_key", []))


def test_rejected_key_is_a_credentials_error_and_not_retried(provider_under_test):
    _, case = provider_under_test
    fake = _http_fake(case)
    wrong = "wrong-key-0000000000000000"
    with pytest.raises(CredentialsError) as info:
        case.make(api_key=wrong).list_offers(ON_DEMAND_ONLY)
    assert len(fake.calls) == 1
    assert wrong not in str(info.value)
    assert info.value.hint


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_failures_are_retried(provider_under_test, status):
    provider, case = provider_under_test
    fake = _http_fake(case)
    fake.fail_next(2, status=status)
    assert provider.list_offers(ON_DEMAND_ONLY)
    assert len(fake.calls) == 3


def test_dropped_connection_is_retried(provider_under_test):
    provider, case = provider_under_test
    fake = _http_fake(case)
    fake.drop_next(1)
    assert provider.list_offers(ON_DEMAND_ONLY)
    assert len(fake.calls) == 2


def test_persistent_5xx_gives_up_after_bounded_attempts(provider_under_test):
    provider, case = provider_under_test
    fake = _http_fake(case)
    fake.fail_next(50, status=500)
    with pytest.raises(ProviderUnavailableError):
        provider.list_offers(ON_DEMAND_ONLY)
    assert len(fake.calls) == FAST_POLICY.attempts


def test_slow_answers_are_a_timeout(provider_under_test):
    _, case = provider_under_test
    fake = _http_fake(case)
    fake.latency_s = 0.5
    with pytest.raises(ProviderTimeoutError):
        case.make(timeout_s=0.1).list_offers(ON_DEMAND_ONLY)
    assert 1 <= len(fake.calls) <= FAST_POLICY.attempts


def test_errors_never_carry_the_key(provider_under_test):
    provider, case = provider_under_test
    fake = _http_fake(case)
    fake.fail_next(50, status=500)
    with pytest.raises(ProviderError) as info:
        provider.list_offers(ON_DEMAND_ONLY)
    assert case.secret not in str(info.value)
    assert case.secret not in repr(info.value.args)


# -- Vast specifics ---------------------------------------------------------------------------


@pytest.fixture
def vast(monkeypatch) -> Iterator[tuple[Any, FakeVastApi]]:
    with _case_vast(monkeypatch) as case:
        yield case.make(), case.fake


def test_vast_searches_once_per_rental_type_with_real_filters(vast):
    provider, fake = vast
    provider.list_offers(
        OfferQuery(min_vram_gib=24, max_price_per_hour_usd=2.0, min_gpu_count=1, max_gpu_count=4)
    )
    bodies = fake.searches
    assert [b["type"] for b in bodies] == ["on-demand", "bid"]
    for body in bodies:
        assert body["verified"] == {"eq": True}
        assert body["rentable"] == {"eq": True}
        assert body["rented"] == {"eq": False}
        assert body["num_gpus"] == {"gte": 1, "lte": 4}
        assert 0 < body["gpu_ram"]["gte"] <= 24 * 1024  # MiB, loosened, never tightened
        assert isinstance(body["limit"], int)
    assert bodies[0]["dph_total"] == {"lte": 2.0}
    assert bodies[0]["order"] == [["dph_total", "asc"]]
    assert bodies[1]["min_bid"] == {"lte": 2.0}
    assert bodies[1]["order"] == [["min_bid", "asc"]]


def test_vast_fake_honours_the_default_filters(vast):
    _, fake = vast
    provider, _ = vast
    offers = provider.list_offers(ON_DEMAND_ONLY)
    by_id = {o["id"]: o for o in fake.offers}
    assert offers
    for offer in offers:
        raw = by_id[int(offer.offer_id)]
        assert raw["verified"] is True and raw["rented"] is False
    assert len(offers) < len(fake.offers)


def test_vast_prices_and_units(vast):
    provider, fake = vast
    offers = provider.list_offers(OfferQuery())
    first = fake.offers[0]
    on_demand = next(o for o in offers if o.offer_id == str(first["id"]))
    spot = next(o for o in offers if o.offer_id == f"{first['id']}-bid")
    assert on_demand.price_per_hour_usd == pytest.approx(first["dph_total"])
    storage = first["dph_total"] - first["dph_base"]
    assert spot.price_per_hour_usd == pytest.approx(first["min_bid"] + storage)
    assert spot.price_per_hour_usd < on_demand.price_per_hour_usd
    assert on_demand.vram_gib == pytest.approx(first["gpu_ram"] / 1024, abs=0.01)
    assert on_demand.gpu_count == first["num_gpus"]
    assert on_demand.region == first["geolocation"]
    assert on_demand.reliability == first["reliability2"]
    assert on_demand.inet_down_mbps == first["inet_down"]
    assert on_demand.raw["ask_contract_id"] == first["ask_contract_id"]


def test_vast_unknown_gpu_names_are_collected_and_reset(vast):
    provider, fake = vast
    fake.add_offer(gpu_name="Imaginary RTX 9999", gpu_ram=24576)
    offers = provider.list_offers(OfferQuery())
    assert "Imaginary RTX 9999" in provider.unknown_gpu_names
    assert all(o.raw["gpu_name"] != "Imaginary RTX 9999" for o in offers)
    fake.offers = [o for o in fake.offers if o["gpu_name"] != "Imaginary RTX 9999"]
    provider.list_offers(OfferQuery())
    assert "Imaginary RTX 9999" not in provider.unknown_gpu_names


def test_vast_documented_404_auth_error_is_a_credentials_error(vast, monkeypatch):
    _, fake = vast
    from providers.vast import VastProvider

    fake.auth_failure_status = 404
    with pytest.raises(CredentialsError):
        VastProvider(api_key="bad-key-123456", policy=FAST_POLICY).list_offers(ON_DEMAND_ONLY)
    assert len(fake.calls) == 1


def test_vast_explicit_arguments_beat_the_environment(vast, monkeypatch):
    from providers.vast import VastProvider

    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    provider = VastProvider(api_key="explicit-key-1234", base_url="http://127.0.0.1:1/")
    assert provider.api_key == "explicit-key-1234"
    assert provider.base_url == "http://127.0.0.1:1"


# -- RunPod specifics -------------------------------------------------------------------------


@pytest.fixture
def runpod(monkeypatch) -> Iterator[tuple[Any, FakeRunPodApi]]:
    with _case_runpod(monkeypatch) as case:
        yield case.make(), case.fake


def test_runpod_uses_graphql_variables_not_literals(runpod):
    provider, fake = runpod
    provider.list_offers(OfferQuery(min_gpu_count=2, max_gpu_count=3, min_vram_gib=40))
    (body,) = fake.requests
    assert isinstance(body.get("variables"), dict)
    assert body["variables"]["lowestPriceInput"] == {"gpuCount": 2}
    arguments = re.findall(r"\(\s*\w+\s*:\s*([^)\s]+)", body["query"])
    assert arguments and all(a.startswith("$") for a in arguments)
    assert not re.search(r"\d", body["query"]), "no literal numbers in the query text"


def test_runpod_values_with_quotes_and_newlines_round_trip(runpod):
    from providers.runpod import GPU_TYPES_QUERY

    provider, fake = runpod
    awkward = 'NVIDIA "Quoted" GPU\nsecond line \\ and }{ braces'
    fake.add_gpu_type(id=awkward, displayName='say "hi"\n')
    data = provider.graphql(
        GPU_TYPES_QUERY, {"input": {"id": awkward}, "lowestPriceInput": {"gpuCount": 1}}
    )
    assert [t["id"] for t in data["gpuTypes"]] == [awkward]
    assert data["gpuTypes"][0]["displayName"] == 'say "hi"\n'
    sent = fake.requests[-1]
    assert sent["variables"]["input"]["id"] == awkward
    assert "Quoted" not in sent["query"]


def test_runpod_offers_per_cloud_kind_and_count(runpod):
    provider, fake = runpod
    rtx4090 = next(t for t in fake.gpu_types if t["id"] == "NVIDIA GeForce RTX 4090")
    offers = [
        o for o in provider.list_offers(OfferQuery(max_gpu_count=2)) if o.raw["id"] == rtx4090["id"]
    ]
    by_id = {o.offer_id: o for o in offers}
    assert set(by_id) == {
        f"NVIDIA GeForce RTX 4090|{cloud}|{kind}|{count}"
        for cloud in ("secure", "community")
        for kind in ("ondemand", "spot")
        for count in (1, 2)
    }
    two = by_id["NVIDIA GeForce RTX 4090|secure|ondemand|2"]
    assert two.price_per_hour_usd == pytest.approx(2 * rtx4090["securePrice"])
    assert two.gpu_count == 2 and two.vram_gib == rtx4090["memoryInGb"]
    assert by_id["NVIDIA GeForce RTX 4090|community|spot|1"].spot is True


def test_runpod_skips_unavailable_clouds_and_out_of_stock_types(runpod):
    provider, fake = runpod
    l4 = next(t for t in fake.gpu_types if t["id"] == "NVIDIA L4")
    assert l4["secureSpotPrice"] is None  # the snapshot has no spot price for it
    l4["communityCloud"] = False
    fake.gpu_types = [l4]
    offer_ids = {o.offer_id for o in provider.list_offers(OfferQuery(max_gpu_count=1))}
    assert offer_ids == {"NVIDIA L4|secure|ondemand|1"}
    l4["maxGpuCount"] = 0  # the fake then reports no stock
    assert provider.list_offers(OfferQuery(max_gpu_count=1)) == []


def test_runpod_graphql_unauthorized_at_http_200_is_a_credentials_error(runpod):
    _, fake = runpod
    from providers.runpod import RunPodProvider

    fake.auth_failure_status = 200
    with pytest.raises(CredentialsError):
        RunPodProvider(api_key="rpa_WRONG", policy=FAST_POLICY).list_offers(ON_DEMAND_ONLY)
    assert len(fake.calls) == 1


def test_runpod_graphql_level_rate_limit_is_retried(runpod):
    provider, fake = runpod
    fake.graphql_error_next(2, "Too many requests, slow down", "RATE_LIMITED")
    assert provider.list_offers(ON_DEMAND_ONLY)
    assert len(fake.calls) == 3


def test_runpod_graphql_logic_error_is_not_retried(runpod):
    provider, fake = runpod
    fake.graphql_error_next(5, 'Unknown argument "foo"', "GRAPHQL_VALIDATION_FAILED")
    with pytest.raises(ProviderError) as info:
        provider.list_offers(ON_DEMAND_ONLY)
    assert type(info.value) is ProviderError
    assert len(fake.calls) == 1


# -- the fakes themselves (they must behave like the vendors for the above to mean much) ----


def test_vast_fake_operators_order_and_limit():
    import httpx

    with serve_vast() as (_, url):
        headers = {"Authorization": f"Bearer {DEFAULT_VAST_KEY}"}
        body = {
            "gpu_name": {"in": ["RTX 4090", "H100 SXM"]},
            "num_gpus": {"gt": 1, "lt": 8},
            "geolocation": {"nin": ["Taiwan, TW"]},
            "order": [["dph_total", "desc"]],
            "limit": 3,
        }
        offers = httpx.post(f"{url}/api/v0/bundles/", json=body, headers=headers).json()["offers"]
        assert len(offers) == 3
        assert all(o["gpu_name"] in ("RTX 4090", "H100 SXM") for o in offers)
        assert all(1 < o["num_gpus"] < 8 and o["geolocation"] != "Taiwan, TW" for o in offers)
        assert [o["dph_total"] for o in offers] == sorted(
            (o["dph_total"] for o in offers), reverse=True
        )
        legacy = httpx.post(f"{url}/api/v0/bundles/?api_key={DEFAULT_VAST_KEY}", json={})
        assert legacy.status_code == 200
        bad = httpx.post(f"{url}/api/v0/bundles/", json={"type": "nope"}, headers=headers)
        assert bad.status_code == 400
        assert httpx.post(f"{url}/api/v0/bundles/", json={}).status_code == 401


def test_runpod_fake_projects_the_selection_and_validates_fields():
    import httpx

    with serve_runpod() as (_, url):
        headers = {"Authorization": f"Bearer {DEFAULT_RUNPOD_KEY}"}
        query = (
            "query Q($i: GpuLowestPriceInput) "
            "{ gpuTypes { id lowestPrice(input: $i) { stockStatus } } }"
        )
        answer = httpx.post(
            f"{url}/graphql",
            json={"query": query, "variables": {"i": {"gpuCount": 99}}},
            headers=headers,
        ).json()
        first = answer["data"]["gpuTypes"][0]
        assert set(first) == {"id", "lowestPrice"}
        assert first["lowestPrice"] == {"stockStatus": None}  # 99 GPUs: none in stock
        unknown = httpx.post(f"{url}/graphql", json={"query": "{ myself { id } }"}, headers=headers)
        assert unknown.status_code == 400 and unknown.json()["errors"]
        unauthorised = httpx.post(f"{url}/graphql", json={"query": query})
        assert unauthorised.status_code == 401
        assert unauthorised.json()["errors"][0]["message"] == "Unauthorized"


def test_fault_switches_are_consumed_in_order():
    import httpx

    with serve_vast() as (api, url):
        headers = {"Authorization": f"Bearer {DEFAULT_VAST_KEY}"}
        api.fail_next(1, status=429)
        api.fail_next(1, status=503)
        codes = [httpx.post(f"{url}/api/v0/bundles/", json={}, headers=headers).status_code]
        codes.append(httpx.post(f"{url}/api/v0/bundles/", json={}, headers=headers).status_code)
        codes.append(httpx.post(f"{url}/api/v0/bundles/", json={}, headers=headers).status_code)
        assert codes == [429, 503, 200]
        api.drop_next(1)
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{url}/api/v0/bundles/", json={}, headers=headers)
        assert len(api.calls) == 4


# -- SkyPilot specifics -------------------------------------------------------------------------


def test_skypilot_cache_dir_follows_home_and_sky_runtime_dir(monkeypatch, tmp_path):
    from providers.skypilot import _installed_schema_version, sky_catalog_dir

    monkeypatch.delenv("SKY_RUNTIME_DIR", raising=False)
    home = Path(os.environ["HOME"])
    version = _installed_schema_version() or "v8"
    assert sky_catalog_dir() == home / ".sky" / "catalogs" / version
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path))
    assert sky_catalog_dir() == tmp_path / ".sky" / "catalogs" / version


def test_skypilot_schema_version_is_read_from_the_installed_sdk_without_importing_it():
    import importlib.util

    from providers.skypilot import _installed_schema_version

    if importlib.util.find_spec("sky") is None:
        assert _installed_schema_version() is None
        return
    constants = Path(importlib.util.find_spec("sky").origin).parent / "skylet" / "constants.py"
    assert f"CATALOG_SCHEMA_VERSION = '{_installed_schema_version()}'" in constants.read_text()


def test_skypilot_falls_back_to_the_newest_catalog_version_present(monkeypatch):
    import providers.skypilot as skypilot

    monkeypatch.delenv("SKY_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(skypilot, "_installed_schema_version", lambda: "v99")
    base = Path(os.environ["HOME"]) / ".sky" / "catalogs"
    (base / "v6" / "aws").mkdir(parents=True)
    (base / "v7" / "aws").mkdir(parents=True)
    assert skypilot.sky_catalog_dir() == base / "v7"


def test_skypilot_leaves_vast_and_runpod_to_their_own_adapters(monkeypatch):
    from providers.skypilot import SkyPilotProvider

    clouds = {o.cloud for o in SkyPilotProvider(catalog_dir=CATALOG_DIR).list_offers(OfferQuery())}
    assert "vast" not in clouds and "runpod" not in clouds
    assert {"aws", "gcp", "azure", "lambda"} <= clouds
    asked = SkyPilotProvider(catalog_dir=CATALOG_DIR, clouds=["vast", "Lambda"])
    offers = asked.list_offers(OfferQuery())
    assert {(o.provider, o.cloud) for o in offers} == {("skypilot", "vast"), ("skypilot", "lambda")}


def test_skypilot_catalog_dir_argument_beats_the_cache(monkeypatch, tmp_path):
    from providers.skypilot import SkyPilotProvider

    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "empty"))
    shutil.copy(CATALOG_DIR / "lambda.csv", tmp_path / "lambda.csv")
    offers = SkyPilotProvider(catalog_dir=tmp_path).list_offers(OfferQuery())
    assert offers and {o.cloud for o in offers} == {"lambda"}
    assert all(o.source == "catalog" for o in offers)


def test_skypilot_credentials_hints(monkeypatch, tmp_path):
    import providers.skypilot as skypilot

    monkeypatch.setattr(skypilot, "sdk_installed", lambda: False)
    status = skypilot.SkyPilotProvider(catalog_dir=CATALOG_DIR).check_credentials()
    assert status.ok is False
    assert status.hint == "pip install 'deployctl[skypilot]' and run `sky check`"
    monkeypatch.setattr(skypilot, "sdk_installed", lambda: True)
    status = skypilot.SkyPilotProvider(catalog_dir=tmp_path / "nothing").check_credentials()
    assert status.ok is False
    assert status.hint == "run `sky check` (or pass --catalog DIR)"
    assert skypilot.SkyPilotProvider(catalog_dir=CATALOG_DIR).check_credentials().ok is True


def test_skypilot_listing_never_imports_the_sdk(tmp_path):
    code = (
        "import sys\n"
        "from providers.skypilot import SkyPilotProvider\n"
        "from orchestrator.models import OfferQuery\n"
        f"p = SkyPilotProvider(catalog_dir={str(CATALOG_DIR)!r})\n"
        "p.check_credentials()\n"
        "assert p.list_offers(OfferQuery())\n"
        "assert 'sky' not in sys.modules, 'sky was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_skypilot_sdk_helper_says_how_to_install(monkeypatch):
    from providers.skypilot import _sky

    monkeypatch.setitem(sys.modules, "sky", None)  # makes `import sky` fail
    with pytest.raises(CredentialsError) as info:
        _sky()
    assert "deployctl[skypilot]" in (info.value.hint or "")


# -- Local specifics ----------------------------------------------------------------------------


def test_local_without_nvidia_smi_offers_the_cpu_with_system_ram(monkeypatch, tmp_path):
    from providers.local import LocalProvider, system_memory_gib

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    (offer,) = LocalProvider().list_offers(OfferQuery())
    assert (offer.provider, offer.offer_id, offer.gpu, offer.region) == (
        "local", "local-cpu", "CPU", "local",
    )  # fmt: skip
    assert offer.gpu_count == 1 and offer.price_per_hour_usd == 0 and not offer.spot
    assert offer.vram_gib == pytest.approx(system_memory_gib(), abs=0.01)
    assert offer.vram_gib > 0


def test_local_failing_nvidia_smi_falls_back_to_the_cpu(monkeypatch, tmp_path):
    from providers.local import LocalProvider

    _fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate\n", 9)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert [o.gpu for o in LocalProvider().list_offers(OfferQuery())] == ["CPU"]


def test_local_one_offer_per_distinct_gpu_and_unknown_names_reported(monkeypatch, tmp_path):
    from providers.local import LocalProvider

    _fake_nvidia_smi(
        tmp_path,
        "NVIDIA GeForce RTX 4090, 24564\nNVIDIA GeForce RTX 4090, 24564\n"
        "NVIDIA A100-SXM4-80GB, 81920\nImaginary GPU 9000, 1024\nbroken line\n",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    provider = LocalProvider()
    offers = {o.gpu: o for o in provider.list_offers(OfferQuery())}
    assert set(offers) == {"RTX4090", "A100-SXM4-80GB"}
    assert offers["RTX4090"].gpu_count == 2
    assert offers["RTX4090"].vram_gib == pytest.approx(24564 / 1024, abs=0.01)
    assert offers["A100-SXM4-80GB"].gpu_count == 1
    assert provider.unknown_gpu_names == {"Imaginary GPU 9000"}


def test_local_parses_nvidia_smi_csv():
    from providers.local import parse_nvidia_smi

    text = "NVIDIA H100 80GB HBM3, 81559\nTesla T4, [N/A]\n\nNVIDIA L4, 23034\n"
    assert parse_nvidia_smi(text) == [("NVIDIA H100 80GB HBM3", 81559.0), ("NVIDIA L4", 23034.0)]
