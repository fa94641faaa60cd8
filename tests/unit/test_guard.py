"""The guard as it runs in an instance: a real subprocess around tests/fakes/engine.py.

Every test starts `orchestrator/guard.py` on free loopback ports with tiny timings (the
reaper polls every 0.1 s) and talks to it over HTTP or raw sockets. Provider teardown
calls go to a loopback FakeApi standing in for Vast's REST and RunPod's GraphQL API.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.server import FakeApi, FakeResponse, FakeServer, RecordedRequest, bearer_token
from tests.procs import pid_alive

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "orchestrator" / "guard.py"
ENGINE = ROOT / "tests" / "fakes" / "engine.py"
KEY = "guard-test-key-5f1c2d9e8a7b"
MODEL = "fake-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "say three words"}]}


def _find_python38() -> str | None:
    """A python3.8 to prove the guard runs on the oldest python3 in engine images."""
    roots = [os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")]
    candidates = ["/usr/bin/python3.8", "/usr/local/bin/python3.8"]
    for root in roots:
        candidates += sorted(glob.glob(os.path.join(root, "versions", "3.8*", "bin", "python3.8")))
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return None


PYTHON38 = _find_python38()  # at import: the autouse fixture moves HOME afterwards


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


class GuardProcess:
    """One guard (and its fake engine) as subprocesses; helpers to talk to it."""

    def __init__(self, tmp_path: Path, guard_args=(), engine_args=(), env=None, python=None):
        self.port, self.engine_port = free_port(), free_port()
        self.log_file = tmp_path / f"guard-{self.port}.log"
        self.out_file = tmp_path / f"guard-{self.port}.out"
        python = python or sys.executable
        cmd = [
            python, str(GUARD), "--host", "127.0.0.1", "--port", str(self.port),
            "--engine-port", str(self.engine_port), "--log-file", str(self.log_file),
            "--poll-s", "0.1", "--engine-stop-s", "2", "--teardown-backoff-s", "0.05",
            *map(str, guard_args),
            "--", python, str(ENGINE), "--host", "{host}", "--port", "{port}",
            "--model", MODEL, *map(str, engine_args),
        ]  # fmt: skip
        base = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYCTL_")}
        full_env = {**base, "DEPLOYCTL_ENDPOINT_KEY": KEY, **(env or {})}
        with open(self.out_file, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    # -- HTTP ------------------------------------------------------------------------
    def call(self, method, path, body=None, key=KEY, headers=None, port=None, timeout=10.0):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def health(self) -> dict:
        return self.call("GET", "/health", key=None).json()

    def status(self, requests: int | None = None) -> dict:
        """/deployctl/status; with `requests`, once that many have been counted (the guard
        counts a request after its last byte went out, so a fast client can ask earlier)."""

        def settled():
            doc = self.call("GET", "/deployctl/status").json()
            done = requests is None or (doc["requests"] >= requests and not doc["in_flight"])
            return doc if done else None

        return wait_for(settled, 3)

    def engine_stats(self) -> dict:
        return self.call("GET", "/admin/stats", key=None, port=self.engine_port).json()

    def chat(self, **extra) -> Reply:
        return self.call("POST", "/v1/chat/completions", dict(CHAT, **extra))

    # -- lifecycle -------------------------------------------------------------------
    def wait_engine(self, state: str = "ready", timeout: float = 10.0) -> float:
        def reached():
            with contextlib.suppress(OSError, ValueError):
                return self.health()["engine"] == state
            return False

        wait_for(reached, timeout)
        return time.monotonic()

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"guard still running after {timeout}s:\n{self.output()}"
            ) from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.out_file.read_text(errors="replace")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_guard(tmp_path):
    guards: list[GuardProcess] = []

    def start(*guard_args, engine=(), env=None, python=None, ready=True) -> GuardProcess:
        g = GuardProcess(tmp_path, guard_args, engine, env, python)
        guards.append(g)
        if ready:
            g.wait_engine("ready")
        return g

    yield start
    for g in guards:
        g.stop()


class TeardownApi(FakeApi):
    """Vast's DELETE /api/v0/instances/{id}/ and RunPod's podTerminate, both answering OK."""

    def handle(self, request: RecordedRequest) -> FakeResponse:
        if request.method == "DELETE":
            return FakeResponse(200, {"success": True})
        return FakeResponse(200, {"data": {"podTerminate": None}})


@pytest.fixture
def provider_api():
    api = TeardownApi()
    with FakeServer(api) as server:
        yield api, server.url


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> int | None:
    """Send raw bytes, return the status code of the answer, or None if it just closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # nothing more is coming: no waiting for a timeout
        buf = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
    if not buf:
        return None
    assert buf.startswith(b"HTTP/1."), buf[:100]
    return int(buf.split()[1])


