"""Planning and money for an A/B rig: offers and plans for both sides, `--same-gpu`, the
guardrails' admission of two deployments at once, and what a side that never became
ready cost."""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from typing import Any

from .abreport import Side
from .errors import DeployctlError, NoOfferFitsError

__all__ = ["admit_both", "failed_side_cost", "plan_sides", "same_gpu"]


def plan_sides(specs: dict, sides: dict[str, Side], providers: tuple[str, ...], config,
               say) -> dict[str, list]:  # fmt: skip
    """The feasible candidates of each side, cheapest first; NoOfferFitsError naming the
    side when none fits."""
    from .models import OfferQuery
    from .planner import make_plan
    from .search import find_offers, parse_provider_names

    candidates = {}
    for name, spec in specs.items():
        names = parse_provider_names(providers or spec.providers, tuple(config.providers))
        say(name.upper(), "searching", f"offers from {', '.join(names)}")
        query = OfferQuery(spot=spec.spot, regions=spec.regions, max_gpu_count=spec.max_gpu_count)
        search = find_offers(
            names, query, catalog_dir=None, deadline_s=config.offer_deadline_s,
            requested_by_name=bool(providers),
        )  # fmt: skip
        for warning in search.warnings:
            say(name.upper(), "warning", warning)
        feasible = make_plan(spec, search.offers).feasible
        if not feasible:
            raise NoOfferFitsError(
                f"no offer fits side {name.upper()} ({sides[name].label})",
                hint=f"run `deployctl plan {sides[name].task} --explain` to see why",
            )
        candidates[name] = feasible
    return candidates


def same_gpu(candidates: dict[str, list]) -> dict[str, list]:
    """Both sides restricted to the GPU model whose cheapest offers cost the pair least."""
    cheapest: dict[str, dict[str, float]] = {}
    for name, cands in candidates.items():
        for c in cands:
            prices = cheapest.setdefault(name, {})
            prices[c.offer.gpu] = min(prices.get(c.offer.gpu, 1e18), c.offer.price_per_hour_usd)
    common = set(cheapest["a"]) & set(cheapest["b"])
    if not common:
        raise NoOfferFitsError(
            "--same-gpu: no GPU model serves both sides (A: "
            f"{', '.join(sorted(cheapest['a']))}; B: {', '.join(sorted(cheapest['b']))})",
            hint="drop --same-gpu, or change a side's quantization or context",
        )
    gpu = min(sorted(common), key=lambda g: cheapest["a"][g] + cheapest["b"][g])
    return {n: [c for c in cands if c.offer.gpu == gpu] for n, cands in candidates.items()}


def admit_both(rig, config, candidates: dict[str, list]) -> dict[str, Any]:
    """The money guardrails for two deployments at once: the live-deployment limit must
    leave room for both, and the budget must pay for both projections; refused (exit 3)
    before anything is rented. Each side is admitted again under the launch lock."""
    from .guardrails import Gate, Refusal
    from .state import State

    o = rig.opts.launch
    worst_attempt_s = o.boot_timeout_s + o.ready_timeout_s + o.verify_timeout_s
    gates = {
        n: Gate(config, spec, worst_attempt_s=worst_attempt_s,
                override_budget=rig.opts.override_budget)
        for n, spec in rig.specs.items()
    }  # fmt: skip
    try:
        with State.open() as state:
            live = [d.id for d in state.list_deployments(live_only=True)]
            limit = config.limits.max_deployments
            if limit is not None and len(live) + 2 > limit:
                raise Refusal(
                    "max_deployments", "limits.max_deployments: an A/B rig runs two deployments "
                    f"at once; {len(live)} live and the limit is {limit}",
                    hint="raise it for this run: `deployctl --set limits.max_deployments=2 ab "
                    "...` (or DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS=2), or in the config file",
                )  # fmt: skip
            admissions = {n: g.admit(state, candidates[n]) for n, g in gates.items()}
            budget_usd = config.budget.monthly_usd
            spend = admissions["a"].spend
            both = sum(a.projection.total_usd for a in admissions.values())
            total = spend.spend_usd + spend.committed_usd + both
            if budget_usd is not None and total > budget_usd and not rig.opts.override_budget:
                show = config.budget.show
                raise Refusal(
                    "budget", f"budget: this month's spend {show(spend.spend_usd)} + "
                    f"{show(both)} projected for both sides = {show(total)}, above the monthly "
                    f"budget of {show(budget_usd)}; nothing was rented",
                    hint="shorten --ttl, raise budget.monthly, or pass --override-budget",
                    spend_usd=spend.spend_usd, projected_usd=both, budget_usd=budget_usd,
                )  # fmt: skip
            for n, g in gates.items():
                for line in g.warnings(admissions[n]):
                    rig.say(n.upper(), "budget", line)
    except Refusal as refusal:
        with contextlib.suppress(DeployctlError), State.open() as state:
            gates["a"].record_refusal(state, refusal)
        raise
    return gates


def failed_side_cost(state, side: Side) -> None:
    """What a side that never became ready cost: its bill if closed, else its attempts
    that held an instance, at their price, until they ended (or the deployment did)."""
    dep = state.get_deployment(side.deployment_id)
    if dep is None:
        return
    bill = state.bill(dep.id)
    if bill is not None:
        side.spent_usd, side.billed_s = bill.cost_usd, bill.billed_s
        return
    end = dep.ended_at or datetime.now(timezone.utc)
    spent, held = 0.0, 0.0
    for a in state.attempts(dep.id):
        if a.instance_id:
            seconds = max(((a.ended_at or end) - a.started_at).total_seconds(), 0.0)
            spent += a.price_per_hour_usd * seconds / 3600
            held += seconds
    side.spent_usd, side.billed_s = spent, held
    side.provider = side.provider or dep.provider
    side.gpu = side.gpu or dep.gpu
