"""What each read-only command does: gather inputs, call the core, hand results to output.

Kept apart from cli.py so the CLI stays parsing-only and so these can be called in tests.
"""

from __future__ import annotations

from typing import Any

from .architectures import all_models, find_model
from .config import load_settings
from .errors import BadInputError, NoOfferFitsError
from .hardware import all_gpus, get_gpu
from .models import Engine, OfferQuery, Quant, TaskSpec
from .planner import make_plan, sizing_input
from .render import (
    candidate_json,
    console,
    gpu_json,
    offer_json,
    plan_json,
    print_json,
    sizing_json,
)
from .search import find_offers, parse_provider_names
from .sizing import bills_for, cost_for, estimate
from .taskfile import builtin_task_names, load_task
from .views import show_estimate, show_gpus, show_models, show_offers, show_plan, show_warnings

__all__ = [
    "estimate_command",
    "gpus_command",
    "models_command",
    "offers_command",
    "plan_command",
]


def offers_command(
    *,
    gpus,
    min_vram,
    max_price,
    providers,
    spot,
    regions,
    gpu_count,
    sort,
    limit,
    catalog_dir,
    as_json,
) -> None:
    settings = load_settings()
    names = parse_provider_names(providers, settings.providers)
    canonical = sorted({get_gpu(g).name for g in gpus}) if gpus else None
    query = OfferQuery(
        gpus=canonical,
        min_vram_gib=min_vram,
        max_price_per_hour_usd=max_price,
        spot=spot,
        regions=list(regions),
        min_gpu_count=gpu_count or 1,
        max_gpu_count=gpu_count or 8,
    )
    search = find_offers(
        names,
        query,
        catalog_dir=catalog_dir or settings.catalog_dir,
        deadline_s=settings.offer_deadline_s,
        requested_by_name=bool(providers),
    )
    offers = search.offers
    if sort == "vram":
        offers = sorted(offers, key=lambda o: (-o.vram_gib * o.gpu_count, o.price_per_hour_usd))
    elif sort == "price-per-gib":
        offers = sorted(
            offers, key=lambda o: o.price_per_hour_usd / max(o.vram_gib * o.gpu_count, 0.1)
        )
    offers = offers[:limit]
    if as_json:
        print_json(
            {
                "schema_version": 1,
                "offers": [offer_json(o) for o in offers],
                "total_matching": len(search.offers),
                "providers": [
                    {
                        "name": r.name,
                        "status": r.status,
                        "message": r.message,
                        "offers": len(r.offers),
                        "elapsed_s": round(r.elapsed_s, 3),
                    }
                    for r in search.results
                ],
                "warnings": search.warnings,
            }
        )
    else:
        show_warnings(console(stderr=True), search)
        show_offers(console(), offers)


def plan_command(
    *,
    task,
    overrides,
    providers,
    catalog_dir,
    sort,
    top,
    requests_per_month,
    gpu_seconds,
    explain,
    as_json,
    traffic: str | None = None,
) -> None:
    settings = load_settings()
    spec = load_task(task, overrides)
    if traffic:  # parse before any network call: bad input exits 2 at once
        from .traffic import parse_traffic

        parse_traffic(traffic)
    find_model(spec.model, spec.arch)  # unknown architecture: exit 2 before any network call
    names = parse_provider_names(providers or spec.providers, settings.providers)
    query = OfferQuery(spot=spec.spot, regions=spec.regions, max_gpu_count=spec.max_gpu_count)
    search = find_offers(
        names,
        query,
        catalog_dir=catalog_dir or settings.catalog_dir,
        deadline_s=settings.offer_deadline_s,
        requested_by_name=bool(providers),
    )
    result = make_plan(spec, search.offers, sort=sort)
    chosen = result.chosen
    bills = (
        bills_for(
            chosen.offer.price_per_hour_usd,
            requests_per_month=requests_per_month,
            gpu_s_per_request=gpu_seconds,
        )
        if chosen
        else None
    )
    report = _traffic_report(traffic, spec, result) if traffic and chosen else None
    if as_json:
        doc = plan_json(result, search, bills, top=top, explain=explain)
        if report is not None:
            doc["traffic"] = report.as_json()
        print_json(doc)
    else:
        show_warnings(console(stderr=True), search)
        show_plan(console(), result, bills, top=top, explain=explain)
        if report is not None:
            _show_traffic(report)
    if chosen is None:
        raise NoOfferFitsError(
            f"no offer fits {spec.name}: {len(result.candidates)} offers considered",
            nearest=[candidate_json(c) for c in result.nearest_misses()],
        )