# -- auth and routing --------------------------------------------------------------------
def test_every_path_but_health_needs_the_key(start_guard):
    g = start_guard()
    for key in (None, "wrong-key", KEY[:-1], KEY + "x", ""):
        reply = g.call("GET", "/v1/models", key=key)
        assert reply.status == 401, key
        assert reply.headers.get("WWW-Authenticate") == "Bearer"
    assert g.call("GET", "/v1/models", key=None, headers={"Authorization": KEY}).status == 401
    assert (
        g.call("GET", "/v1/models", key=None, headers={"Authorization": f"Basic {KEY}"}).status
        == 401
    )
    for path in ("/metrics", "/deployctl/status", "/deployctl/logs", "/admin/stats", "/"):
        assert g.call("GET", path, key=None).status == 401, path
    assert g.call("POST", "/v1/chat/completions", CHAT, key="nope").status == 401
    assert g.call("GET", "/health", key=None).status == 200

    models = g.call("GET", "/v1/models")
    assert models.status == 200
    assert [m["id"] for m in models.json()["data"]] == [MODEL]
    status = g.status()
    assert status["requests"] == 0  # rejected calls and GET /v1/models never count
    assert status["rejected_requests"] == 13


def test_only_the_v1_api_is_forwarded(start_guard):
    g = start_guard()
    tricks = [
        ("GET", "/admin/stats"),
        ("POST", "/admin/shutdown"),
        ("POST", "/v1/../admin/shutdown"),
        ("POST", "/v1/%2e%2e/admin/shutdown"),
        ("POST", "/v1//admin/shutdown"),
        ("GET", "/v1"),
        ("GET", "/metrics/../admin/stats"),
        ("GET", f"http://127.0.0.1:{g.engine_port}/admin/stats"),
        ("GET", "/deployctl/../admin/stats"),
    ]
    for method, path in tricks:
        assert g.call(method, path, b"{}" if method == "POST" else None).status == 404, path
    assert g.call("HEAD", "/v1/models").status == 405
    stats = g.engine_stats()
    assert stats["admin_calls"] == 0
    assert g.chat(max_tokens=2).status == 200  # and the real API still goes through


def test_engine_gets_no_secrets_and_logs_show_none(start_guard):
    secrets = {"CONTAINER_API_KEY": "vast-scoped-key-77aa", "RUNPOD_API_KEY": "rp-scoped-key-88bb"}
    g = start_guard("--teardown", "local", env=secrets)
    assert g.chat(max_tokens=2).status == 200
    assert g.call("GET", "/v1/models", key="wrong-key-that-is-long").status == 401
    stats = g.engine_stats()
    for name in ("DEPLOYCTL_ENDPOINT_KEY", "CONTAINER_API_KEY", "RUNPOD_API_KEY"):
        assert name not in stats["env_names"]
    assert stats["authorization_seen"] == 0
    assert "authorization" not in stats["last_headers"]
    logs = g.call("GET", "/deployctl/logs?tail=500")
    assert logs.status == 200 and "POST /v1/chat/completions 200" in logs.body.decode()
    g.stop()
    everything = g.log() + g.output() + logs.body.decode()
    for secret in (KEY, *secrets.values()):
        assert secret not in everything


