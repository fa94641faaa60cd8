"""Readiness probes: an instance is READY only when the model answers (DESIGN §1 step 6).

1. the provider reports the instance running, with an endpoint (`wait_running`);
2. the guard answers `/health`;
3. the engine lists the model on `/v1/models` (through the guard, with the key);
4. a one-token completion succeeds.
Every wait has a deadline; nothing here retries forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DeployctlError
from .models import Instance, InstanceState

__all__ = ["NotReadyError", "Probe", "wait_ready", "wait_running"]


class NotReadyError(DeployctlError):
    """The instance did not become ready; `phase` says where it stopped."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"{phase}: {message}")
        self.phase = phase


@dataclass
class Probe:
    """Where the readiness check got to, for progress display."""

    phase: str  # booting | guard | loading model | first token | ready
    detail: str = ""


def wait_running(
    get: Callable[[], Instance | None],
    *,
    timeout_s: float,
    poll_s: float = 2.0,
    on_poll: Callable[[Instance | None], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Instance:
    """Poll `get` until the instance runs with an endpoint; stop on exited/gone/deadline."""
    deadline = clock() + timeout_s
    delay = min(0.1, poll_s)  # local instances run at once; clouds take minutes
    while True:
        instance = get()
        if on_poll:
            on_poll(instance)
        if instance is None:
            raise NotReadyError("booting", "the instance disappeared before it ran")
        if instance.state is InstanceState.EXITED:
            reason = f" ({instance.message})" if instance.message else ""
            raise NotReadyError("booting", f"the instance exited before it ran{reason}")
        if instance.state is InstanceState.GONE:
            raise NotReadyError("booting", "the instance is gone")
        if instance.state is InstanceState.RUNNING and instance.endpoint_url:
            return instance
        if clock() >= deadline:
            raise NotReadyError("booting", f"not running after {timeout_s:g} s")
        sleep(delay)
        if clock() - (deadline - timeout_s) > 5.0:  # poll briskly for the first 5 s
            delay = min(delay * 1.5, poll_s)


def wait_ready(
    endpoint_url: str,
    key: str,
    model_name: str,
    *,
    timeout_s: float,
    poll_s: float = 2.0,
    on_phase: Callable[[Probe], None] | None = None,
    still_running: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until the guard, the model list and a one-token completion all answer.

    Returns the seconds the first token took. `still_running` is polled between tries so
    an instance that died while loading fails fast instead of at the deadline.
    """
    import httpx

    deadline = clock() + timeout_s
    base = endpoint_url.rstrip("/")
    headers = {"Authorization": f"Bearer {key}"}
    phase = "guard"
    last_problem = "no answer yet"
    # Start fast (a local engine answers within a second; each miss is one cheap request),
    # back off to poll_s after 5 s (a cloud GPU loads its model for minutes).
    delay = min(0.025, poll_s)
    with httpx.Client(timeout=httpx.Timeout(10.0, read=120.0)) as client:
        while True:
            if on_phase:
                on_phase(Probe(phase, last_problem))
            try:
                if phase == "guard":
                    r = client.get(f"{base}/health")
                    if r.status_code == 200:
                        phase = "loading model"
                        continue
                    last_problem = f"/health answered {r.status_code}"
                elif phase == "loading model":
                    r = client.get(f"{base}/v1/models", headers=headers)
                    if r.status_code == 200 and model_name in _model_ids(r):
                        phase = "first token"
                        continue
                    if r.status_code == 401:
                        raise NotReadyError(phase, "the guard rejected the deployment key")
                    last_problem = f"/v1/models answered {r.status_code}"
                else:
                    started = clock()
                    r = client.post(
                        f"{base}/v1/completions",
                        headers={**headers, "X-Deployctl-Probe": "ready"},  # not counted as use
                        json={"model": model_name, "prompt": "Hello", "max_tokens": 1},
                    )
                    if r.status_code == 200 and r.json().get("choices"):
                        if on_phase:
                            on_phase(Probe("ready"))
                        return clock() - started
                    last_problem = f"a one-token completion answered {r.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                last_problem = f"{type(exc).__name__} on {phase}"
            if still_running is not None and not still_running():
                raise NotReadyError(phase, "the instance stopped while loading")
            if clock() >= deadline:
                raise NotReadyError(phase, f"not ready after {timeout_s:g} s ({last_problem})")
            sleep(delay)
            if clock() - (deadline - timeout_s) > 5.0:  # poll briskly for the first 5 s
                delay = min(delay * 1.5, poll_s)


def _model_ids(response) -> set[str]:
    data = response.json().get("data") or []
    return {str(m.get("id")) for m in data if isinstance(m, dict)}
