"""What `up`, `status`, `down`, `logs` and `reap` do, between the CLI and the core."""

from __future__ import annotations

import signal
import sys
import time
from datetime import datetime, timezone
from typing import Any

from providers import get_provider
from providers.base import env_secret

from .alerts import check_budget, check_ttl, notify
from .config import load_config
from .errors import BadInputError, DeployctlError, NoOfferFitsError
from .launcher import Launcher, LaunchOptions, UpResult
from .lifecycle import LIVE, down, logs, reap, refresh, resolve
from .models import OfferQuery
from .planner import make_plan
from .render import console, print_json
from .search import find_offers, parse_provider_names
from .state import State
from .taskfile import load_task
from .units import format_duration

__all__ = ["down_command", "logs_command", "reap_command", "status_command", "up_command"]


class _Phases:
    """Narrates each phase of `up` on stderr with the time it took."""

    def __init__(self, quiet: bool) -> None:
        self._err = None
        self.quiet = quiet
        self.started = time.monotonic()
        self.current: tuple[str, float] | None = None

    @property
    def err(self):
        """A rich console on stderr, made on first use: rich's import (tens of ms) stays
        out of the time before the rent when stderr is not a terminal."""
        if self._err is None:
            self._err = console(stderr=True)
        return self._err

    def _say(self, markup: str, plain: str) -> None:
        if sys.stderr.isatty():
            self.err.print(markup)
        else:
            sys.stderr.write(plain + "\n")
            sys.stderr.flush()

    def __call__(self, phase: str, detail: str) -> None:
        now = time.monotonic()
        if self.current and not self.quiet:
            name, since = self.current
            took = f"{name} took {now - since:.1f} s"
            self._say(f"  [dim]{took}[/]", f"  {took}")
        self.current = (phase, now)
        if not self.quiet:
            at = f"(+{now - self.started:.1f} s)"
            self._say(f"→ [bold]{phase}[/] {detail} [dim]{at}[/]", f"→ {phase} {detail} {at}")


def _sigterm_to_exit(signum: int, frame: Any) -> None:
    raise SystemExit(143)  # unwinds through the launcher, which destroys what it made


def up_command(
    *, task: str, overrides: dict[str, Any], providers, options: LaunchOptions, as_json: bool,
    show_key: bool, override_budget: bool = False, serverless: bool = False,
    traffic: str | None = None,
) -> None:
    if serverless:  # RunPod Serverless: a template + endpoint, no pod, no guard
        from .serverless import serverless_up

        serverless_up(task=task, overrides=overrides, providers=providers, options=options,
                      as_json=as_json, override_budget=override_budget, traffic=traffic)
        return
    from .guardrails import Gate, Refusal

    config = load_config()
    spec = load_task(task, overrides)
    # --provider, else the task's own providers, else the configured ones (as `plan` does)
    names = parse_provider_names(providers or spec.providers, config.providers)
    phases = _Phases(quiet=False)
    worst_attempt_s = options.boot_timeout_s + options.ready_timeout_s + options.verify_timeout_s
    gate = Gate(config, spec, worst_attempt_s=worst_attempt_s, override_budget=override_budget)
    try:
        with State.open() as state:  # limits first: no offer search for a refused launch
            gate.check_limits([d.id for d in state.list_deployments(live_only=True)])
        plan = _plan(spec, task, names, providers, config, phases)
        with State.open() as state:  # fail fast, warn and alert before taking the lock
            admission = gate.admit(state, plan.feasible[: options.max_attempts])
            for line in [*gate.warnings(admission),
                         *check_budget(state, config, admission.spend.spend_usd)]:
                phases.err.print(line, markup=False)
    except Refusal as refusal:
        _refused(gate, config, refusal)
        raise
    options.hf_token = options.hf_token or env_secret("HF_TOKEN")
    tried = plan.feasible[: options.max_attempts]  # the second admission picks among these
    instances = {c.offer.provider: get_provider(c.offer.provider) for c in tried}
    previous = signal.signal(signal.SIGTERM, _sigterm_to_exit)
    try:
        with gate.locked_state() as state:
            # Again under the lock: another `up` may have spent the money meanwhile.
            gate.admission = gate.admit(state, tried)
            result = Launcher(state, instances, options=options, progress=phases).up(
                spec, gate.admission.candidates
            )
    except Refusal as refusal:
        _refused(gate, config, refusal)
        raise
    except DeployctlError:
        _settle()  # every attempt failed: their instances billed too
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    _show_up(result, spec.keep_alive_s, spec.ttl_s, time.monotonic() - phases.started,
             as_json=as_json, show_key=show_key)