# -- activity and idle -----------------------------------------------------------------
def test_health_pings_do_not_keep_it_alive(start_guard):
    g = start_guard("--keep-alive-s", 2, "--teardown", "local")
    ready = time.monotonic()
    pings = 0
    while g.alive() and time.monotonic() - ready < 8:
        with contextlib.suppress(OSError):
            assert g.call("GET", "/health", key=None, timeout=1).status == 200
            if pings % 5 == 0:  # listing models is not inference either
                g.call("GET", "/v1/models", timeout=1)
                g.call("GET", "/deployctl/status", timeout=1)
                g.call("GET", "/metrics", timeout=1)
            pings += 1
        time.sleep(0.05)
    gone = time.monotonic() - ready
    assert g.wait_exit(5) == 0
    assert pings > 15
    assert 1.8 <= gone <= 3.5, gone
    assert "teardown: idle for" in g.log()


def test_the_launchers_readiness_probe_is_forwarded_but_never_counted(start_guard):
    g = start_guard()
    probe = {"X-Deployctl-Probe": "ready"}
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1}
    for _ in range(3):
        assert g.call("POST", "/v1/completions", body, headers=probe).status == 200
    assert g.call("POST", "/v1/completions", body, key=None, headers=probe).status == 401
    status = g.status()
    assert status["requests"] == 0 and status["completion_tokens"] == 0
    assert g.chat(max_tokens=1).status == 200
    assert g.status(requests=1)["requests"] == 1


@pytest.mark.slow
def test_real_requests_reset_idle(start_guard):
    g = start_guard("--keep-alive-s", 2, "--teardown", "local")
    ready = time.monotonic()
    while time.monotonic() - ready < 4:  # twice the keep-alive, kept alive by requests
        assert g.chat(max_tokens=1).status == 200
        last = time.monotonic()
        time.sleep(0.6)
    assert g.alive()
    status = g.status()
    assert status["idle_s"] < 1.0 and status["requests"] >= 5
    assert g.wait_exit(5) == 0
    assert 1.8 <= time.monotonic() - last <= 3.5


@pytest.mark.slow
def test_a_request_in_flight_holds_off_idle_teardown(start_guard):
    g = start_guard("--keep-alive-s", 1, "--teardown", "local", engine=("--token-delay-s", 0.3))
    started = time.monotonic()
    reply = g.chat(max_tokens=10, stream=True)  # 3 s of streaming, keep-alive 1 s
    assert reply.status == 200 and reply.body.rstrip().endswith(b"data: [DONE]")
    assert time.monotonic() - started >= 2.9
    assert g.alive()
    assert g.wait_exit(4) == 0


# -- streaming -------------------------------------------------------------------------
def _stream(g: GuardProcess, body: dict) -> tuple[float, float, list[dict]]:
    """POST a streaming request; (first content chunk after, end after, chunks)."""
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), headers)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "text/event-stream"
    first, chunks = None, []
    while True:
        line = resp.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        chunks.append(json.loads(data))
        if first is None and chunks[-1]["choices"] and chunks[-1]["choices"][0]["delta"]:
            first = time.monotonic() - started
    ended = time.monotonic() - started
    conn.close()
    return first, ended, chunks


