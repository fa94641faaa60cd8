"""`deployctl up TASK --provider runpod --serverless`: a RunPod Serverless endpoint.

The order (as the pod launcher's, DESIGN §1 step 5): limits -> GPU pool (the cheapest
per-second pool whose GPU the plan says fits) -> budget projection -> journal intent ->
template + endpoint -> journal the endpoint id -> ready when the endpoint answers an
OpenAI chat completion through `/openai/v1` -> READY. A failure or an interruption after
creation deletes the endpoint and its template and verifies both are gone.

Every endpoint gets workersMin 0, workersMax = `limits.max_workers` (default 1), an idle
timeout (`--keep-alive` when given, else RunPod's 5 s: serverless workers bill while they
idle, so the pods' 15-minute keep-alive default would defeat per-second billing), an
execution timeout (`EXECUTION_TIMEOUT_DEFAULT_S`, or the task's ttl if shorter) and
FlashBoot.

Money: the projection is the per-second price x the expected busy seconds (from
`--traffic` over the ttl, else one hour), plus the minimum (none: workersMin 0). The
deployment's price_per_hour_usd is that projection spread over the ttl, so `status`,
`cost` and the budget's committed spend follow the projection (RunPod's serverless
billing is not read back yet). There is no guard: the ttl holds only when deployctl looks
(`deployctl status`, or `deployctl reap` from cron; `schedule tick` looks only at
scheduled sessions' deployments), which deletes an endpoint past its ttl.

The state records the deployment with provider `runpod-serverless` (the adapter that
`status`, `down` and `reap` must use for it), instance_id = the endpoint id, endpoint_url
= `https://api.runpod.ai/v2/<id>/openai` (clients add `/v1`); the key is the caller's
RUNPOD_API_KEY, never stored or printed by deployctl.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .config import load_config
from .errors import BadInputError, DeployctlError, NoOfferFitsError
from .models import Attempt, DeploymentStatus, OfferQuery
from .render import console, print_json
from .traffic import (
    MONTH_S,
    SERVERLESS_IDLE_DEFAULT_S,
    parse_traffic,
    serverless_pool,
)
from .units import format_duration

__all__ = ["ServerlessChoice", "choose_pool", "project_usd", "serverless_up"]

PROVIDER = "runpod-serverless"
DEFAULT_BUSY_S = 3600.0  # the projection without --traffic: one hour of one busy worker
MAX_IDLE_TIMEOUT_S = 3600


@dataclass(frozen=True)
class ServerlessChoice:
    gpu: str
    gpu_count: int
    pool: str
    usd_per_s: float  # all GPUs of one worker
    speed: Any = None


def choose_pool(candidates: list[Any]) -> ServerlessChoice | None:
    """The cheapest per-second RunPod pool among the plan's feasible candidates."""
    best = None
    for c in candidates:
        pool = serverless_pool(c.offer.gpu)
        if pool is None:
            continue
        choice = ServerlessChoice(c.offer.gpu, c.offer.gpu_count, pool[0],
                                  pool[1] * c.offer.gpu_count,
                                  c.sizing.speed if c.sizing else None)
        if best is None or choice.usd_per_s < best.usd_per_s:
            best = choice
    return best


def project_usd(usd_per_s: float, *, ttl_s: int, traffic: str | None,
                speed: Any = None, minimum_usd: float = 0.0) -> tuple[float, float]:
    """(projected USD, busy seconds): per-second price x expected busy seconds + minimum."""
    if traffic:
        t = parse_traffic(traffic)
        share = min(1.0, ttl_s / MONTH_S) if ttl_s else 1.0
        busy_s = t.requests_per_month * t.seconds_per_request(speed) * share
    else:
        busy_s = DEFAULT_BUSY_S
    return usd_per_s * busy_s + minimum_usd, busy_s


