"""Where offers come from for one command: live providers, or a price catalog directory.

With a catalog (`--catalog DIR` or the `catalog_dir` setting) no account is needed: offers
are read from SkyPilot-format CSVs and labelled as catalog prices with their date. The
`local` provider is always live (it describes this machine).
"""

from __future__ import annotations

import time

from providers import PROVIDERS, get_provider

from .catalog import NATIVE_PROVIDER_CLOUDS, read_catalog_dir
from .errors import BadInputError
from .models import OfferQuery
from .offers import OfferSearch, ProviderResult, gather_offers, matches

__all__ = ["find_offers", "parse_provider_names"]


def parse_provider_names(names: tuple[str, ...] | list[str] | None, default: tuple[str, ...]):
    """Validated provider names from repeated/comma-separated flags, or `default`."""
    flat = [n.strip().lower() for raw in (names or ()) for n in raw.split(",") if n.strip()]
    for name in flat:
        if name not in PROVIDERS:
            raise BadInputError(
                "provider", f"unknown provider {name!r}; accepted: {', '.join(PROVIDERS)}"
            )
    return tuple(dict.fromkeys(flat)) if flat else tuple(default)


def _from_catalog(catalog_dir: str, names: tuple[str, ...], query: OfferQuery) -> OfferSearch:
    started = time.monotonic()
    result = read_catalog_dir(catalog_dir, spot=query.spot)
    per_provider: dict[str, ProviderResult] = {
        n: ProviderResult(n, message=f"catalog prices of {result.quoted_at:%Y-%m-%d}")
        for n in names
        if n != "local"
    }
    for offer in result.offers:
        owner = offer.provider
        if owner in per_provider and matches(offer, query):
            per_provider[owner].offers.append(offer)
    for name, res in per_provider.items():
        res.elapsed_s = time.monotonic() - started
        if name == "skypilot":
            res.unknown_gpu_names = set(result.unknown_gpu_names)
        elif name in NATIVE_PROVIDER_CLOUDS:
            res.unknown_gpu_names = set()
    offers = [o for r in per_provider.values() for o in r.offers]
    return OfferSearch(offers, list(per_provider.values()))


def find_offers(
    names: tuple[str, ...],
    query: OfferQuery,
    *,
    catalog_dir: str | None,
    deadline_s: float,
    requested_by_name: bool,
) -> OfferSearch:
    """All offers from `names` that match `query`, cheapest first."""
    if catalog_dir:
        search = _from_catalog(catalog_dir, names, query)
        if "local" in names:
            live = gather_offers([get_provider("local")], query, deadline_s=deadline_s)
            search = OfferSearch(search.offers + live.offers, search.results + live.results)
    else:
        providers = [get_provider(n) for n in names]
        search = gather_offers(
            providers, query, deadline_s=deadline_s, requested_by_name=requested_by_name
        )
    search.offers.sort(key=lambda o: (o.price_per_hour_usd, o.provider, o.offer_id))
    return search