def test_sse_first_chunk_arrives_before_the_completion_ends(start_guard):
    g = start_guard(engine=("--token-delay-s", 0.2))
    body = dict(CHAT, max_tokens=10, stream=True)
    first, ended, chunks = _stream(g, body)
    assert first is not None and first < 1.0, first
    assert ended >= 1.9, ended  # 10 tokens x 0.2 s: the stream was not buffered
    assert ended - first >= 1.5
    words = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(w for w in words if w).split()[:3] == ["alpha", "bravo", "charlie"]
    # the guard asked for usage itself: the client, which did not, never sees that chunk
    assert all(c["choices"] for c in chunks)
    status = g.status(requests=1)
    assert status["requests"] == 1 and status["completion_tokens"] == 10
    assert status["prompt_tokens"] == 7

    # a client that asks for usage gets it
    asked = dict(body, max_tokens=3, stream_options={"include_usage": True})
    _, _, chunks = _stream(g, asked)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    # a client that refuses it: the guard counts content chunks instead
    refused = dict(body, max_tokens=4, stream_options={"include_usage": False})
    _, _, chunks = _stream(g, refused)
    assert all(c["choices"] for c in chunks)
    status = g.status(requests=3)
    assert status["requests"] == 3 and status["completion_tokens"] == 17