def serverless_up(*, task: str, overrides: dict[str, Any], providers, options,
                  as_json: bool, override_budget: bool = False,
                  traffic: str | None = None) -> None:
    from providers import get_provider
    from providers.base import env_secret
    from providers.runpod_serverless import (
        EXECUTION_TIMEOUT_DEFAULT_S,
        EndpointConfig,
        worker_env,
    )

    from .engines import served_name
    from .guardrails import Gate, Refusal, current_spend, disk_gib
    from .lifecycle_commands import _Phases, _refused
    from .planner import make_plan
    from .search import find_offers
    from .state import State
    from .taskfile import load_task

    names = [n for n in (providers or ("runpod",)) if n]
    if any(n not in ("runpod", PROVIDER) for n in names):
        raise BadInputError("provider", "--serverless runs on RunPod only: --provider runpod")
    config = load_config()
    spec = load_task(task, overrides)
    phases = _Phases(quiet=False)
    gate = Gate(config, spec, worst_attempt_s=0.0, override_budget=override_budget)
    provider = get_provider(PROVIDER)
    try:
        with State.open() as state:
            gate.check_limits([d.id for d in state.list_deployments(live_only=True)])
        phases("searching", "RunPod GPU types for a serverless pool")
        query = OfferQuery(spot=False, max_gpu_count=spec.max_gpu_count)
        search = find_offers(["runpod"], query, catalog_dir=None,
                             deadline_s=config.offer_deadline_s, requested_by_name=True)
        plan = make_plan(spec, search.offers)
        choice = choose_pool(plan.feasible)
        if choice is None:
            raise NoOfferFitsError(f"no RunPod serverless GPU pool fits {spec.name}",
                                   hint=f"run `deployctl plan {task} --provider runpod`")
        projected, busy_s = project_usd(choice.usd_per_s, ttl_s=spec.ttl_s, traffic=traffic,
                                        speed=choice.speed)
        workers_max = config.limits.max_workers
        cap = config.limits.max_price_per_hour
        if cap is not None and choice.usd_per_s * 3600 * workers_max > (
            cap * config.budget.usd_per_unit + 1e-9
        ):
            raise Refusal("max_price_per_hour", f"limits.max_price_per_hour: {workers_max} "
                          f"busy {choice.gpu} worker(s) cost ${choice.usd_per_s * 3600:.3f}/h "
                          "each, above the limit", hint="raise limits.max_price_per_hour")
        with State.open() as state:
            spend = current_spend(state, datetime.now(timezone.utc))
            budget = config.budget.monthly_usd
            total = spend.spend_usd + spend.committed_usd + projected
            if budget is not None and total > budget and not override_budget:
                raise Refusal("budget", f"budget: this month's spend ${spend.spend_usd:.2f} + "
                              f"${spend.committed_usd:.2f} committed + ${projected:.2f} "
                              f"projected for {spec.name} (serverless {choice.gpu} "
                              f"${choice.usd_per_s:.5f}/s x {busy_s:.0f} busy s) is above "
                              f"the monthly budget of ${budget:.2f}; nothing was created",
                              hint="pass --traffic, shorten --ttl, or --override-budget",
                              spend_usd=spend.spend_usd, projected_usd=projected,
                              budget_usd=budget)
    except Refusal as refusal:
        _refused(gate, config, refusal)
        raise
    idle_s = (spec.keep_alive_s if overrides.get("keep_alive") else SERVERLESS_IDLE_DEFAULT_S)
    idle_s = max(1, min(int(idle_s), MAX_IDLE_TIMEOUT_S))
    execution_s = EXECUTION_TIMEOUT_DEFAULT_S
    if spec.ttl_s:
        execution_s = max(1, min(execution_s, spec.ttl_s))
    hours = (spec.ttl_s or MONTH_S) / 3600.0
    rate = projected / hours  # the projection spread over the ttl (see module doc)
    hf_token = options.hf_token or env_secret("HF_TOKEN")
    model = served_name(spec)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    started = time.monotonic()
    try:
        with gate.locked_state() as state:
            dep = state.new_deployment(spec.name, spec.model_dump_json(by_alias=True,
                                       exclude={"env"}), idle_s, spec.ttl_s,
                                       {"task": spec.name, "mode": "serverless"})
            state.add_budget_event("projection", rule="budget", deployment_id=dep.id,
                                   task_name=spec.name, spend_usd=spend.spend_usd,
                                   projected_usd=projected, budget_usd=config.budget.monthly_usd,
                                   message=f"serverless {choice.pool} ${choice.usd_per_s:.5f}/s"
                                   f" x {busy_s:.0f} s")
            if override_budget and config.budget.monthly_usd is not None and (
                spend.spend_usd + spend.committed_usd + projected > config.budget.monthly_usd
            ):
                state.add_budget_event("override", rule="budget", deployment_id=dep.id,
                                       task_name=spec.name, message="--override-budget")
            state.update_deployment(dep.id, status=DeploymentStatus.LAUNCHING.value)
            endpoint_config = EndpointConfig(
                name=dep.label, pool=choice.pool, gpu_count=choice.gpu_count,
                env=worker_env(spec, choice.gpu_count, hf_token=hf_token, served_name=model),
                idle_timeout_s=idle_s, execution_timeout_s=execution_s,
                workers_max=workers_max, ttl_s=spec.ttl_s, disk_gib=disk_gib(spec),
            )
            result = _create_and_wait(state, provider, dep, endpoint_config, choice, model,
                                      rate, options, phases)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _show(result, choice, endpoint_config, projected, busy_s, time.monotonic() - started,
          as_json=as_json)


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(143)


