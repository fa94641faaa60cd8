"""The guard against hostile clients, on loopback: fuzzed HTTP, slow clients, a full house.

Complements tests/unit/test_guard.py (auth on every path but /health, only /v1 forwarded,
header and body limits, the connection cap, hand-picked malformed requests): here
hypothesis builds thousands of malformed requests from well-formed ones, and slow
clients try to hold the guard's connection slots. After each attack the guard must still
be alive, have logged no handler crash, and serve a well-formed request.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_guard import CHAT, KEY, GuardProcess, raw_exchange, start_guard  # noqa: F401

pytestmark = pytest.mark.slow

AUTH = f"Authorization: Bearer {KEY}"


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    g = GuardProcess(tmp_path_factory.mktemp("guard"), ("--client-timeout-s", 1))
    g.wait_engine("ready")
    yield g
    g.stop()


def _still_serving(g: GuardProcess) -> None:
    assert g.alive(), g.output()
    assert g.health()["engine"] == "ready"
    before = g.status()["requests"]
    assert g.chat(max_tokens=1).status == 200
    assert g.status(requests=before + 1)["requests"] == before + 1
    assert "Traceback" not in g.output()
    assert "request failed" not in g.log(), g.log()[-2000:]  # a handler that raised


# -- fuzz: well-formed requests, then broken in every way -----------------------------------
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PRI",
           "get", "G\x00T", "", "POST POST", "\xff"]  # fmt: skip
TARGETS = ["/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
           "/deployctl/status", "/deployctl/logs?tail=-1", "/admin/stats", "/v1/../admin/stats",
           "/v1/%2e%2e/admin", "/v1/%00", "*", "http://127.0.0.1:1/v1/models", "//v1/models",
           "/v1/models#x", "/" + "a" * 17000, "", "/v1/chat/completions?x=" + "%" * 50]  # fmt: skip
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1 extra", "http/1.1",
            "HTTP/1.1111111111111111111", "HTTP/-1.1", "", "\r"]  # fmt: skip
HEADERS = [
    ("Host", "x"), ("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer"),
    ("Authorization", f"Bearer {KEY}\r\nX-Injected: 1"), ("Authorization", "Basic Zm9v"),
    ("Content-Length", "5"), ("Content-Length", "-1"), ("Content-Length", "99999999999999999"),
    ("Content-Length", "0x10"), ("Content-Length", " 7 "), ("Content-Length", "1, 2"),
    ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip, chunked"),
    ("Content-Type", "application/json"), ("Connection", "keep-alive"),
    ("Expect", "100-continue"), ("X-Pad", "b" * 9000), (" Leading", "space"),
    ("No-Colon", None), ("Bad Name", "x"), ("X-Obs", "folded\r\n continuation"),
    ("X-Nul", "a\x00b"), ("X-Bin", "\xff\xfe"), ("", "empty name"),
]  # fmt: skip
BODIES = [b"", b"{}", b"hello", b'{"model": "fake-model", "prompt": "hi", "max_tokens": 1}',
          b"5\r\nhello\r\n0\r\n\r\n", b"\x00" * 100, b"{" * 5000]  # fmt: skip


@st.composite
def broken_requests(draw) -> bytes:
    method = draw(st.sampled_from(METHODS) | st.text(max_size=8))
    target = draw(st.sampled_from(TARGETS) | st.text(max_size=40))
    version = draw(st.sampled_from(VERSIONS))
    headers = draw(st.lists(st.sampled_from(HEADERS), max_size=8))
    headers += draw(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=3))
    body = draw(st.sampled_from(BODIES) | st.binary(max_size=200))
    eol = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    line = " ".join(p for p in (method, target, version) if p)
    head = line + eol + "".join(f"{k}: {v}{eol}" if v is not None else f"{k}{eol}"
                                for k, v in headers)  # fmt: skip
    data = (head + eol).encode("utf-8", "surrogateescape") + body
    cut = draw(st.none() | st.integers(0, len(data)))  # a client that stops mid-way
    return data if cut is None else data[:cut]


def _statuses(port: int, data: bytes) -> list[int]:
    """Send `data`, read until the guard closes; the status of every response in it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        buf = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                buf += chunk
    assert not buf or buf.startswith(b"HTTP/1."), buf[:200]  # never a bare body
    return [int(code) for code in re.findall(rb"(?m)^HTTP/1\.[01] (\d{3}) ", buf)]


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(data=broken_requests())
def test_fuzzed_http_is_answered_4xx_or_closed(guard, data):
    statuses = _statuses(guard.port, data)
    final = [s for s in statuses if s >= 200]
    # "100 Continue" may come first; 200 only for a request that came out well-formed
    # (/health needs no key); never a 5xx but 505, never a crash
    assert all(s == 100 for s in statuses if s < 200), (statuses, data[:120])
    assert all(s == 200 or 400 <= s < 500 or s == 505 for s in final), (statuses, data[:120])
    assert guard.alive()


def test_after_the_fuzz_the_guard_still_serves(guard):
    for data in (b"\x16\x03\x01" + bytes(300), b"GET / HTTP/1.1\r\n" * 2000, b"\r\n" * 10000):
        raw_exchange(guard.port, data)
    _still_serving(guard)


# -- slow clients ---------------------------------------------------------------------------
def _trickle(port: int, head: bytes, byte_every_s: float, limit_s: float) -> float:
    """Send `head`, then the body a byte at a time; seconds until the guard hung up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - started < limit_s:
                sock.sendall(b" ")
                time.sleep(byte_every_s)
            return limit_s  # never cut off
        return time.monotonic() - started


def test_a_body_sent_a_byte_at_a_time_is_cut_off(start_guard):  # noqa: F811
    g = start_guard("--client-timeout-s", 1)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n"
            "Content-Length: 1000\r\n\r\n").encode()  # fmt: skip
    # each byte comes well within the 1 s socket timeout: only a deadline for the whole
    # body ends it (the head has had one all along)
    assert _trickle(g.port, head, 0.3, limit_s=12) < 4
    head_only = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
    assert _trickle(g.port, head_only, 0.3, limit_s=12) < 4
    assert g.status()["in_flight"] == 0  # never counted as a request, nor as activity
    _still_serving(g)


def test_slow_clients_cannot_hold_every_slot_for_long(start_guard):  # noqa: F811
    g = start_guard("--client-timeout-s", 1, "--max-connections", 4)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n"
            "Content-Length: 100000\r\n\r\n").encode()  # fmt: skip
    results: list[float] = []
    threads = [
        threading.Thread(target=lambda: results.append(_trickle(g.port, head, 0.2, 20)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert raw_exchange(g.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == 503  # full
    for t in threads:
        t.join(30)
    assert len(results) == 4 and max(results) < 5  # each cut off: the slots came back
    _still_serving(g)
