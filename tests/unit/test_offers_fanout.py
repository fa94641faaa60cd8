"""Concurrent fan-out: deadlines, failures and missing credentials never end the search."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from orchestrator.errors import CredentialsError, ProviderUnavailableError
from orchestrator.models import CredentialStatus, Offer, OfferQuery
from orchestrator.offers import gather_offers, matches


def offer(provider: str, price: float, **extra) -> Offer:
    return Offer(
        provider=provider,
        offer_id=f"{provider}-{price}",
        gpu="RTX4090",
        gpu_count=1,
        vram_gib=24,
        price_per_hour_usd=price,
        quoted_at=datetime.now(timezone.utc),
        **extra,
    )


class SleepyProvider:
    def __init__(
        self,
        name: str,
        delay_s: float,
        offers: list[Offer],
        *,
        creds: bool = True,
        error: Exception | None = None,
    ):
        self.name = name
        self.delay_s = delay_s
        self.offers = offers
        self.creds = creds
        self.error = error
        self.unknown_gpu_names = {"Mystery GPU"} if name == "odd" else set()

    def check_credentials(self) -> CredentialStatus:
        return CredentialStatus(ok=self.creds, hint=f"set {self.name.upper()}_API_KEY")

    def list_offers(self, query: OfferQuery) -> list[Offer]:
        time.sleep(self.delay_s)
        if self.error:
            raise self.error
        return self.offers


def test_total_time_is_the_slowest_not_the_sum():
    providers = [SleepyProvider(f"p{i}", 0.4, [offer(f"p{i}", 1.0 + i)]) for i in range(4)]
    started = time.monotonic()
    search = gather_offers(providers, OfferQuery(), deadline_s=5)
    elapsed = time.monotonic() - started
    assert len(search.offers) == 4
    assert elapsed < 1.0  # 4 x 0.4 s one after another would take 1.6 s


def test_slow_provider_becomes_a_warning_at_the_deadline():
    fast = SleepyProvider("fast", 0.0, [offer("fast", 0.5)])
    slow = SleepyProvider("slow", 3.0, [offer("slow", 0.1)])
    started = time.monotonic()
    search = gather_offers([fast, slow], OfferQuery(), deadline_s=0.5)
    assert time.monotonic() - started < 1.5
    assert [o.provider for o in search.offers] == ["fast"]
    assert any("slow: timeout" in w for w in search.warnings)


def test_failing_provider_is_a_warning():
    ok = SleepyProvider("ok", 0.0, [offer("ok", 0.5)])
    bad = SleepyProvider("bad", 0.0, [], error=ProviderUnavailableError("bad", "HTTP 503"))
    search = gather_offers([ok, bad], OfferQuery(), deadline_s=2)
    assert len(search.offers) == 1
    assert any("bad: failed" in w and "503" in w for w in search.warnings)


def test_adapter_bug_does_not_end_the_search():
    ok = SleepyProvider("ok", 0.0, [offer("ok", 0.5)])
    buggy = SleepyProvider("buggy", 0.0, [], error=KeyError("gpu_name"))
    search = gather_offers([ok, buggy], OfferQuery(), deadline_s=2)
    assert len(search.offers) == 1 and any("buggy: failed" in w for w in search.warnings)


def test_missing_credentials_skip_with_hint_unless_named():
    ok = SleepyProvider("ok", 0.0, [offer("ok", 0.5)])
    nokey = SleepyProvider("vast", 0.0, [], creds=False)
    search = gather_offers([ok, nokey], OfferQuery(), deadline_s=2)
    assert len(search.offers) == 1
    assert any("vast: skipped" in w and "VAST_API_KEY" in w for w in search.warnings)
    with pytest.raises(CredentialsError) as info:
        gather_offers([nokey], OfferQuery(), deadline_s=2, requested_by_name=True)
    assert info.value.hint == "set VAST_API_KEY"


def test_unknown_gpu_names_are_reported():
    odd = SleepyProvider("odd", 0.0, [offer("odd", 0.5)])
    search = gather_offers([odd], OfferQuery(), deadline_s=2)
    assert any("Mystery GPU" in w for w in search.warnings)


def test_results_are_cheapest_first_and_refiltered():
    p = SleepyProvider("p", 0.0, [offer("p", 3.0), offer("p", 1.0), offer("p", 2.0, spot=True)])
    search = gather_offers([p], OfferQuery(max_price_per_hour_usd=2.5, spot=False), deadline_s=2)
    assert [o.price_per_hour_usd for o in search.offers] == [1.0]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (OfferQuery(gpus=["RTX4090"]), True),
        (OfferQuery(gpus=["H100-SXM"]), False),
        (OfferQuery(min_vram_gib=48), False),
        (OfferQuery(min_total_vram_gib=20), True),
        (OfferQuery(max_price_per_hour_usd=0.1), False),
        (OfferQuery(spot=True), False),
        (OfferQuery(min_gpu_count=2), False),
        (OfferQuery(regions=["us-east"]), True),
        (OfferQuery(regions=["eu-west"]), False),
    ],
)
def test_matches(query, expected):
    o = offer("vast", 0.4, region="us-east-1", cloud=None)
    assert matches(o, query) is expected