def _traffic_report(traffic: str, spec: TaskSpec, result):
    from .traffic import compare, parse_traffic

    return compare(parse_traffic(traffic), result.feasible, keep_alive_s=spec.keep_alive_s)


def _show_traffic(report) -> None:
    from .render import table
    from .units import format_duration

    t = report.traffic
    size = (f"{t.gpu_s_per_request:g} s" if t.gpu_s_per_request is not None
            else f"{t.tokens_per_request} tok")
    out = console()
    out.print(f"\n[bold]Which mode is cheaper[/] for {t.requests_per_month:,.0f} requests a "
              f"month ({t.requests_per_day:,.1f} a day), {size} each:")
    tab = table("mode", "provider", "GPU", "price", "keep-alive", "$/month", "$/1000 req",
                "cold starts/day")
    for r in report.rows:
        keep = format_duration(r["keep_alive_s"]) if r["keep_alive_s"] is not None else "-"
        tab.add_row(r["mode"], r["provider"], r["gpu"], r["price"], keep,
                    f"{r['monthly_usd']:,.2f}" + (" (over capacity)" if r["over_capacity"]
                                                 else ""),
                    f"{r['usd_per_1000_requests']:,.3f}", f"{r['cold_starts_per_day']:g}")
    out.print(tab)
    for flip in report.break_even:
        out.print(f"break-even at {flip['requests_per_month']:,.0f} req/month "
                  f"({flip['requests_per_day']:,.1f}/day): below it {flip['below']}, above it "
                  f"{flip['above']}")
    for note in report.notes:
        out.print(f"[dim]note: {note}[/]")


def _estimate_task(model: str, quant: str | None, engine: str | None, context, concurrency):
    overrides: dict[str, Any] = {
        "quant": quant,
        "engine": engine,
        "context_tokens": context,
        "concurrency": concurrency,
    }
    try:
        return load_task(model, overrides)
    except BadInputError as exc:
        if exc.field != "task":
            raise
    chosen_quant = Quant(quant) if quant else Quant.BF16
    chosen_engine = (
        Engine(engine)
        if engine
        else (
            Engine.LLAMACPP
            if chosen_quant.is_gguf and chosen_quant is not Quant.F16
            else Engine.VLLM
        )
    )
    arch = find_model(model)
    data = {
        "name": "estimate",
        "model": model,
        "arch": arch.name,
        "quant": chosen_quant,
        "engine": chosen_engine,
        "context_tokens": context or min(arch.max_position_embeddings, 4096),
        "concurrency": concurrency or 1,
    }
    from pydantic import ValidationError

    from .models import validation_sentence

    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        field, message = validation_sentence(exc)
        raise BadInputError(field, message) from None


def estimate_command(
    *, model, gpu, gpu_count, quant, engine, context, concurrency, price, as_json
) -> None:
    spec = _estimate_task(model, quant, engine, context, concurrency)
    inp = sizing_input(spec)
    gpu_spec = get_gpu(gpu)
    sized = estimate(inp, gpu_spec, gpu_count)
    cost = (
        cost_for(price, sized.speed, spec.load.output_tokens)
        if price is not None and sized.speed
        else None
    )
    bills = bills_for(price) if price is not None else None
    if as_json:
        doc = {
            "schema_version": 1,
            "model": model,
            "architecture": inp.arch.name,
            "quant": spec.quant.value,
            "engine": spec.engine.value,
            "context_tokens": spec.context_tokens,
            "concurrency": spec.concurrency,
            "sizing": sizing_json(sized),
        }
        if cost:
            doc["cost"] = {
                "price_per_hour_usd": price,
                "usd_per_1m_output_tokens": round(cost.usd_per_1m_output_tokens, 4),
                "usd_per_1000_requests": round(cost.usd_per_1000_requests, 4),
            }
        print_json(doc)
    else:
        show_estimate(console(), inp.arch, model, sized, cost, bills)


def models_command(*, as_json: bool) -> None:
    tasks = {name: load_task(name) for name in builtin_task_names()}
    if as_json:
        print_json(
            {
                "schema_version": 1,
                "models": [m.__dict__ for m in all_models()],
                "tasks": {n: t.model_dump(mode="json", by_alias=True) for n, t in tasks.items()},
            }
        )
    else:
        show_models(console(), list(all_models()), {n: t.description for n, t in tasks.items()})


def gpus_command(*, as_json: bool) -> None:
    gpus = all_gpus()
    if as_json:
        print_json({"schema_version": 1, "gpus": [gpu_json(g) for g in gpus]})
    else:
        show_gpus(console(), gpus)
