"""Threads the main thread waits for while Ctrl-C and SIGTERM must still reach it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Worker", "join_threads"]


class Worker(threading.Thread):
    """A daemon thread whose end is an Event, so that the main thread can wait for it in
    short slices and still be interrupted by Ctrl-C or SIGTERM. Not Thread.join: in
    CPython 3.11 a join interrupted by a signal handler's exception while the thread
    still runs releases that thread's state lock and marks it stopped (threading.py,
    _wait_for_tstate_lock's bpo-45274 branch), and is_alive() then says False."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.finished.set()


def join_threads(
    threads: list[Worker],
    *,
    deadline: float | None = None,
    on_tick: Callable[[], Any] | None = None,
) -> bool:
    """Wait until every worker has finished (True), or until `deadline` (False), in short
    slices, so that Ctrl-C and SIGTERM reach this thread."""
    while not all(t.finished.is_set() for t in threads):
        for t in threads:
            t.finished.wait(0.1)
        if on_tick is not None:
            on_tick()
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True
