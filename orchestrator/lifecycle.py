"""`status`, `down`, `logs` and `reap`: look at deployments, end them, find what leaked.

`status` refreshes every live deployment from its provider (a deployment whose instance
vanished — preempted, or destroyed by its guard at keep-alive/ttl — is ended and its bill
closed, and never counted as running again). `down` terminates, verifies the instance is
gone and closes the bill. `reap` lists every provider's `deployctl-` instances and
destroys the ones the journal does not hold as live, then verifies.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone

from providers import PROVIDERS, get_provider

from .errors import BadInputError, DeployctlError, ProviderError
from .launcher import LABEL_PREFIX, deployment_id_of, destroy_and_verify
from .models import Deployment, DeploymentStatus
from .state import State, delete_key, load_key

__all__ = [
    "GuardStatus",
    "ReapReport",
    "close_deployment",
    "down",
    "guard_status",
    "logs",
    "reap",
    "refresh",
]

LIVE = {DeploymentStatus.PLANNING, DeploymentStatus.LAUNCHING, DeploymentStatus.READY}
UNKNOWN_ORPHAN_MIN_AGE_S = 600.0  # instances of deployments this journal never saw
RENT_CALL_MAX_S = 900.0  # a rent intent older than this is stale, whoever wrote it


@dataclass
class GuardStatus:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    idle_s: float | None = None
    age_s: float | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def guard_status(dep: Deployment, timeout_s: float = 3.0) -> GuardStatus | None:
    """The guard's counters (auth with the stored key), or None when it does not answer."""
    key = load_key(dep.id)
    if not key or not dep.endpoint_url:
        return None
    import httpx

    try:
        r = httpx.get(
            f"{dep.endpoint_url.rstrip('/')}/deployctl/status",
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
        )
        data = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return GuardStatus(
        requests=int(data.get("requests") or 0),
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        idle_s=data.get("idle_s"),
        age_s=data.get("age_s"),
    )


def close_deployment(
    state: State, dep: Deployment, reason: str, counters: GuardStatus | None = None
) -> None:
    """End `dep` and close its bill (both idempotent, so a crash between them is
    repaired by the next call); forget its key. The bill counts every instance the
    deployment rented, failed attempts included (`ledger`)."""
    from . import ledger

    state.mark_ended(dep.id, reason)
    dep = state.get_deployment(dep.id) or dep
    ledger.close(state, dep, counters)
    state.add_event(dep.id, "ended", reason)
    delete_key(dep.id)


def _observe(state: State, dep: Deployment, instance, counters: GuardStatus | None) -> None:
    """Remember what the guard counted and what the provider says it cost so far."""
    from .ledger import provider_cost_usd

    c = counters or GuardStatus()
    state.observe(
        dep.id,
        requests=c.requests if counters else None,
        prompt_tokens=c.prompt_tokens if counters else None,
        completion_tokens=c.completion_tokens if counters else None,
        idle_s=c.idle_s if counters else None,
        provider_cost_usd=provider_cost_usd(instance),
    )


def refresh(state: State, dep: Deployment) -> tuple[Deployment, GuardStatus | None]:
    """Ask the provider about a live deployment; end it if its instance is gone."""
    if dep.status not in LIVE or not dep.provider or not dep.instance_id:
        return dep, None
    provider = get_provider(dep.provider)
    try:
        instance = provider.get(dep.instance_id)
    except ProviderError:
        return dep, None  # cannot tell now: say nothing rather than something wrong
    if instance is None or instance.state.value in ("gone", "exited"):
        if instance is not None:  # exited still bills storage: destroy it
            with contextlib.suppress(DeployctlError):
                destroy_and_verify(state, provider, dep.id, dep.instance_id)
        close_deployment(state, dep, "instance gone (preempted, or ended by its guard)")
        return state.get_deployment(dep.id) or dep, None
    if not getattr(provider, "guarded", True) and _past_ttl(dep):
        # No guard inside a managed endpoint: deployctl itself enforces the ttl.
        return down(state, dep, reason="ttl reached (deleted by deployctl)"), None
    if _past_ttl(dep) and _past_ttl(dep, backstop_s()):  # config read only when past ttl
        # Its guard should have ended it at the ttl (API down, key revoked, guard gone):
        # whoever looks next ends it, rather than let it bill on.
        with contextlib.suppress(DeployctlError):
            reason = "ttl passed and its guard did not end it (destroyed by deployctl)"
            return down(state, dep, reason=reason), None
    counters = guard_status(dep)
    _observe(state, dep, instance, counters)
    return dep, counters


def _past_ttl(dep: Deployment, extra_s: float = 0.0) -> bool:
    start = dep.ready_at or dep.created_at
    return bool(dep.ttl_s) and (_now() - start).total_seconds() >= dep.ttl_s + extra_s


def backstop_s() -> float:
    """`limits.ttl_backstop`: how long past its ttl a guarded deployment may still run
    before `status`/`reap` destroy it themselves (10 minutes unless configured)."""
    from .config import load_config

    try:
        return float(load_config().limits.ttl_backstop)
    except DeployctlError:
        return 600.0


