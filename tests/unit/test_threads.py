"""Waiting on threads while signals may interrupt the wait (orchestrator.threads)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from orchestrator.threads import Worker, join_threads


class Interrupted(Exception):
    pass


def _interrupt_after(seconds: float):
    """A signal handler that raises in the main thread, as the rig's SIGTERM handler does."""

    def raise_(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, raise_)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return old


def test_a_wait_interrupted_by_a_signal_still_knows_the_thread_runs():
    """CPython 3.11's Thread.join, interrupted by a signal handler's exception while the
    thread runs, can release that thread's state lock and mark it stopped (threading.py,
    _wait_for_tstate_lock's bpo-45274 branch): is_alive() then says False. The rig's
    teardown once took a side still booting for finished and reported it 'deploying'."""
    release = threading.Event()
    worker = Worker(release.wait, name="booting-side")
    worker.start()
    for _ in range(5):  # the bad branch needs the exception inside the wait: try a few
        old = _interrupt_after(0.05)
        try:
            with pytest.raises(Interrupted):
                join_threads([worker])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert not worker.finished.is_set()
        assert not join_threads([worker], deadline=time.monotonic() + 0.2)  # still running
    release.set()
    assert join_threads([worker], deadline=time.monotonic() + 5)
    assert worker.finished.is_set()


def test_a_worker_that_raises_is_finished_too():
    def fail() -> None:
        raise RuntimeError("boom")

    worker = Worker(fail, name="failing")
    old_hook, threading.excepthook = threading.excepthook, lambda args: None
    try:
        worker.start()
        assert join_threads([worker], deadline=time.monotonic() + 5)
    finally:
        threading.excepthook = old_hook
    assert worker.finished.is_set()
