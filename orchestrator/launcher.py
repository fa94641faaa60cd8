"""`up` and `down`: rent the plan's choice, gate on readiness, fall back, never leak.

The order of every rent (DESIGN §1 step 5):
    journal intent -> re-validate the offer -> launch -> journal the instance id ->
    wait running -> wait ready -> READY
and on any failure after launch: terminate, verify it is gone (get() says gone AND the
provider's list no longer shows it), record the attempt and why, try the next candidate.
An interruption (Ctrl-C, SIGTERM, a crash unwinding through here) destroys what this
process created before it propagates; what a SIGKILL leaves behind is found by `reap`
(the journal holds the intent) and, without `reap`, by the guard's own ttl.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .engines import build_spec
from .errors import (
    CredentialsError,
    DeployctlError,
    LaunchFailedError,
    OfferUnavailableError,
    ProviderError,
    RetryableProviderError,
)
from .health import NotReadyError, Probe, wait_ready, wait_running
from .models import (
    Attempt,
    ContainerSpec,
    Deployment,
    DeploymentStatus,
    Instance,
    Offer,
    OfferQuery,
    TaskSpec,
)
from .planner import Candidate
from .state import State, delete_key, save_key

__all__ = ["LaunchOptions", "Launcher", "UpResult", "destroy_and_verify", "signals_shielded"]

LABEL_PREFIX = "deployctl-"


@dataclass
class LaunchOptions:
    max_attempts: int = 5
    boot_timeout_s: float = 900.0  # image pull and boot
    ready_timeout_s: float = 1800.0  # model download and load
    poll_s: float = 2.0
    verify_timeout_s: float = 120.0  # how long a terminate may take to show as gone
    hf_token: str | None = None


@dataclass
class UpResult:
    deployment: Deployment
    instance: Instance
    key: str
    quoted_price_per_hour_usd: float
    actual_price_per_hour_usd: float
    phase_s: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str, str], None]  # (phase, detail)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def destroy_and_verify(
    state: State,
    provider,
    deployment_id: str,
    instance_id: str,
    *,
    timeout_s: float = 120.0,
    poll_s: float = 2.0,
) -> None:
    """Terminate `instance_id`, then prove it is gone: get() is None/gone and the
    provider's listing no longer shows it. Journaled before the call; raises if unproven.

    Ending an instance is worth more patience than a read: a terminate that still fails
    after the provider's own retries (5xx, 429, timeouts) is tried again, and a transient
    failure while verifying is waited out, both until `timeout_s`."""
    jid = state.journal_intent(deployment_id, "terminate", provider.name, instance_id=instance_id)
    deadline = time.monotonic() + timeout_s
    with signals_shielded():
        while True:
            try:
                provider.terminate(instance_id)
                break
            except RetryableProviderError as exc:
                if time.monotonic() + poll_s >= deadline:
                    state.journal_failed(jid, str(exc))
                    raise
            except ProviderError as exc:
                state.journal_failed(jid, str(exc))
                raise
            time.sleep(poll_s)
        problem = "still listed after terminate"
        while True:
            try:
                instance = provider.get(instance_id)
                gone = instance is None or instance.state.value == "gone"
                if gone and all(
                    i.instance_id != instance_id for i in provider.list_instances(LABEL_PREFIX)
                ):
                    state.journal_done(jid, instance_id, "verified gone")
                    state.add_event(deployment_id, "terminated", f"{provider.name} {instance_id}")
                    return
            except RetryableProviderError as exc:
                problem = f"not verified gone: {exc.message}"
            if time.monotonic() >= deadline:
                state.journal_failed(jid, problem, instance_id)
                raise DeployctlError(
                    f"{provider.name} instance {instance_id}: {problem}",
                    hint="run `deployctl reap` to retry; check the provider's console",
                )
            time.sleep(poll_s)


def deployment_id_of(instance: Instance) -> str | None:
    """The deployment an instance belongs to, from its labels or its `deployctl-` name."""
    name = instance.labels.get("deployctl") or ""
    if name:
        return name
    iid = instance.instance_id
    label = instance.raw.get("label") or instance.raw.get("name") or iid
    return label[len(LABEL_PREFIX) :] if str(label).startswith(LABEL_PREFIX) else None


@contextlib.contextmanager
def signals_shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while cleaning up (a second Ctrl-C must not leak)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Launcher:
    """Runs `up` for one task over a list of candidates (cheapest feasible first)."""

    def __init__(
        self,
        state: State,
        providers: dict,
        *,
        options: LaunchOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.state = state
        self.providers = providers
        self.options = options or LaunchOptions()
        self.progress = progress or (lambda phase, detail: None)
        self._live: tuple | None = None  # (provider, instance_id) created and not destroyed
        self._renting: tuple | None = None  # (provider, journal id) while a rent call runs

    # ---------------------------------------------------------------- up

    def up(self, task: TaskSpec, candidates: list[Candidate]) -> UpResult:
        """Rent candidates in order until one is READY; raise with every attempt if none."""
        dep = self.state.new_deployment(
            task.name,
            task.model_dump_json(by_alias=True, exclude={"env"}),
            task.keep_alive_s,
            task.ttl_s,
            {"task": task.name},
        )
        key = secrets.token_urlsafe(32)
        save_key(dep.id, key)
        self.state.update_deployment(dep.id, status=DeploymentStatus.LAUNCHING.value)
        self.state.add_event(dep.id, "up", f"{len(candidates)} candidates")
        failures: list[str] = []
        dead_providers: set[str] = set()
        try:
            for n, candidate in enumerate(candidates[: self.options.max_attempts], 1):
                offer = candidate.offer
                if offer.provider in dead_providers:
                    continue
                outcome = self._attempt(n, dep, task, offer, key)
                if isinstance(outcome, UpResult):
                    return outcome
                failures.append(f"{offer.provider} {offer.gpu}: {outcome}")
                if outcome.startswith("credentials"):
                    dead_providers.add(offer.provider)
        except BaseException as exc:  # Ctrl-C, SIGTERM, crash: destroy what we made
            self._cleanup(dep.id, f"interrupted ({type(exc).__name__})")
            raise
        self.state.mark_ended(dep.id, "no candidate became ready", status=DeploymentStatus.FAILED)
        delete_key(dep.id)
        tried = "; ".join(failures) or "no candidate to try"
        raise DeployctlError(
            f"no offer became ready after {len(failures)} attempts: {tried}",
            hint="`deployctl status` shows every attempt; relax the task or raise --max-price",
        )

    def _attempt(
        self, n: int, dep: Deployment, task: TaskSpec, offer: Offer, key: str
    ) -> UpResult | str:
        provider = self.providers[offer.provider]
        started = _now()
        timings: dict[str, float] = {}
        attempt = Attempt(
            n=n,
            provider=offer.provider,
            offer_key=offer.key,
            gpu=offer.gpu,
            price_per_hour_usd=offer.price_per_hour_usd,
            outcome="trying",
            started_at=started,
        )
        self.state.add_attempt(dep.id, attempt)
        jid = self.state.journal_intent(dep.id, "rent", provider.name, offer_key=offer.key)
        price = f"${offer.price_per_hour_usd:.3f}/h"
        self.progress("renting", f"{offer.provider} {offer.gpu} at {price}")
        t0 = time.monotonic()
        try:
            if not self._still_offered(provider, offer):
                raise OfferUnavailableError(provider.name, "no longer offered at that price")
            spec = self._spec(provider, task, offer, key)
            # Until the call answers (or fails as a provider error), an interruption or a
            # crash may leave an instance we never heard of: see _find_interrupted_rent.
            self._renting = (provider, jid)
            try:
                instance = provider.launch(
                    offer, spec, name=dep.label, labels={"deployctl": dep.id}
                )
            except ProviderError:
                self._renting = None
                raise
            self._renting = None
        except LaunchFailedError as exc:
            self.state.journal_failed(jid, str(exc), exc.instance_id)
            if exc.instance_id:
                self._live = (provider, exc.instance_id)
                self._destroy(dep.id)
            return self._fail(dep.id, n, "failed", str(exc), exc.instance_id)
        except OfferUnavailableError as exc:
            self.state.journal_failed(jid, str(exc))
            return self._fail(dep.id, n, "unavailable", str(exc))
        except CredentialsError as exc:
            self.state.journal_failed(jid, str(exc))
            return self._fail(dep.id, n, "failed", f"credentials: {exc}")
        except ProviderError as exc:
            self.state.journal_failed(jid, str(exc))
            return self._fail(dep.id, n, "failed", str(exc))
        iid = instance.instance_id
        self._live = (provider, iid)
        self.state.journal_done(jid, iid)
        self.state.update_deployment(
            dep.id,
            provider=provider.name,
            offer_key=offer.key,
            gpu=offer.gpu,
            gpu_count=offer.gpu_count,
            instance_id=iid,
            model_name=spec.model_name,
            price_per_hour_usd=offer.price_per_hour_usd,
        )
        timings["renting"] = time.monotonic() - t0
        try:
            t1 = time.monotonic()
            self.progress("booting", f"{provider.name} instance {iid}")
            running = wait_running(
                lambda: provider.get(iid),
                timeout_s=self.options.boot_timeout_s,
                poll_s=self.options.poll_s,
            )
            timings["booting"] = time.monotonic() - t1
            t2 = time.monotonic()
            self.progress("loading model", spec.model_name)

            def on_phase(probe: Probe) -> None:
                if probe.phase == "first token":
                    timings.setdefault("loading model", time.monotonic() - t2)

            if getattr(provider, "guarded", True):
                wait_ready(
                    running.endpoint_url or "",
                    key,
                    spec.model_name,
                    timeout_s=self.options.ready_timeout_s,
                    poll_s=self.options.poll_s,
                    on_phase=on_phase,
                    still_running=lambda: _still_running(provider, iid),
                )
            else:  # a managed endpoint (no guard): the platform's own auth and readiness
                self._wait_platform_ready(provider, running)
            timings["first token"] = time.monotonic() - t2 - timings.get("loading model", 0.0)
        except (NotReadyError, ProviderError) as exc:
            self.progress("failed", str(exc))
            self._destroy(dep.id)
            return self._fail(dep.id, n, "failed", str(exc), iid)
        actual = running.price_per_hour_usd or offer.price_per_hour_usd
        dep = self.state.update_deployment(
            dep.id,
            status=DeploymentStatus.READY.value,
            endpoint_url=running.endpoint_url,
            ready_at=_now(),
            price_per_hour_usd=actual,
        )
        self.state.finish_attempt(dep.id, n, "ready", instance_id=iid)
        self.state.add_event(dep.id, "ready", running.endpoint_url or "")
        self._live = None
        self.progress("ready", running.endpoint_url or "")
        guarded = getattr(provider, "guarded", True)
        if not guarded:  # no guard checks this key: the endpoint takes the platform's own
            delete_key(dep.id)
        return UpResult(
            dep, running, key if guarded else "", offer.price_per_hour_usd, actual, timings
        )

    def _wait_platform_ready(self, provider, instance: Instance) -> None:
        """Poll `provider.ready(instance)` (a one-token completion with the platform's own
        credential) until it answers, within the ready timeout."""
        deadline = time.monotonic() + self.options.ready_timeout_s
        delay = min(0.1, self.options.poll_s)
        while not provider.ready(instance):
            if not _still_running(provider, instance.instance_id):
                raise NotReadyError("loading model", "the endpoint stopped while loading")
            if time.monotonic() >= deadline:
                raise NotReadyError(
                    "loading model", f"not ready after {self.options.ready_timeout_s:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, self.options.poll_s)

    def _spec(self, provider, task: TaskSpec, offer: Offer, key: str) -> ContainerSpec:
        command_for = getattr(provider, "engine_command", None)
        return build_spec(
            task,
            gpu_count=offer.gpu_count,
            endpoint_key=key,
            keep_alive_s=task.keep_alive_s,
            ttl_s=task.ttl_s,
            teardown=getattr(provider, "teardown", provider.name),
            hf_token=self.options.hf_token,
            command=command_for(task, offer.gpu_count) if command_for else None,
        )

    def _still_offered(self, provider, offer: Offer) -> bool:
        """Re-validate a live quote just before renting (catalog-priced offers, e.g.
        SkyPilot's, are placed by the provider itself and pass)."""
        if offer.source != "live" or provider.name == "local":
            return True
        query = OfferQuery(
            gpus=[offer.gpu],
            spot=offer.spot,
            min_gpu_count=offer.gpu_count,
            max_gpu_count=offer.gpu_count,
        )
        try:
            fresh = provider.list_offers(query)
        except ProviderError:
            return True  # cannot tell: the rent itself will say if it is gone
        for o in fresh:
            if o.offer_id == offer.offer_id:
                return o.price_per_hour_usd <= offer.price_per_hour_usd * 1.05 + 1e-9
        return False

    def _fail(
        self, dep_id: str, n: int, outcome: str, reason: str, instance_id: str | None = None
    ) -> str:
        self.state.finish_attempt(dep_id, n, outcome, reason, instance_id=instance_id)
        self.state.add_event(dep_id, f"attempt {n} {outcome}", reason)
        return reason

    def _destroy(self, dep_id: str) -> None:
        if self._live is None:
            return
        provider, iid = self._live
        self.progress("destroying", f"{provider.name} instance {iid}")
        destroy_and_verify(
            self.state,
            provider,
            dep_id,
            iid,
            timeout_s=self.options.verify_timeout_s,
            poll_s=min(self.options.poll_s, 2.0),
        )
        self._live = None

    def _find_interrupted_rent(self, dep_id: str) -> None:
        """Interrupted inside a rent call (Ctrl-C, SIGTERM): the provider may have created
        the instance without us hearing of it. Look for it by its label, a few times (a
        new instance can take a moment to be listed), so that `_destroy` ends it."""
        provider, jid = self._renting
        self._renting = None
        with signals_shielded():
            for lookup in range(3):
                if lookup:
                    time.sleep(1.0)
                try:
                    found = [i.instance_id for i in provider.list_instances(LABEL_PREFIX)
                             if deployment_id_of(i) == dep_id]  # fmt: skip
                except ProviderError:
                    continue
                if found:
                    self.state.journal_failed(jid, "interrupted during the rent", found[0])
                    self._live = (provider, found[0])
                    return
            self.state.journal_failed(jid, "interrupted during the rent; nothing was listed")

    def _cleanup(self, dep_id: str, reason: str) -> None:
        try:
            if self._live is None and self._renting is not None:
                self._find_interrupted_rent(dep_id)
            self._destroy(dep_id)
        finally:
            self.state.mark_ended(dep_id, reason, status=DeploymentStatus.FAILED)
            delete_key(dep_id)


def _still_running(provider, instance_id: str) -> bool:
    instance = provider.get(instance_id)
    return instance is not None and instance.state.value in ("pending", "running")