def down(state: State, dep: Deployment, *, reason: str = "down") -> Deployment:
    """Terminate, verify gone, close the bill."""
    counters = guard_status(dep) if dep.status in LIVE else None
    if dep.provider and dep.instance_id and dep.status in LIVE:
        provider = get_provider(dep.provider)
        with contextlib.suppress(ProviderError):
            _observe(state, dep, provider.get(dep.instance_id), counters)
        destroy_and_verify(state, provider, dep.id, dep.instance_id)
    close_deployment(state, dep, reason, counters)
    return state.get_deployment(dep.id) or dep


def logs(dep: Deployment, tail: int = 200) -> str:
    """The last `tail` lines of the guard and engine log, from the guard itself."""
    key = load_key(dep.id)
    if dep.status not in LIVE or not key or not dep.endpoint_url:
        raise DeployctlError(f"{dep.id} is {dep.status.value}: its logs ended with it")
    import httpx

    try:
        r = httpx.get(
            f"{dep.endpoint_url.rstrip('/')}/deployctl/logs",
            params={"tail": tail},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        raise DeployctlError(
            f"the guard of {dep.id} did not answer ({type(exc).__name__})"
        ) from None
    if r.status_code != 200:
        raise DeployctlError(f"the guard of {dep.id} answered HTTP {r.status_code}")
    return r.text


@dataclass
class ReapReport:
    orphans: list[tuple[str, str, str]]  # (provider, instance_id, why)
    destroyed: list[tuple[str, str]]
    failed: list[tuple[str, str, str]]
    ended: list[str]  # deployments whose instance had vanished
    skipped: list[str]  # providers without credentials


def reap(state: State, *, dry_run: bool, provider_names: list[str] | None = None) -> ReapReport:
    """Destroy every `deployctl-` instance the journal does not hold as live, and end
    deployments whose instances have vanished."""
    report = ReapReport([], [], [], [], [])
    live = {(p, iid): dep_id for dep_id, p, iid in state.live_instances()}
    # A launcher still running, between its rent call and journaling the answer: its
    # new instance is not an orphan yet (an intent older than any rent call is stale).
    renting = {
        e.deployment_id
        for e in state.open_intents()
        if e.action == "rent" and e.owner_alive
        and (_now() - e.created_at).total_seconds() < RENT_CALL_MAX_S
    }
    for name in provider_names or list(PROVIDERS):
        provider = get_provider(name)
        if not provider.check_credentials().ok:
            report.skipped.append(name)
            continue
        try:
            instances = provider.list_instances(LABEL_PREFIX)
        except ProviderError as exc:
            report.failed.append((name, "*", f"cannot list: {exc}"))
            continue
        for instance in instances:
            if (name, instance.instance_id) in live:
                continue
            dep_id = deployment_id_of(instance)
            if dep_id in renting:
                continue
            known = dep_id and state.get_deployment(dep_id)
            if not known and _age_s(instance) < UNKNOWN_ORPHAN_MIN_AGE_S:
                continue  # maybe another machine's launch in progress: leave it for now
            why = "journal holds it as ended or never saw it"
            report.orphans.append((name, instance.instance_id, why))
            if dry_run:
                continue
            try:
                destroy_and_verify(state, provider, dep_id or "reap", instance.instance_id)
                report.destroyed.append((name, instance.instance_id))
            except DeployctlError as exc:
                report.failed.append((name, instance.instance_id, str(exc)))
    if not dry_run:
        for dep in state.list_deployments(live_only=True):
            if dep.provider in report.skipped:
                continue
            before = dep.status
            dep, _ = refresh(state, dep)
            if before in LIVE and dep.status not in LIVE:
                report.ended.append(dep.id)
        for dep in state.list_deployments(live_only=True):
            if dep.instance_id is None and not _owner_alive(state, dep.id):
                close_deployment(state, dep, "launcher died before renting")
                report.ended.append(dep.id)
        # Intents of launchers that died mid-call: whatever they created was listed and
        # destroyed above, so the journal can say the call failed.
        for entry in state.open_intents():
            if not entry.owner_alive:
                state.journal_failed(entry.id, "its launcher died; reaped")
    return report


def _owner_alive(state: State, dep_id: str) -> bool:
    """Whether the process that launched the deployment still runs: its rent rows say
    (terminate rows may be `reap`'s own, written by this very process)."""
    return any(e.owner_alive for e in state.journal(dep_id) if e.action == "rent")


def _age_s(instance) -> float:
    if instance.started_at is None:
        return float("inf")
    return (_now() - instance.started_at).total_seconds()


def resolve(state: State, ref: str) -> Deployment:
    """A deployment by id, unique id prefix or task name; BadInputError otherwise."""
    dep = state.get_deployment(ref)
    if dep is None:
        raise BadInputError("deployment", f"no deployment matches {ref!r}; see `deployctl status`")
    return dep
