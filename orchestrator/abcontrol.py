"""The machinery of an A/B rig: cancelling a side inside the launcher, keeping idle sides
alive, shielding clean-up from signals (waiting on threads: orchestrator.threads)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from .abreport import Side
from .launcher import signals_shielded
from .loadgen import Target

__all__ = ["Cancellable", "Keeper", "RigCancelled", "signals_ignored"]


class RigCancelled(BaseException):
    """Raised inside a deploying side's launcher to make it clean up and stop."""


class Cancellable:
    """A provider whose next launch/get/list_offers raises RigCancelled once the rig is
    cancelled (once only: the launcher's cleanup then uses it normally). It also notes
    every instance created, so that the rig can check them all at the end."""

    def __init__(self, provider, cancel: threading.Event, side: Side, created: list) -> None:
        self._provider = provider
        self._cancel = cancel
        self._side = side
        self._created = created
        self._tripped = False

    @property
    def name(self) -> str:
        return self._provider.name

    def __getattr__(self, attr: str) -> Any:  # teardown, engine_command, check_credentials
        return getattr(self._provider, attr)

    def _check(self) -> None:
        if self._cancel.is_set() and not self._tripped:
            self._tripped = True
            raise RigCancelled()

    def _note(self, instance_id: str | None, labels: dict[str, str]) -> None:
        if instance_id:
            self._created.append((self._provider.name, instance_id))
            self._side.instances.append(instance_id)
        self._side.deployment_id = labels.get("deployctl") or self._side.deployment_id

    def list_offers(self, query):
        self._check()
        return self._provider.list_offers(query)

    def launch(self, offer, spec, *, name, labels):
        from .errors import LaunchFailedError

        self._check()
        try:
            instance = self._provider.launch(offer, spec, name=name, labels=labels)
        except LaunchFailedError as exc:
            self._note(exc.instance_id, labels)
            raise
        self._note(instance.instance_id, labels)
        return instance

    def get(self, instance_id):
        self._check()
        return self._provider.get(instance_id)

    def list_instances(self, label_prefix):
        return self._provider.list_instances(label_prefix)

    def terminate(self, instance_id):
        return self._provider.terminate(instance_id)


class Keeper(threading.Thread):
    """Sends a one-token request to every ready side idle for `interval_s`: health probes
    never count as activity, and a side waiting for the other must not reach keep-alive."""

    def __init__(self) -> None:
        super().__init__(name="ab-keeper", daemon=True)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sides: dict[str, tuple[Target, float, float]] = {}  # name -> target, every, last

    def watch(self, name: str, target: Target, keep_alive_s: float) -> None:
        with self.lock:
            self.sides[name] = (target, max(keep_alive_s / 3.0, 1.0), time.monotonic())

    def touch(self, name: str) -> None:
        with self.lock:
            if name in self.sides:
                target, every, _ = self.sides[name]
                self.sides[name] = (target, every, time.monotonic())

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=60.0) as client:
            while not self.stop.wait(0.5):
                with self.lock:
                    due = [(n, t) for n, (t, every, last) in self.sides.items()
                           if time.monotonic() - last >= every]  # fmt: skip
                for name, target in due:
                    self.touch(name)
                    with contextlib.suppress(httpx.HTTPError):
                        client.post(
                            f"{target.base_url.rstrip('/')}/v1/chat/completions",
                            headers={"Authorization": f"Bearer {target.key}"},
                            json={"model": target.model, "max_tokens": 1,
                                  "messages": [{"role": "user", "content": "ping"}]},
                        )  # fmt: skip


# One shield for every cleanup path: the launcher's.
signals_ignored = signals_shielded