def _plan(spec, task: str, names, providers, config, phases: _Phases):
    phases("searching", f"offers from {', '.join(names)}")
    query = OfferQuery(spot=spec.spot, regions=spec.regions, max_gpu_count=spec.max_gpu_count)
    search = find_offers(
        names, query, catalog_dir=None, deadline_s=config.offer_deadline_s,
        requested_by_name=bool(providers),
    )
    for warning in search.warnings:
        phases.err.print(f"warning: {warning}", markup=False)
    failed = [r for r in search.results if r.status != "ok"]
    if not search.offers and search.results and len(failed) == len(search.results):
        # Nobody answered: an operation that failed (exit 1), not a task that fits nothing.
        said = "; ".join(f"{r.name}: {r.status} ({r.message})" for r in failed)
        if all(r.status == "skipped" for r in failed):
            raise DeployctlError(
                "no provider can search offers (none is set up), so nothing was rented: "
                + said,
                hint="set a provider's key (see the README's Providers) or use --provider local",
            )
        raise DeployctlError(
            f"no provider answered the offer search, so nothing was rented: {said}",
            hint="check the provider's status and your key, then run it again",
        )
    plan = make_plan(spec, search.offers)
    if not plan.feasible:
        raise NoOfferFitsError(
            f"no offer fits {spec.name}: {len(plan.candidates)} offers considered",
            hint=f"run `deployctl plan {task} --explain` to see why",
        )
    return plan


def _settle() -> None:
    from .ledger import settle

    try:
        with State.open() as state:
            settle(state)
    except DeployctlError:
        pass  # `cost` and `status` settle it later


def _refused(gate, config, refusal) -> None:
    """Record a refusal in the ledger and alert (once a month per rule); never raises."""
    err = console(stderr=True)
    try:
        with State.open() as state:
            gate.record_refusal(state, refusal)
            line = notify(state, config, "refusal", refusal.rule, refusal.message)
    except DeployctlError as exc:
        line = f"warning: the refusal could not be recorded ({exc})"
    if line:
        err.print(line, markup=False)


def _show_up(result: UpResult, keep_alive_s: int, ttl_s: int, total_s: float, *,
             as_json: bool, show_key: bool) -> None:
    dep, inst = result.deployment, result.instance
    base = (dep.endpoint_url or "").rstrip("/")
    if as_json:
        doc = {
            "schema_version": 1, "deployment_id": dep.id, "task": dep.task_name,
            "provider": dep.provider, "instance_id": dep.instance_id, "gpu": dep.gpu,
            "gpu_count": dep.gpu_count, "endpoint_url": f"{base}/v1", "model": dep.model_name,
            "quoted_price_per_hour_usd": result.quoted_price_per_hour_usd,
            "actual_price_per_hour_usd": result.actual_price_per_hour_usd,
            "keep_alive_s": keep_alive_s, "ttl_s": ttl_s, "ready_s": round(total_s, 2),
            "phase_s": {k: round(v, 2) for k, v in result.phase_s.items()},
        }  # fmt: skip
        if show_key:
            doc["key"] = result.key
        print_json(doc)
        return
    out = console()
    out.print(f"[bold green]Ready[/] in {total_s:.1f} s: {dep.task_name} on {dep.provider} "
              f"{dep.gpu} (deployment {dep.id}, instance {inst.instance_id})")
    out.print(f"Endpoint: {base}/v1")
    if result.key:
        out.print(f"Key:      {result.key}")
    else:  # a managed endpoint without a guard takes the platform's own token
        out.print("Key:      the platform's own token (e.g. Authorization: Bearer $HF_TOKEN)")
    import json

    body = json.dumps(
        {"model": dep.model_name, "messages": [{"role": "user", "content": "Hello"}]}
    )
    bearer = result.key or "$HF_TOKEN"
    out.print(f"Try:      curl -s {base}/v1/chat/completions -H 'Authorization: Bearer "
              f"{bearer}' -H 'Content-Type: application/json' -d '{body}'", soft_wrap=True)
    out.print(f"Price:    quoted ${result.quoted_price_per_hour_usd:.3f}/h, "
              f"actual ${result.actual_price_per_hour_usd:.3f}/h")
    if result.key:
        out.print(f"Ends:     after {format_duration(keep_alive_s)} idle or at "
                  f"{format_duration(ttl_s)} (ttl): its guard destroys it even if this machine "
                  f"is off; `deployctl down {dep.id}` ends it now.")
    else:
        out.print(f"Ends:     scales to zero after {format_duration(keep_alive_s)} idle; it is "
                  f"deleted at {format_duration(ttl_s)} (ttl) by `deployctl reap` or "
                  f"`status` — run one from cron; `deployctl down {dep.id}` ends it now.")


def _row(dep, counters) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    end = dep.ended_at or now
    age_s = (end - dep.created_at).total_seconds()
    cost = dep.cost_usd if dep.ended_at else dep.price_per_hour_usd * age_s / 3600
    return {
        "id": dep.id, "task": dep.task_name, "provider": dep.provider, "gpu": dep.gpu,
        "gpu_count": dep.gpu_count, "status": dep.status.value,
        "price_per_hour_usd": dep.price_per_hour_usd, "age_s": round(age_s, 1),
        "idle_s": round(counters.idle_s, 1) if counters and counters.idle_s is not None else None,
        "requests": counters.requests if counters else None,
        "cost_usd": round(cost, 6), "endpoint_url": dep.endpoint_url,
        "end_reason": dep.end_reason or None,
    }  # fmt: skip