def test_counters_tokens_status_and_metrics(start_guard):
    g = start_guard("--keep-alive-s", 300, "--ttl-s", 3600)
    chat = g.chat(max_tokens=5).json()
    assert chat["choices"][0]["message"]["content"] == "alpha bravo charlie delta echo"
    text = g.call("POST", "/v1/completions", {"model": MODEL, "prompt": "one two", "max_tokens": 4})
    emb = g.call("POST", "/v1/embeddings", {"model": MODEL, "input": ["a b c", "d"]})
    assert text.status == 200 and emb.status == 200
    assert g.call("GET", "/v1/models").status == 200  # forwarded, not counted
    prompt = chat["usage"]["prompt_tokens"] + text.json()["usage"]["prompt_tokens"]
    prompt += emb.json()["usage"]["prompt_tokens"]
    status = g.status(requests=3)
    assert status["requests"] == 3
    assert status["completion_tokens"] == 9
    assert status["prompt_tokens"] == prompt
    assert status["keep_alive_s"] == 300 and status["ttl_s"] == 3600
    assert status["engine"] == "ready" and status["teardown_reason"] is None
    assert status["last_request_at"] == pytest.approx(time.time(), abs=5)
    assert 0 <= status["idle_s"] < 2 and status["age_s"] > 0

    assert g.call("GET", "/metrics", key=None).status == 401
    metrics = g.call("GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.body.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert values["deployctl_guard_requests_total"] == 3
    assert values["deployctl_guard_completion_tokens_total"] == 9
    assert values["deployctl_guard_prompt_tokens_total"] == prompt
    assert values["deployctl_guard_rejected_requests_total"] == 1
    assert values["deployctl_guard_engine_up"] == 1
    assert "deployctl_guard_idle_seconds" in values and "deployctl_guard_age_seconds" in values

    logs = g.call("GET", "/deployctl/logs?tail=3")
    assert logs.status == 200 and len(logs.body.decode().splitlines()) == 3
    assert g.call("GET", "/deployctl/logs?tail=x").status == 400


# -- teardown ----------------------------------------------------------------------------
VAST_SCOPED_KEY = "vast-scoped-key-1234"


def vast_env(url: str, container_id: str) -> dict[str, str]:
    """What Vast sets in a container (its id and instance-scoped key), at the fake API."""
    return {"VAST_URL": url, "CONTAINER_ID": container_id, "CONTAINER_API_KEY": VAST_SCOPED_KEY}


def test_idle_teardown_destroys_the_vast_instance(start_guard, provider_api):
    api, url = provider_api
    api.fail_next(2, status=503)  # retried with backoff
    env = vast_env(url, "4242")
    g = start_guard("--keep-alive-s", 1, "--teardown", "vast", env=env)
    engine_pid = g.engine_stats()["pid"]
    assert g.wait_exit(6) == 0
    assert [(c.method, c.path) for c in api.calls] == [("DELETE", "/api/v0/instances/4242/")] * 3
    assert {bearer_token(c) for c in api.calls} == {VAST_SCOPED_KEY}
    assert not pid_alive(engine_pid)
    log = g.log()
    assert (
        log.index("teardown: idle for") < log.index("engine stopped") < log.index("attempt 3: ok")
    )


def test_ttl_teardown_terminates_the_runpod_pod(start_guard, provider_api):
    api, url = provider_api
    pod = 'pod-"quoted"\\id'
    env = {"RUNPOD_API_BASE_URL": url + "/graphql", "RUNPOD_POD_ID": pod,
           "RUNPOD_API_KEY": "rp-scoped-key-5678",
           "DEPLOYCTL_TTL_S": "2", "DEPLOYCTL_TEARDOWN": "runpod"}  # fmt: skip
    g = start_guard(env=env)  # limits from the environment this time
    while g.alive():  # activity does not extend a ttl
        with contextlib.suppress(OSError):
            g.chat(max_tokens=1)
        time.sleep(0.2)
    assert g.wait_exit(1) == 0
    assert 1.9 <= time.monotonic() - g.started <= 4.5
    (call,) = api.calls
    assert (call.method, call.path, bearer_token(call)) == (
        "POST",
        "/graphql",
        "rp-scoped-key-5678",
    )
    doc = call.json()
    assert doc["variables"] == {"input": {"podId": pod}}
    assert "podTerminate(input: $input)" in doc["query"] and "quoted" not in doc["query"]
    assert "teardown: ttl reached" in g.log()


def test_teardown_that_never_succeeds_exits_1(start_guard, provider_api):
    api, url = provider_api
    api.fail_next(100, status=500)
    env = vast_env(url, "7")
    g = start_guard("--ttl-s", 1, "--teardown", "vast", "--teardown-attempts", 3, env=env)
    assert g.wait_exit(5) == 1
    assert len(api.calls) == 3
    assert "could NOT be destroyed" in g.log()
    # credentials missing: nothing to call, still an error
    g2 = start_guard("--ttl-s", 1, "--teardown", "runpod", env={"RUNPOD_POD_ID": "p1"})
    assert g2.wait_exit(5) == 1
    assert "RUNPOD_API_KEY not set" in g2.log()


def test_teardown_retries_until_it_succeeds_by_default(start_guard, provider_api):
    """No attempt limit unless one is set: an instance that cannot end itself bills."""
    api, url = provider_api
    api.fail_next(8, status=503)
    env = vast_env(url, "8")
    g = start_guard("--ttl-s", 1, "--teardown", "vast", "--teardown-backoff-max-s", 0.1, env=env)
    assert g.wait_exit(10) == 0
    assert len(api.calls) == 9
    assert "attempt 9: ok" in g.log()


def test_sigterm_ends_the_teardown_retries(start_guard, provider_api):
    api, url = provider_api
    api.fail_next(10_000, status=500)
    env = vast_env(url, "8")
    g = start_guard("--ttl-s", 1, "--teardown", "vast", "--teardown-backoff-s", 60, env=env)
    wait_for(lambda: len(api.calls) >= 1, 10)
    g.proc.send_signal(signal.SIGTERM)  # mid-backoff: a 60 s wait it must not sit out
    assert g.wait_exit(3) == 1
    assert len(api.calls) == 1
    assert "teardown retries ended by a signal" in g.log()


def test_engine_that_dies_is_torn_down_after_grace(start_guard, provider_api):
    api, url = provider_api
    env = vast_env(url, "9")
    g = start_guard(
        "--engine-grace-s", 1, "--teardown", "vast", engine=("--die-after-s", 1), env=env
    )
    died = g.wait_engine("dead", timeout=5)
    assert g.call("POST", "/v1/chat/completions", CHAT).status == 502
    assert g.wait_exit(5) == 0
    assert 0.8 <= time.monotonic() - died <= 3.0
    assert [c.path for c in api.calls] == ["/api/v0/instances/9/"]
    assert "teardown: engine exited" in g.log()


def test_engine_that_stops_answering_is_torn_down_after_grace(start_guard):
    g = start_guard("--engine-grace-s", 1, "--teardown", "local", engine=("--unhealthy-after-s", 1))
    sick = g.wait_engine("dead", timeout=5)
    assert g.wait_exit(5) == 0
    assert 0.8 <= time.monotonic() - sick <= 3.0
    assert "teardown: engine unhealthy" in g.log()


def test_engine_never_ready_is_torn_down_after_engine_start_s(start_guard):
    g = start_guard(
        "--engine-start-s", 1.5, "--teardown", "local", engine=("--never-ready",), ready=False
    )
    g.wait_engine("starting")

    def engine_listens() -> bool:
        with contextlib.suppress(OSError):
            return bool(g.engine_stats())
        return False

    wait_for(engine_listens, 5)
    assert g.health()["engine"] == "starting"
    assert g.call("GET", "/v1/models").status == 503  # the engine's own answer, forwarded
    assert g.wait_exit(5) == 0
    assert 1.4 <= time.monotonic() - g.started <= 4.0
    assert "teardown: engine not ready within 1.5s" in g.log()


# -- signals -----------------------------------------------------------------------------
def test_sigterm_stops_the_engine_without_a_provider_call(start_guard, provider_api):
    api, url = provider_api
    env = vast_env(url, "5")
    g = start_guard("--keep-alive-s", 60, "--teardown", "vast", env=env)
    engine_pid = g.engine_stats()["pid"]
    g.proc.send_signal(signal.SIGTERM)
    assert g.wait_exit(5) == 0
    assert not pid_alive(engine_pid)
    assert api.calls == []
    assert "stopping: received SIGTERM" in g.log()


def test_engine_ignoring_sigterm_is_killed(start_guard):
    g = start_guard("--engine-stop-s", 0.5, engine=("--ignore-sigterm",))
    engine_pid = g.engine_stats()["pid"]
    g.proc.send_signal(signal.SIGINT)
    assert g.wait_exit(5) == 0
    assert not pid_alive(engine_pid)
    assert "engine ignored SIGTERM" in g.log()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_engine_dies_with_a_sigkilled_guard(start_guard):
    g = start_guard()
    engine_pid = g.engine_stats()["pid"]
    g.proc.kill()
    g.proc.wait(5)
    wait_for(lambda: not pid_alive(engine_pid), 3)


# -- hardening ---------------------------------------------------------------------------
def test_oversized_body_and_headers_are_refused(start_guard):
    g = start_guard("--max-body-bytes", 1024 * 1024)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    )
    assert raw_exchange(g.port, head.format(KEY, 9 * 1024 * 1024).encode() + b"{" * 4096) == 413
    assert g.call("POST", "/v1/chat/completions", b"x" * (1024 * 1024 + 1)).status == 413
    big_header = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 20000}\r\n\r\n".encode()
    assert raw_exchange(g.port, big_header) == 431
    many = "".join(f"X-H{i}: {'b' * 200}\r\n" for i in range(100))
    assert raw_exchange(g.port, f"GET /health HTTP/1.1\r\n{many}\r\n".encode()) == 431
    assert raw_exchange(g.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n") == 431
    chunked = head.replace("Content-Length: {}", "Transfer-Encoding: chunked{}")
    assert (
        raw_exchange(g.port, chunked.format(KEY, "").encode() + b"5\r\nhello\r\n0\r\n\r\n") == 411
    )
    assert g.status()["requests"] == 0
    assert g.chat(max_tokens=1).status == 200


def test_malformed_requests_get_4xx_or_a_closed_socket(start_guard):
    g = start_guard("--client-timeout-s", 1)
    rng = random.Random(7)
    garbage = [rng.randbytes(rng.randint(1, 3000)) for _ in range(25)]
    garbage += [
        b"\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /health\r\n\r\n",  # HTTP/0.9
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"BREW /v1/models HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Length: 50\r\n\r\n{short",  # body never completes
    ]
    for data in garbage:
        status = raw_exchange(g.port, data)
        assert status is None or 400 <= status < 500 or status == 505, (data[:60], status)
        assert g.alive()
    # a client that connects and says nothing, or stalls mid-head, is dropped
    for data in (b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"):
        with socket.create_connection(("127.0.0.1", g.port), timeout=5) as sock:
            sock.sendall(data)
            started = time.monotonic()
            assert sock.recv(1024) == b""
            assert time.monotonic() - started < 3
    assert g.health()["engine"] == "ready"
    assert g.chat(max_tokens=1).status == 200
    assert g.status(requests=1)["requests"] == 1
    assert "Traceback" not in g.output()


def test_connection_cap_answers_503(start_guard):
    g = start_guard("--max-connections", 3)
    idle: list[socket.socket] = []

    def hold_three_slots() -> bool:
        """Open silent connections until three hold a slot. The thread of an earlier
        health probe may still hold one for a moment; a connection refused meanwhile
        is answered 503 at once and is replaced."""
        while len(idle) < 3:
            idle.append(socket.create_connection(("127.0.0.1", g.port)))
        time.sleep(0.3)
        for sock in list(idle):
            sock.setblocking(False)
            try:
                sock.recv(1)  # answered (503) or closed: it holds no slot
            except BlockingIOError:
                continue  # silent: it holds a slot
            except OSError:
                pass
            idle.remove(sock)
            sock.close()
        return len(idle) == 3

    try:
        wait_for(hold_three_slots, 5)
        assert raw_exchange(g.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == 503
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: g.call("GET", "/health", key=None).status == 200, 3)


# -- startup and portability -------------------------------------------------------------
def test_config_errors_exit_2(tmp_path):
    base = [sys.executable, str(GUARD), "--log-file", str(tmp_path / "g.log")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYCTL_")}
    no_key = subprocess.run([*base, "--", "true"], env=env, capture_output=True, timeout=10)
    assert no_key.returncode == 2 and b"DEPLOYCTL_ENDPOINT_KEY" in no_key.stderr
    env["DEPLOYCTL_ENDPOINT_KEY"] = KEY
    no_engine = subprocess.run(base, env=env, capture_output=True, timeout=10)
    assert no_engine.returncode == 2 and b"engine command" in no_engine.stderr
    bad_kind = subprocess.run(
        [*base, "--teardown", "aws", "--", "true"], env=env, capture_output=True
    )
    assert bad_kind.returncode == 2
    env["DEPLOYCTL_KEEP_ALIVE_S"] = "ten minutes"
    bad_env = subprocess.run([*base, "--", "true"], env=env, capture_output=True, timeout=10)
    assert bad_env.returncode == 2 and b"--keep-alive-s" in bad_env.stderr


def test_guard_source_is_python38_syntax():
    ast.parse(GUARD.read_text(), feature_version=(3, 8))
    ast.parse(ENGINE.read_text(), feature_version=(3, 8))


@pytest.mark.skipif(PYTHON38 is None, reason="no python3.8 on this machine")
def test_runs_on_python38(start_guard, provider_api):
    api, url = provider_api
    env = vast_env(url, "38")
    g = start_guard("--keep-alive-s", 1.5, "--teardown", "vast", env=env, python=PYTHON38,
                    engine=("--token-delay-s", 0.1))  # fmt: skip
    first, ended, chunks = _stream(g, dict(CHAT, max_tokens=5, stream=True))
    assert first < ended - 0.2 and len(chunks) == 6
    assert g.chat(max_tokens=2).status == 200
    assert g.status(requests=2)["completion_tokens"] == 7
    assert raw_exchange(g.port, b"\x00garbage\r\n\r\n") in (None, 400)
    assert g.wait_exit(5) == 0
    assert [c.path for c in api.calls] == ["/api/v0/instances/38/"]
