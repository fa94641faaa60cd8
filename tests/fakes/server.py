"""A small threaded HTTP server on 127.0.0.1:0 that fake provider APIs plug into.

A fake API subclasses `FakeApi` and implements `handle(request) -> FakeResponse`. The
base class records every request and owns the fault switches that tests flip:

    with FakeServer(api) as server:            # or the `serve` pytest helper below
        api.fail_next(2, status=429)           # the next 2 requests answer 429
        api.latency_s = 0.5                    # every request waits first
        api.drop_next(1)                       # close the connection without an answer
        ... point the adapter at server.url ...
        assert len(api.calls) == 3

Faults apply before authentication, like a load balancer or rate limiter in front of the
real API. Nothing here talks to the network beyond loopback.

Two more switches for fault campaigns (tests/faults, bench/fault_trials.py):

    api.fail_randomly(0.2, seed=7)   # 20 % of requests fail, kind drawn from FAULT_KINDS:
                                     # 500/502/503/429, "timeout" (held past the client's
                                     # deadline), "drop" (connection closed, no answer)
    api.injected                     # [(method, path, kind, handled)] of each fault so far
    api.intercept = fn               # fn(request) runs first, in the server thread; it
                                     # may return "drop" to close without handling

A timed-out or dropped request is sometimes handled all the same before the client is
left without an answer (`handled` True: a rent that created an instance whose id the
client never saw), as a real API behind a load balancer does.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FAULT_KINDS",
    "FakeApi",
    "FakeResponse",
    "FakeServer",
    "RecordedRequest",
    "bearer_token",
]

# What `fail_randomly` draws from, equally likely: server errors, a rate limit, a request
# held past the client's deadline, a connection closed without an answer.
FAULT_KINDS = ("500", "502", "503", "429", "timeout", "drop")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class FakeResponse:
    status: int = 200
    body: Any = None  # JSON-encoded unless it is bytes
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.headers.get("Content-Type", "application/octet-stream")
        return json.dumps(self.body).encode(), "application/json"


def bearer_token(request: RecordedRequest) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class FakeApi:
    """Base for stateful fake vendor APIs: request log plus fault switches."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[RecordedRequest] = []
        self.latency_s = 0.0
        self._failures: list[int] = []  # status codes for the next requests, in order
        self._drops = 0
        self._fault_rate = 0.0
        self._fault_rng = random.Random(0)
        self._fault_kinds: tuple[str, ...] = FAULT_KINDS
        self.timeout_hold_s = 2.0  # how long a "timeout" fault holds the request
        self.injected: list[tuple[str, str, str, bool]] = []  # (method, path, kind, handled)
        self.intercept: Callable[[RecordedRequest], str | None] | None = None

    # -- fault switches -------------------------------------------------------------
    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` requests with `status` (429, 500, 503, ...)."""
        with self.lock:
            self._failures.extend([status] * count)

    def drop_next(self, count: int = 1) -> None:
        """Close the connection of the next `count` requests without answering."""
        with self.lock:
            self._drops += count

    def fail_randomly(
        self,
        rate: float,
        *,
        seed: int | str,
        kinds: tuple[str, ...] = FAULT_KINDS,
        timeout_hold_s: float | None = None,
    ) -> None:
        """From now on a fraction `rate` of requests fail (seeded, so a campaign can be
        replayed), each with a kind drawn from `kinds`. A "timeout" holds the request for
        `timeout_hold_s` (set it above the client's deadline), then closes the connection;
        it and a "drop" are handled first half of the time (the answer is lost)."""
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not 0.0 <= rate <= 1.0:
            raise ValueError(f"fail_randomly: rate {rate} or kinds {sorted(unknown)}")
        with self.lock:
            self._fault_rate = rate
            self._fault_rng = random.Random(seed)
            self._fault_kinds = tuple(kinds)
            if timeout_hold_s is not None:
                self.timeout_hold_s = timeout_hold_s

    def reset_faults(self) -> None:
        with self.lock:
            self._failures.clear()
            self._drops = 0
            self.latency_s = 0.0
            self._fault_rate = 0.0

    # -- dispatch ---------------------------------------------------------------------
    def dispatch(self, request: RecordedRequest) -> FakeResponse | None:
        """Record, apply faults, then `handle`. None means: drop the connection."""
        with self.lock:
            self.calls.append(request)
        intercept = self.intercept
        if intercept is not None and intercept(request) == "drop":
            return None
        with self.lock:
            latency_s = self.latency_s
            drop = self._drops > 0
            if drop:
                self._drops -= 1
            failure = None if drop or not self._failures else self._failures.pop(0)
            random_fault = None
            if not drop and failure is None and self._fault_rate > 0:
                rng = self._fault_rng
                if rng.random() < self._fault_rate:
                    kind = rng.choice(self._fault_kinds)
                    random_fault = (kind, kind in ("timeout", "drop") and rng.random() < 0.5)
        if latency_s:
            time.sleep(latency_s)
        if drop:
            return None
        if failure is not None:
            return self.fault_response(failure)
        if random_fault is not None:
            return self._random_fault(request, *random_fault)
        with self.lock:
            return self.handle(request)

    def _random_fault(
        self, request: RecordedRequest, kind: str, handled: bool
    ) -> FakeResponse | None:
        with self.lock:
            self.injected.append((request.method, request.path, kind, handled))
        if kind not in ("timeout", "drop"):
            return self.fault_response(int(kind))
        if handled:
            with self.lock:
                self.handle(request)  # the work is done; the answer never arrives
        if kind == "timeout":
            time.sleep(self.timeout_hold_s)
        return None

    def fault_response(self, status: int) -> FakeResponse:
        if status == 429:
            return FakeResponse(429, {"error": "rate_limited"}, {"Retry-After": "0"})
        return FakeResponse(status, {"error": "internal server error"})

    def handle(self, request: RecordedRequest) -> FakeResponse:  # pragma: no cover
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        response = self.server.api.dispatch(request)
        if response is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload, content_type = response.encoded()
        self.send_response(response.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            if name.lower() != "content-type":
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    api: FakeApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout tests) leaves a broken pipe: expected, not news.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class FakeServer:
    """Serve `api` on 127.0.0.1 with an OS-chosen port; a context manager."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self.api
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