def _create_and_wait(state, provider, dep, config, choice: ServerlessChoice, model: str,
                     rate: float, options, phases):
    from .errors import LaunchFailedError, ProviderError
    from .launcher import destroy_and_verify

    offer_key = f"{PROVIDER}|{choice.pool}|{choice.gpu_count}"
    state.add_attempt(dep.id, Attempt(n=1, provider=PROVIDER, offer_key=offer_key,
                                      gpu=choice.gpu, price_per_hour_usd=rate,
                                      outcome="trying", started_at=datetime.now(timezone.utc)))
    jid = state.journal_intent(dep.id, "rent", PROVIDER, offer_key=offer_key)
    phases("creating", f"template + endpoint on {choice.pool} ({choice.gpu}), "
           f"workersMax {config.workers_max}, idle {config.idle_timeout_s} s")
    endpoint_id = None
    try:
        try:
            instance = provider.create(config, labels={"deployctl": dep.id})
        except LaunchFailedError as exc:
            state.journal_failed(jid, str(exc), exc.instance_id)
            endpoint_id = exc.instance_id
            raise
        except ProviderError as exc:
            state.journal_failed(jid, str(exc))
            raise
        endpoint_id = instance.instance_id
        state.journal_done(jid, endpoint_id)
        dep = state.update_deployment(
            dep.id, provider=PROVIDER, offer_key=offer_key, gpu=choice.gpu,
            gpu_count=choice.gpu_count, instance_id=endpoint_id, model_name=model,
            price_per_hour_usd=rate, endpoint_url=instance.endpoint_url,
        )
        phases("loading model", f"until {instance.endpoint_url}/v1 answers a chat completion")
        _wait_ready(instance.endpoint_url, provider.api_key, model, options)
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, DeployctlError) else type(exc).__name__
        if endpoint_id:
            try:
                destroy_and_verify(state, provider, dep.id, endpoint_id)
            except DeployctlError as cleanup:
                reason += f"; cleanup failed: {cleanup} (run `deployctl reap`)"
        state.finish_attempt(dep.id, 1, "failed", reason, instance_id=endpoint_id)
        state.mark_ended(dep.id, reason, status=DeploymentStatus.FAILED)
        from .ledger import close

        close(state, state.get_deployment(dep.id) or dep)
        raise
    dep = state.update_deployment(dep.id, status=DeploymentStatus.READY.value,
                                  ready_at=datetime.now(timezone.utc))
    state.finish_attempt(dep.id, 1, "ready", instance_id=endpoint_id)
    state.add_event(dep.id, "ready", instance.endpoint_url or "")
    phases("ready", instance.endpoint_url or "")
    return dep


def _wait_ready(endpoint_url: str | None, api_key: str | None, model: str, options) -> None:
    """Until `{endpoint_url}/v1/chat/completions` answers 200 with a choice (a cold start
    holds or fails the first calls: retried until the ready timeout)."""
    import httpx

    if not endpoint_url:
        raise DeployctlError("the endpoint has no URL")
    deadline = time.monotonic() + options.ready_timeout_s
    body = {"model": model, "messages": [{"role": "user", "content": "Say OK."}],
            "max_tokens": 4}
    last = "no answer yet"
    while True:
        try:
            r = httpx.post(f"{endpoint_url.rstrip('/')}/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {api_key}"}, timeout=120.0)
            if r.status_code == 200 and (r.json().get("choices") or []):
                return
            last = f"HTTP {r.status_code}"
            if r.status_code in (401, 403, 404):
                raise DeployctlError(f"the endpoint refused the readiness call ({last})")
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise DeployctlError(f"the endpoint did not answer a chat completion within "
                                 f"{format_duration(options.ready_timeout_s)} ({last})")
        time.sleep(options.poll_s)


def _show(dep, choice: ServerlessChoice, config, projected: float, busy_s: float,
          total_s: float, *, as_json: bool) -> None:
    base = (dep.endpoint_url or "").rstrip("/")
    if as_json:
        print_json({
            "schema_version": 1, "mode": "serverless", "deployment_id": dep.id,
            "task": dep.task_name, "provider": dep.provider, "instance_id": dep.instance_id,
            "gpu": dep.gpu, "gpu_count": dep.gpu_count, "pool": choice.pool,
            "endpoint_url": f"{base}/v1", "model": dep.model_name,
            "usd_per_second": choice.usd_per_s, "projected_usd": round(projected, 4),
            "projected_busy_s": round(busy_s, 1), "workers_min": 0,
            "workers_max": config.workers_max, "idle_timeout_s": config.idle_timeout_s,
            "execution_timeout_s": config.execution_timeout_s, "flashboot": True,
            "ttl_s": dep.ttl_s, "ready_s": round(total_s, 2),
        })  # fmt: skip
        return
    out = console()
    out.print(f"[bold green]Ready[/] in {total_s:.1f} s: {dep.task_name} on RunPod Serverless "
              f"{choice.pool} ({dep.gpu}) (deployment {dep.id}, endpoint {dep.instance_id})")
    out.print(f"Endpoint: {base}/v1")
    out.print("Key:      your RUNPOD_API_KEY (RunPod authenticates serverless calls)")
    out.print(f"Model:    {dep.model_name}")
    out.print(f"Price:    ${choice.usd_per_s:.5f}/s while a worker runs; projected "
              f"${projected:.2f} for {busy_s:.0f} busy s")
    out.print(f"Limits:   workers 0..{config.workers_max}, idle {config.idle_timeout_s} s, "
              f"execution {format_duration(config.execution_timeout_s)}, FlashBoot on")
    out.print(f"Ends:     at {format_duration(dep.ttl_s)} (ttl) when deployctl looks: there is "
              "no guard in serverless, so run `deployctl reap` from cron; "
              f" `deployctl down {dep.id}` deletes it now.")