def status_command(*, show_all: bool, as_json: bool) -> None:
    rows = []
    with State.open() as state:
        for dep in state.list_deployments(live_only=not show_all):
            dep, counters = refresh(state, dep)
            rows.append(_row(dep, counters))
        _money_checks(state)
        sessions = _scheduled_sessions(state)
    if as_json:
        print_json({"schema_version": 1, "deployments": rows, "sessions": sessions})
        return
    from .render import table

    t = table("id", "task", "provider", "GPU", "state", "$/h", "age", "idle", "requests",
              "cost $", "ended because")
    for r in rows:
        t.add_row(r["id"], r["task"], r["provider"] or "-", r["gpu"] or "-", r["status"],
                  f"{r['price_per_hour_usd']:.3f}", format_duration(r["age_s"]),
                  format_duration(r["idle_s"]) if r["idle_s"] is not None else "-",
                  str(r["requests"]) if r["requests"] is not None else "-",
                  f"{r['cost_usd']:.4f}", r["end_reason"] or "")
    out = console()
    out.print(t if rows else "no deployments (use --all to include ended ones)")
    if sessions:
        from .schedule_commands import show_sessions

        show_sessions(sessions)


def _scheduled_sessions(state: State) -> list[dict[str, Any]]:
    """Upcoming and ongoing scheduled sessions (schedule_commands owns their shape)."""
    from .schedule_commands import session_rows

    return session_rows(state)


def _money_checks(state: State) -> None:
    """Deployments past their ttl and the month's spend against the budget: warning lines
    on stderr, and alerts (once a month each) to the configured webhook."""
    from .guardrails import current_spend

    config = load_config()
    lines = check_ttl(state, config, state.list_deployments(live_only=True))
    if config.budget.monthly_usd is not None:
        lines += check_budget(state, config, current_spend(state, datetime.now(timezone.utc))
                              .spend_usd)
    err = console(stderr=True)
    for line in lines:
        err.print(line, markup=False)


def down_command(*, refs: tuple[str, ...], everything: bool, as_json: bool) -> None:
    if not refs and not everything:
        raise BadInputError("deployment", "name a deployment (id or task) or pass --all")
    ended = []
    with State.open() as state:
        targets = (state.list_deployments(live_only=True) if everything
                   else [resolve(state, r) for r in refs])
        for dep in targets:
            if dep.status not in LIVE:
                ended.append({"id": dep.id, "status": dep.status.value, "note": "already ended"})
                continue
            dep = down(state, dep)
            ended.append({"id": dep.id, "status": dep.status.value,
                          "cost_usd": round(dep.cost_usd, 6)})
    if as_json:
        print_json({"schema_version": 1, "ended": ended})
        return
    out = console()
    for e in ended:
        note = e.get("note") or f"destroyed and verified gone; cost ${e['cost_usd']:.4f}"
        out.print(f"{e['id']}: {note}")


def logs_command(*, ref: str, tail: int) -> None:
    with State.open() as state:
        dep = resolve(state, ref)
    print(logs(dep, tail), end="")


def reap_command(*, dry_run: bool, providers, as_json: bool) -> None:
    names = list(parse_provider_names(providers, ())) or None
    with State.open() as state:
        report = reap(state, dry_run=dry_run, provider_names=names)
        _money_checks(state)
    if as_json:
        print_json({"schema_version": 1, "dry_run": dry_run,
                    "orphans": [dict(zip(("provider", "instance_id", "why"), o, strict=True))
                                for o in report.orphans],
                    "destroyed": [dict(zip(("provider", "instance_id"), d, strict=True))
                                  for d in report.destroyed],
                    "failed": [dict(zip(("provider", "instance_id", "error"), f, strict=True))
                               for f in report.failed],
                    "ended": report.ended, "skipped_providers": report.skipped})
        return
    out = console()
    verb = "would destroy" if dry_run else "destroyed"
    for p, iid, why in report.orphans:
        out.print(f"orphan {p} {iid}: {why}")
    for p, iid in report.destroyed:
        out.print(f"{verb} {p} {iid} (verified gone)")
    for p, iid, err in report.failed:
        out.print(f"[red]failed[/] {p} {iid}: {err}")
    for dep_id in report.ended:
        out.print(f"ended {dep_id}: its instance had vanished")
    if report.skipped:
        out.print(f"skipped (no credentials): {', '.join(report.skipped)}")
    if not (report.orphans or report.failed or report.ended):
        out.print("nothing to reap")
    if report.failed:
        raise SystemExit(1)
