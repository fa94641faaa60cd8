"""Concurrent fan-out over providers, and the one predicate that filters offers.

Every enabled provider is asked at the same time, each under the same deadline; a slow or
failing provider becomes a warning and the others' offers still come back, so the whole
search takes about as long as the slowest deadline, not the sum. A provider without
credentials is skipped with a one-line hint, unless the user asked for it by name.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

from .errors import CredentialsError, DeployctlError
from .models import Offer, OfferQuery

__all__ = ["OfferSearch", "ProviderResult", "gather_offers", "matches"]


@dataclass
class ProviderResult:
    """What one provider did during a search."""

    name: str
    offers: list[Offer] = field(default_factory=list)
    status: str = "ok"  # ok | skipped | failed | timeout
    message: str = ""
    elapsed_s: float = 0.0
    unknown_gpu_names: set[str] = field(default_factory=set)


@dataclass
class OfferSearch:
    offers: list[Offer]
    results: list[ProviderResult]

    @property
    def warnings(self) -> list[str]:
        lines = []
        for result in self.results:
            if result.status != "ok":
                lines.append(f"{result.name}: {result.status} — {result.message}")
            if result.unknown_gpu_names:
                names = ", ".join(sorted(result.unknown_gpu_names))
                lines.append(f"{result.name}: offers with unknown GPU names left out: {names}")
        return lines


# Providers state VRAM as the driver reports it (an RTX 4090 is 23.99 GiB): a user asking
# for "24 GiB" means the 24 GB class, so minimums allow this much slack.
VRAM_SLACK = 0.95


def matches(offer: Offer, query: OfferQuery) -> bool:
    """True when `offer` satisfies every filter of `query` (adapters may over-return)."""
    if query.gpus is not None and offer.gpu not in query.gpus:
        return False
    vram = offer.vram_gib
    if query.min_vram_gib is not None and vram and vram < query.min_vram_gib * VRAM_SLACK:
        return False
    if (
        query.min_total_vram_gib is not None
        and vram
        and vram * offer.gpu_count < query.min_total_vram_gib * VRAM_SLACK
    ):
        return False
    if (
        query.max_price_per_hour_usd is not None
        and offer.price_per_hour_usd > query.max_price_per_hour_usd
    ):
        return False
    if query.spot is not None and offer.spot != query.spot:
        return False
    if not query.min_gpu_count <= offer.gpu_count <= query.max_gpu_count:
        return False
    if query.regions:
        where = f"{offer.cloud or ''}/{offer.region}".lower()
        if not any(region.lower() in where for region in query.regions):
            return False
    return True


def _ask(provider, query: OfferQuery) -> ProviderResult:
    started = time.monotonic()
    result = ProviderResult(name=provider.name)
    try:
        result.offers = [o for o in provider.list_offers(query) if matches(o, query)]
    except DeployctlError as exc:
        result.status, result.message = "failed", str(exc)
    except Exception as exc:  # an adapter bug must not end the search for the others
        result.status, result.message = "failed", f"unexpected {type(exc).__name__}"
    result.unknown_gpu_names = set(getattr(provider, "unknown_gpu_names", set()) or set())
    result.elapsed_s = time.monotonic() - started
    return result


def gather_offers(
    providers: list,
    query: OfferQuery,
    *,
    deadline_s: float = 10.0,
    requested_by_name: bool = False,
) -> OfferSearch:
    """Ask every provider concurrently; return all offers that match, cheapest first."""
    results: list[ProviderResult] = []
    ready = []
    for provider in providers:
        status = provider.check_credentials()
        if status.ok:
            ready.append(provider)
            continue
        if requested_by_name:
            raise CredentialsError(provider.name, "no credentials", hint=status.hint)
        results.append(ProviderResult(provider.name, status="skipped", message=status.hint))
    if ready:
        pool = ThreadPoolExecutor(max_workers=len(ready), thread_name_prefix="offers")
        futures: dict[Future, str] = {pool.submit(_ask, p, query): p.name for p in ready}
        done, pending = wait_futures(futures, timeout=deadline_s)
        for future in done:
            results.append(future.result())
        for future in pending:
            future.cancel()
            results.append(
                ProviderResult(
                    futures[future],
                    status="timeout",
                    message=f"no answer within {deadline_s:g} s",
                    elapsed_s=deadline_s,
                )
            )
        pool.shutdown(wait=False, cancel_futures=True)
    order = {p.name: i for i, p in enumerate(providers)}
    results.sort(key=lambda r: order.get(r.name, 99))
    offers = [o for r in results for o in r.offers]
    offers.sort(key=lambda o: (o.price_per_hour_usd, o.provider, o.offer_id))
    return OfferSearch(offers, results)
