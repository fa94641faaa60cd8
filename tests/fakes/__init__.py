"""Fake provider APIs on loopback, with payloads shaped like the real vendors' own.

Each fake is a stateful `FakeApi` (request log, fault switches) served by `FakeServer`
on 127.0.0.1 with an OS-chosen port; `serve_vast()` / `serve_runpod()` start one as a
context manager. Tests point adapters at them through the base-URL settings
(`VAST_URL`, `RUNPOD_API_BASE_URL`) or constructor arguments, never at a real host.
"""

from .runpod_api import DEFAULT_RUNPOD_KEY, FakeRunPodApi, serve_runpod
from .server import FakeApi, FakeResponse, FakeServer, RecordedRequest
from .vast_api import DEFAULT_VAST_KEY, FakeVastApi, serve_vast

__all__ = [
    "DEFAULT_RUNPOD_KEY",
    "DEFAULT_VAST_KEY",
    "FakeApi",
    "FakeResponse",
    "FakeRunPodApi",
    "FakeServer",
    "FakeVastApi",
    "RecordedRequest",
    "serve_runpod",
    "serve_vast",
]
