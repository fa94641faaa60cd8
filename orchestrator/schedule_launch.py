"""The real start and end of a scheduled session: plan, check, launch, and `down`.

`launch_session` is `tick`'s default starter. It plans the task now, checks limits and
budget again with the guardrails `up` uses (`guardrails.Gate`: limits, then the rest of
the window's projected cost, under the launch lock), and runs the launcher with ttl and
keep-alive set to the time left until the window's end + grace, recomputed for each
attempt. The launcher sees the state through `_SessionState`, which writes the new
deployment's id on the session before any rent, so a tick that dies mid-launch leaves a
trail.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime

from . import schedule_store as store
from .errors import NoOfferFitsError
from .models import Deployment
from .schedule_store import Schedule, Session
from .schedule_time import window_ttl_s
from .state import State

__all__ = ["end_deployment", "launch_session"]


class _SessionState:
    """The State the launcher sees: the new deployment's id is written on the session the
    moment it exists, before any rent, so a tick that dies mid-launch leaves a trail."""

    def __init__(self, state: State, session_id: int) -> None:
        self._state, self._session_id = state, session_id

    def __getattr__(self, name: str):
        return getattr(self._state, name)

    def new_deployment(self, *args, **kwargs) -> Deployment:
        dep = self._state.new_deployment(*args, **kwargs)
        store.set_deployment(self._state, self._session_id, dep.id)
        return dep


def launch_session(state: State, schedule: Schedule, s: Session, now: datetime) -> Deployment:
    """Plan the schedule's task now, pass the guardrails `up` passes (limits, then the
    budget for the rest of the window, under the launch lock), launch it with ttl and
    keep-alive = window end + grace - now, and wait until it answers."""
    from providers import get_provider
    from providers.base import env_secret

    from .config import load_config
    from .guardrails import Gate, Refusal
    from .launcher import LaunchOptions
    from .models import OfferQuery
    from .planner import make_plan
    from .search import find_offers, parse_provider_names
    from .taskfile import load_task

    ttl_s = window_ttl_s(schedule, s, now)
    config = load_config()
    spec = load_task(schedule.task, {"keep_alive": ttl_s, "ttl": ttl_s})
    options = LaunchOptions(max_attempts=3, hf_token=env_secret("HF_TOKEN"))
    worst_attempt_s = options.boot_timeout_s + options.ready_timeout_s + options.verify_timeout_s
    gate = Gate(config, spec, worst_attempt_s=worst_attempt_s)
    try:
        gate.check_limits([d.id for d in state.list_deployments(live_only=True)])
        names = parse_provider_names(list(schedule.providers) or spec.providers,
                                     config.providers)
        query = OfferQuery(spot=spec.spot, regions=spec.regions,
                           max_gpu_count=spec.max_gpu_count)
        search = find_offers(names, query, catalog_dir=None,
                             deadline_s=config.offer_deadline_s,
                             requested_by_name=bool(schedule.providers))
        plan = make_plan(spec, search.offers)
        if not plan.feasible:
            raise NoOfferFitsError(f"no offer fits {spec.name} now ({len(plan.candidates)} "
                                   "considered)")
        with gate.locked_state() as locked:
            gate.admission = gate.admit(locked, plan.feasible[: options.max_attempts])
            instances = {c.offer.provider: get_provider(c.offer.provider)
                         for c in gate.admission.candidates}
            launcher = _window_launcher_class()(_SessionState(locked, s.id), instances,
                                                options=options)
            launcher.ttl_at = (ttl_s, time.monotonic())
            return launcher.up(spec, gate.admission.candidates).deployment
    except Refusal as refusal:
        if not s.note.startswith("refused"):  # once per session, not at every tick
            _record_refusal(state, config, gate, refusal)
        raise


def _record_refusal(state: State, config, gate, refusal) -> None:
    from .alerts import notify
    from .errors import DeployctlError

    with contextlib.suppress(DeployctlError):
        gate.record_refusal(state, refusal)
        notify(state, config, "refusal", refusal.rule, f"scheduled {refusal.message}")


def _window_launcher_class():
    from .launcher import Launcher

    class WindowLauncher(Launcher):
        """Recomputes ttl and keep-alive for each attempt: a fallback attempt that starts
        late must still be gone at the window's end + grace."""

        ttl_at: tuple[int, float]  # (ttl when the launch began, time.monotonic() then)

        def _spec(self, provider, task, offer, key):
            ttl_s, since = self.ttl_at
            left = max(round(ttl_s - (time.monotonic() - since)), 1)
            return super()._spec(provider, task.model_copy(
                update={"ttl_s": left, "keep_alive_s": left}), offer, key)

    return WindowLauncher


def end_deployment(state: State, dep: Deployment, reason: str) -> None:
    from .lifecycle import down

    down(state, dep, reason=reason)
