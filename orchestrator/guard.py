#!/usr/bin/env python3
"""deployctl guard: the in-instance sidecar in front of an inference engine (stdlib only).

Shipped into every instance (base64) and run by the local provider as a process; runs on
python3.8+. It starts the engine as a child on an internal port, serves the public port,
authenticates, forwards the inference API, counts real use, and destroys its own instance
when it is idle, too old, or its engine is gone.

    python3 guard.py [options] -- ENGINE_ARGV...
      --host HOST          public bind host (default 0.0.0.0)
      --port PORT          public port (default $DEPLOYCTL_GUARD_PORT or 8000)
      --engine-port PORT   engine port (default $DEPLOYCTL_ENGINE_PORT or 8001); "{port}" in
                           ENGINE_ARGV becomes it, "{host}" becomes 127.0.0.1
      --keep-alive-s N     idle limit (default $DEPLOYCTL_KEEP_ALIVE_S; 0 = none)
      --ttl-s N            hard lifetime from guard start (default $DEPLOYCTL_TTL_S; 0 = none)
      --engine-start-s N   time the engine may take to become ready (default
                           $DEPLOYCTL_ENGINE_START_S or 1800)
      --engine-grace-s N   time a dead/unhealthy engine may stay down (default 60)
      --teardown KIND      vast | runpod | local | skypilot | none (default $DEPLOYCTL_TEARDOWN)
      --log-file PATH      guard+engine log (default $DEPLOYCTL_DIR/guard.log)
      --teardown-attempts N  provider calls before giving up (default 0: until it is gone)
    Tuning (tests): --poll-s, --engine-stop-s, --client-timeout-s, --upstream-timeout-s,
      --max-body-bytes, --max-connections, --teardown-backoff-s, --teardown-backoff-max-s.

Env: DEPLOYCTL_ENDPOINT_KEY (required; removed, with CONTAINER_API_KEY and RUNPOD_API_KEY,
from the engine's env). vast: CONTAINER_ID, CONTAINER_API_KEY, VAST_URL; runpod:
RUNPOD_POD_ID, RUNPOD_API_KEY, RUNPOD_API_BASE_URL.

HTTP: GET /health (no auth, never activity) -> {"status": "ok", "engine": starting|ready|
dead, "uptime_s"}. With `Authorization: Bearer <key>` (else 401): GET /metrics
(Prometheus), GET /deployctl/status (JSON), GET /deployctl/logs?tail=N (text), and /v1/...
forwarded to the engine, SSE streamed through event by event; anything else 404.

Activity is an authenticated POST to /v1/chat/completions, /v1/completions or
/v1/embeddings that the engine answered (not deployctl's own readiness probe, which says
`X-Deployctl-Probe: ready`: forwarded, never counted); tokens come from the response
`usage` (streams: the guard asks for the usage chunk and hides it from clients that did
not ask for it).
Idle time runs from engine-ready or the end of the last such request, and stands still
while one is in flight. Teardown (idle >= keep-alive, age >= ttl, engine dead past its
grace or never ready): log why, stop the engine (SIGTERM to its process group, then
SIGKILL), destroy the instance through the provider's API with the instance-scoped
credential (retried with backoff doubling up to 5 minutes, until it succeeds: an instance
that cannot end itself keeps billing), exit 0 (1 if the provider call never succeeded).
SIGTERM/SIGINT: stop the engine, exit 0, no provider call; during the teardown's retries
it ends them (whoever stops the container has taken over).
"""

from __future__ import annotations

# Only what starting the engine needs: the proxy's modules (http.server, email, ssl) are
# imported after the engine has started (see _start_engine), which saves ~50 ms of boot.
import argparse
import collections
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

PROBE_HEADER = "X-Deployctl-Probe"  # the launcher's readiness completion: not counted
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
STREAMABLE_PATHS = ("/v1/chat/completions", "/v1/completions")
ALLOWED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SECRET_ENV = ("DEPLOYCTL_ENDPOINT_KEY", "CONTAINER_API_KEY", "RUNPOD_API_KEY")
SCRUB_ENV = (*SECRET_ENV, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te"}
HOP_BY_HOP |= {"trailer", "trailers", "transfer-encoding", "upgrade"}
REQUEST_HEADERS_DROPPED = HOP_BY_HOP | {
    "host",
    "authorization",
    "content-length",
    "accept-encoding",
}
RESPONSE_HEADERS_DROPPED = HOP_BY_HOP | {"content-length", "server", "date"}
TEARDOWN_KINDS = ("vast", "runpod", "local", "skypilot", "none")
MAX_HEADER_BYTES = 16 * 1024
USAGE_PARSE_LIMIT = 4 * 1024 * 1024
MAX_LOG_BYTES = 64 * 1024 * 1024
RUNPOD_TERMINATE = "mutation terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"
_BUSY_BODY = b'{"error": {"message": "too many open connections", "code": 503}}'
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
BUSY += b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


class Config:
    """Command line and environment, parsed once (argparse errors exit 2)."""

    def __init__(self, argv: list[str]) -> None:
        cut = argv.index("--") if "--" in argv else len(argv)
        own, engine = argv[:cut], argv[cut + 1 :]
        p = argparse.ArgumentParser(prog="guard.py", usage="%(prog)s [options] -- ENGINE_ARGV...")
        arg = p.add_argument
        arg("--host", default="0.0.0.0")
        # string defaults go through `type` too: a bad value in the env is an exit 2
        arg("--port", type=int, default=_env("DEPLOYCTL_GUARD_PORT", "8000"))
        arg("--engine-port", type=int, default=_env("DEPLOYCTL_ENGINE_PORT", "8001"))
        arg("--keep-alive-s", type=float, default=_env("DEPLOYCTL_KEEP_ALIVE_S", "0"))
        arg("--ttl-s", type=float, default=_env("DEPLOYCTL_TTL_S", "0"))
        arg("--engine-start-s", type=float, default=_env("DEPLOYCTL_ENGINE_START_S", "1800"))
        arg("--engine-grace-s", type=float, default=_env("DEPLOYCTL_ENGINE_GRACE_S", "60"))
        teardown = _env("DEPLOYCTL_TEARDOWN", "none")
        arg("--teardown", type=str.lower, choices=TEARDOWN_KINDS, default=teardown)
        log_file = os.path.join(_env("DEPLOYCTL_DIR", "/opt/deployctl"), "guard.log")
        arg("--log-file", default=log_file)
        arg("--poll-s", type=float, default=1.0)
        arg("--engine-stop-s", type=float, default=15.0)
        arg("--client-timeout-s", type=float, default=30.0)
        arg("--upstream-timeout-s", type=float, default=1800.0)
        arg("--max-body-bytes", type=int, default=8 * 1024 * 1024)
        arg("--max-connections", type=int, default=256)
        arg("--teardown-attempts", type=int, default=0)  # 0: until it succeeds
        arg("--teardown-backoff-s", type=float, default=1.0)
        arg("--teardown-backoff-max-s", type=float, default=300.0)
        ns = p.parse_args(own)
        if not engine:
            p.error("missing the engine command after --")
        for name in ("keep_alive_s", "ttl_s", "engine_start_s", "engine_grace_s", "poll_s",
                     "teardown_attempts", "teardown_backoff_s", "teardown_backoff_max_s"):
            if getattr(ns, name) < 0:
                p.error(f"--{name.replace('_', '-')} must be >= 0")
        self.key = os.environ.get("DEPLOYCTL_ENDPOINT_KEY", "").strip()
        if not self.key:
            p.error("DEPLOYCTL_ENDPOINT_KEY is required")
        self.__dict__.update(vars(ns))
        port = str(ns.engine_port)
        self.engine_argv = [
            a.replace("{port}", port).replace("{host}", "127.0.0.1") for a in engine
        ]
        self.env = dict(os.environ)


class Log:
    """Guard and engine lines: to the log file, our stdout, and a ring for /deployctl/logs.

    Every line is scrubbed of the secrets we know (endpoint key, provider keys, HF token).
    """

    def __init__(self, path: str, secrets: list[str]) -> None:
        self.path = path
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)
        self.lines: collections.deque = collections.deque(maxlen=5000)
        self.lock = threading.Lock()
        self.file = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            self.write("guard", f"cannot open the log file {path}: {exc}")

    def write(self, source: str, text: str) -> None:
        text = text.rstrip()
        for secret in self.secrets:
            text = text.replace(secret, "***")
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} [{source}] {text}"
        with self.lock:
            self.lines.append(line)
            for stream in (self.file, sys.stdout):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.write(line + "\n")
                    stream.flush()
            try:
                if self.file is not None and self.file.tell() > MAX_LOG_BYTES:
                    self.file.close()
                    os.replace(self.path, self.path + ".1")
                    self.file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            except (OSError, ValueError):
                self.file = None

    def tail(self, n: int) -> list[str]:
        with self.lock:
            return list(self.lines)[-n:]


class Counters:
    """Requests, tokens and the activity clock (monotonic seconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.rejected = self.in_flight = 0
        self.ready_at: float | None = None
        self.last_activity: float | None = None
        self.last_request_at: float | None = None  # unix time, for humans
        self.teardown_reason: str | None = None

    def reject(self) -> None:
        with self.lock:
            self.rejected += 1

    def begin(self) -> None:
        with self.lock:
            self.in_flight += 1

    def end(self, answered: bool, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            self.in_flight -= 1
            if answered:
                self.requests += 1
                self.prompt_tokens += prompt_tokens
                self.completion_tokens += completion_tokens
                self.last_activity = time.monotonic()
                self.last_request_at = time.time()

    def mark_ready(self) -> None:
        with self.lock:
            if self.ready_at is None:
                self.ready_at = time.monotonic()

    def idle_s(self, now: float) -> float:
        with self.lock:
            marks = [m for m in (self.ready_at, self.last_activity) if m is not None]
            return 0.0 if self.in_flight or not marks else max(0.0, now - max(marks))

    def snapshot(self) -> dict:
        now = time.monotonic()
        idle = self.idle_s(now)
        with self.lock:
            return {
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "rejected_requests": self.rejected,
                "in_flight": self.in_flight,
                "idle_s": round(idle, 3),
                "age_s": round(now - self.started, 3),
                "last_request_at": self.last_request_at,
                "teardown_reason": self.teardown_reason,
            }


try:  # Linux: PR_SET_PDEATHSIG makes the engine die with a SIGKILLed guard
    import ctypes

    _PRCTL = ctypes.CDLL(None).prctl
except (ImportError, OSError, AttributeError):  # no ctypes in the image, or not Linux
    _PRCTL = None


def _child_setup() -> None:  # runs in the forked engine child, before exec
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL, 0, 0, 0)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _redact_argv(argv: list[str]) -> str:
    """The engine command for the log, with the values of --*-key/-token/-secret hidden."""
    out, hide = [], False
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        words = flag.lstrip("-").lower().replace("_", "-").split("-")
        secret = arg.startswith("-") and words[-1] in ("key", "token", "secret", "password")
        out.append("***" if hide else flag + "=***" if secret and eq else arg)
        hide = secret and not eq
    return " ".join(out)


class EngineProcess:
    """The engine child: start, health probes, state (starting|ready|dead), stop."""

    def __init__(self, cfg: Config, log: Log) -> None:
        self.cfg, self.log = cfg, log
        self.proc: subprocess.Popen | None = None
        self.state = "starting"
        self.ever_ready = False
        self.exited_at: float | None = None
        self.down_since: float | None = None
        self._has_health = True
        self._probed_at = 0.0  # a ready engine is probed every few seconds, not every poll
        self._probe_every_s = min(5.0, max(cfg.poll_s, cfg.engine_grace_s / 4))

    def start(self) -> None:
        """Start the engine (once: a second call does nothing)."""
        if self.proc is not None or self.exited_at is not None:
            return
        env = {k: v for k, v in self.cfg.env.items() if k not in SECRET_ENV}
        self.log.write("guard", "starting engine: " + _redact_argv(self.cfg.engine_argv))
        try:
            self.proc = subprocess.Popen(
                self.cfg.engine_argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_setup,  # called before any thread starts
            )
        except OSError as exc:
            self.log.write("guard", f"cannot start the engine: {exc}")
            self.exited_at, self.state = time.monotonic(), "dead"
            return
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: io.BufferedReader) -> None:
        for raw in iter(lambda: stream.readline(65536), b""):
            self.log.write("engine", raw.decode("utf-8", "replace"))

    def _probe(self) -> bool:
        """GET /health (vLLM, TGI, llama.cpp); engines without one: GET /v1/models."""
        for path in ("/health", "/v1/models"):
            if path == "/health" and not self._has_health:
                continue
            conn = http.client.HTTPConnection("127.0.0.1", self.cfg.engine_port, timeout=5)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                return False
            finally:
                conn.close()
            if path == "/health" and status == 404:
                self._has_health = False
                continue
            return status == 200
        return False

    def update(self, now: float, busy: bool = False) -> None:
        """Refresh the engine's state. `busy`: requests are in flight, which is proof
        enough that a ready engine answers; probing then would take llama.cpp's model
        lock and cut the streams being served."""
        code = self.proc.poll() if self.proc is not None else -1
        if code is not None:
            if self.exited_at is None:
                self.exited_at = now
                self.log.write("guard", f"engine exited with code {code}")
            self.state = "dead"
            return
        if self.state == "ready" and (busy or now - self._probed_at < self._probe_every_s):
            return
        self._probed_at = now
        if self._probe():
            if not self.ever_ready or self.down_since is not None:
                self.log.write("guard", "engine ready")
            self.state, self.ever_ready, self.down_since = "ready", True, None
        elif self.ever_ready:
            if self.down_since is None:
                self.down_since = now
                self.log.write("guard", "engine stopped answering its health check")
            self.state = "dead"

    def stop(self) -> None:
        """SIGTERM the engine's process group, SIGKILL it after --engine-stop-s."""
        proc = self.proc
        if proc is None:
            return
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(self.cfg.engine_stop_s)
        except subprocess.TimeoutExpired:
            self.log.write("guard", f"engine ignored SIGTERM for {self.cfg.engine_stop_s}s")
        _killpg(proc.pid, signal.SIGKILL)  # and whatever it left behind in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.state = "dead"
        self.log.write("guard", f"engine stopped (exit code {proc.returncode})")


def _start_engine(argv: list[str]) -> tuple[Config, Log, EngineProcess]:
    """Parse the command line, open the log and start the engine: the first thing a guard
    run as a program does, so the engine boots while the rest of this file loads."""
    cfg = Config(argv)
    log = Log(cfg.log_file, [cfg.env.get(name, "") for name in SCRUB_ENV])
    engine = EngineProcess(cfg, log)
    engine.start()  # before any other thread: preexec_fn forks cleanly
    return cfg, log, engine


_EARLY: tuple[Config, Log, EngineProcess] | None = None
if __name__ == "__main__":
    _EARLY = _start_engine(sys.argv[1:])

# -- the proxy -----------------------------------------------------------------------------
import hmac  # noqa: E402
import http.client  # noqa: E402
import socket  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from urllib.parse import parse_qs, quote, unquote  # noqa: E402


class Usage:
    """Tokens of one response: from `usage` when reported, else counted content chunks."""

    def __init__(self) -> None:
        self.prompt = self.completion = self.chunks = 0
        self.reported = False

    def take(self, usage: object) -> bool:
        """Record a `usage` object (the last one wins: some engines send running totals)."""
        found = False
        for field, attr in (("prompt_tokens", "prompt"), ("completion_tokens", "completion")):
            value = usage.get(field) if isinstance(usage, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, attr, value)
                self.reported = found = True
        return found

    def count_chunk(self, obj: dict) -> None:
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            delta = delta if isinstance(delta, dict) else {}
            keys = ("content", "reasoning_content", "tool_calls")
            if isinstance(choice, dict) and (choice.get("text") or any(delta.get(k) for k in keys)):
                self.chunks += 1

    @property
    def completion_tokens(self) -> int:
        return self.completion if self.reported else self.chunks


def _inject_usage(body: bytes) -> tuple[bytes, bool]:
    """Ask a streaming request for the usage chunk, unless the client decided itself."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body, False
    if not isinstance(obj, dict) or obj.get("stream") is not True:
        return body, False
    options = obj.get("stream_options")
    if options is None:
        obj["stream_options"] = {"include_usage": True}
    elif isinstance(options, dict) and "include_usage" not in options:
        options["include_usage"] = True
    else:
        return body, False
    return json.dumps(obj).encode(), True


def _forwardable(path: str) -> bool:
    """Only the engine's /v1 API, and no path tricks to reach anything else."""
    decoded = unquote(path)
    if not decoded.startswith("/v1/") or "\\" in decoded or "//" in decoded:
        return False
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in decoded):
        return False
    return not any(seg in (".", "..") for seg in decoded.split("/"))


def _sse_events(pending: bytes, usage: Usage, strip_usage: bool) -> tuple[bytes, bytes]:
    """Split complete SSE events off `pending`: (events to send on, the rest)."""
    out = bytearray()
    while True:
        ends = [(pending.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n")]
        ends = [end for end in ends if end[0] >= 0]
        if not ends:
            if len(pending) > 1024 * 1024:  # no event boundary at all: not SSE, pass it on
                out, pending = out + pending, b""
            return bytes(out), pending
        idx, sep_len = min(ends)
        event, pending = pending[: idx + sep_len], pending[idx + sep_len :]
        lines = [ln[5:].strip() for ln in event.splitlines() if ln.startswith(b"data:")]
        data = b"\n".join(lines)
        obj = None
        if data and data != b"[DONE]":
            with contextlib.suppress(ValueError):
                obj = json.loads(data)
        if isinstance(obj, dict):
            if usage.take(obj.get("usage")) and strip_usage and not obj.get("choices"):
                continue  # the usage chunk we asked for: the client did not
            usage.count_chunk(obj)
        out += event


class _HeadTooLarge(Exception):
    pass


class ProxyHandler(BaseHTTPRequestHandler):
    """Auth, the guard's own endpoints, and the /v1 pass-through."""

    protocol_version = "HTTP/1.1"
    server_version = "deployctl-guard"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # errors before the version is parsed get a status line
    server: GuardServer

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        """The stdlib's, with a 16 KiB cap and one deadline on the whole request head."""
        cfg = self.server.guard.cfg
        self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
        self._unread_body = False
        try:
            deadline = time.monotonic() + cfg.client_timeout_s
            self.raw_requestline = self._read_line(MAX_HEADER_BYTES + 1, deadline)
            if not self.raw_requestline:
                self.close_connection = True
                return
            head = bytearray()
            while len(self.raw_requestline) + len(head) <= MAX_HEADER_BYTES:
                line = self._read_line(MAX_HEADER_BYTES + 1, deadline)
                head += line
                if line in (b"\r\n", b"\n", b""):
                    break
            else:
                raise _HeadTooLarge()
            words = self.raw_requestline.split()
            if len(words) != 3 or words[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
                # Refused here, with a status line: for a request line ending in HTTP/0.9
                # the stdlib answers (errors included) with a bare body and no headers.
                self.close_connection = True
                known = len(words) == 3 and words[2].startswith(b"HTTP/")
                return self._reject(505 if known else 400, "bad request line or version")
            sock_file, self.rfile = self.rfile, io.BytesIO(bytes(head))
            try:
                ok = self.parse_request()  # reads the headers from `head`
            finally:
                self.rfile = sock_file
            if not ok:
                self.close_connection = True
                return
            if len(self.requestline.split()) != 3:  # HTTP/0.9 or worse
                self.close_connection = True
                return self._reject(400, "bad request line")
            self.connection.settimeout(cfg.client_timeout_s)
            self.handle_request()
            self.wfile.flush()
            if self._unread_body:
                self._linger()
        except _HeadTooLarge:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._reject(431, "request header too large")
                self._linger()
        except OSError:  # socket.timeout included: a slow or vanished client
            self.close_connection = True

    def _read_line(self, limit: int, deadline: float) -> bytes:
        """readline(limit) under `deadline` for the whole line: the socket timeout alone
        restarts at every byte, so a client sending one a second would never time out."""
        line = b""
        while len(line) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request head not received in time")
            self.connection.settimeout(left)
            data = self.rfile.peek(1)[: limit - len(line)]  # at most one recv
            if not data:
                break
            end = data.find(b"\n")
            line += self.rfile.read(len(data) if end < 0 else end + 1)  # buffered: no recv
            if end >= 0:
                break
        return line

    def _linger(self) -> None:
        """Refused with the body unread: drain a little so that close() does not reset
        the connection before the client has read our answer (a lingering close)."""
        self.close_connection = True
        deadline, drained = time.monotonic() + 2.0, 0
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            while (
                time.monotonic() < deadline and drained < 2 * self.server.guard.cfg.max_body_bytes
            ):
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.connection.recv(65536)
                if not data:
                    break
                drained += len(data)

    def handle_request(self) -> None:
        guard = self.server.guard
        path, _, query = self.path.partition("?")
        if self.command not in ALLOWED_METHODS:
            self.close_connection = True
            return self._reject(405, "method not allowed")
        try:
            self._unread_body = self._content_length() > 0 or "Transfer-Encoding" in self.headers
        except ValueError:
            self.close_connection = True
            return self._reject(400, "invalid Content-Length")
        if self.command == "GET" and path == "/health":
            return self._reply(200, guard.health())
        if not self._authorized():
            return self._reject(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})
        if self.command == "GET" and path == "/metrics":
            self._reply(200, guard.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.command == "GET" and path == "/deployctl/status":
            self._reply(200, guard.status())
        elif self.command == "GET" and path == "/deployctl/logs":
            tail = parse_qs(query).get("tail", ["100"])[0]
            if not tail.isdigit():
                return self._reject(400, "tail must be a number of lines")
            text = "".join(line + "\n" for line in guard.log.tail(max(1, min(int(tail), 5000))))
            self._reply(200, text.encode(), "text/plain; charset=utf-8")
        elif _forwardable(path):
            started = time.monotonic()
            status = self._forward(path, query)
            took = time.monotonic() - started
            guard.log.write("access", f"{self.command} {path[:200]} {status} {took:.2f}s")
        else:
            self._reject(404, "not found")

    def _authorized(self) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        given = token.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given, self.server.guard.cfg.key.encode("utf-8")
        )

    def _content_length(self) -> int:
        values = set(self.headers.get_all("Content-Length") or [])
        if len(values) > 1:
            raise ValueError("conflicting Content-Length headers")
        length = int(values.pop()) if values else 0
        if length < 0:
            raise ValueError("negative Content-Length")
        return length

    def _reply(self, status: int, payload: object, ctype: str = "application/json",
               headers: dict | None = None) -> None:  # fmt: skip
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection or self._unread_body:  # we will not read what is left
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _reject(self, status: int, message: str, headers: dict | None = None) -> None:
        self.server.guard.counters.reject()
        self._reply(status, {"error": {"message": message, "code": status}}, headers=headers)

    def log_message(self, format: str, *args: object) -> None:  # no stderr access log
        pass

    # -- the /v1 pass-through ---------------------------------------------------------
    def _forward(self, path: str, query: str) -> int:
        cfg, counters = self.server.guard.cfg, self.server.guard.counters
        if "Transfer-Encoding" in self.headers:
            self._reject(411, "send the request body with a Content-Length")
            return 411
        length = self._content_length()
        if length > cfg.max_body_bytes:
            self._reject(413, f"request body over {cfg.max_body_bytes} bytes")
            return 413
        body = self._read_body(length)
        if len(body) < length:
            self.close_connection = True
            return 400
        self._unread_body = False
        counted = (
            self.command == "POST" and path in INFERENCE_PATHS and PROBE_HEADER not in self.headers
        )
        sent, injected = _inject_usage(body) if path in STREAMABLE_PATHS else (body, False)
        target = path + ("?" + query if query else "")
        usage, answered = Usage(), False
        if counted:
            counters.begin()
        try:
            resp, conn = self._upstream(target, sent)
            if resp is not None and injected and resp.status in (400, 422):
                conn.close()  # this engine refuses stream_options: send the original
                (resp, conn), injected = self._upstream(target, body), False
            if resp is None:
                self._reply(502, {"error": {"message": "engine unavailable", "code": 502}})
                return 502
            answered = True
            try:
                self._relay(resp, usage, strip_usage=injected)
            finally:
                conn.close()
            return resp.status
        finally:
            if counted:
                counters.end(answered, usage.prompt, usage.completion_tokens)

    def _read_body(self, length: int) -> bytes:
        """The request body under one deadline for all of it, as the head has: client
        timeout plus a second per 256 KiB. A client trickling a byte at a time would
        otherwise hold a connection slot for as long as it likes (the socket timeout
        alone restarts at every byte). Short when the client stopped or ran out of time."""
        timeout_s = self.server.guard.cfg.client_timeout_s
        deadline = time.monotonic() + timeout_s + length / (256 * 1024)
        chunks, got = [], 0
        while got < length:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.connection.settimeout(min(left, timeout_s))
            chunk = self.rfile.read1(min(65536, length - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        self.connection.settimeout(timeout_s)
        return b"".join(chunks)

    def _upstream(self, target: str, body: bytes) -> tuple:
        cfg = self.server.guard.cfg
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in REQUEST_HEADERS_DROPPED
        }
        headers.update({"Host": f"127.0.0.1:{cfg.engine_port}", "Accept-Encoding": "identity"})
        timeout = cfg.upstream_timeout_s
        conn = http.client.HTTPConnection("127.0.0.1", cfg.engine_port, timeout=timeout)
        try:
            has_body = bool(body) or self.command in ("POST", "PUT", "PATCH")
            conn.request(self.command, target, body=body if has_body else None, headers=headers)
            return conn.getresponse(), conn
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self.server.guard.log.write("guard", f"engine request failed: {type(exc).__name__}")
            return None, None

    def _relay(self, resp: http.client.HTTPResponse, usage: Usage, strip_usage: bool) -> None:
        """Send the engine's answer on as it arrives, reading `usage` on the way."""
        sse = "text/event-stream" in (resp.getheader("Content-Type") or "")
        length = resp.getheader("Content-Length") or ""
        no_body = resp.status in (204, 304)
        unsized = not no_body and (sse or not length.isdigit())
        chunked = unsized and self.request_version != "HTTP/1.0"
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in RESPONSE_HEADERS_DROPPED:
                self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif unsized:  # an HTTP/1.0 client: the end of the body is the end of the connection
            self.send_header("Connection", "close")
        elif not no_body:
            self.send_header("Content-Length", length)
        self.end_headers()
        keep: bytearray | None = bytearray()
        pending = b""
        try:
            while not no_body:
                piece = resp.read1(65536)
                if not piece:
                    break
                if sse:
                    piece, pending = _sse_events(pending + piece, usage, strip_usage)
                elif keep is not None:
                    keep += piece
                    keep = keep if len(keep) <= USAGE_PARSE_LIMIT else None
                self._send(piece, chunked)
            self._send(pending, chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException):  # client or engine went away mid-answer
            self.close_connection = True
            return
        if keep:
            with contextlib.suppress(ValueError, AttributeError):
                usage.take(json.loads(bytes(keep)).get("usage"))

    def _send(self, data: bytes, chunked: bool) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)


class GuardServer(ThreadingHTTPServer):
    """Threaded server with a cap on open connections (503 beyond it)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.slots = threading.BoundedSemaphore(guard.cfg.max_connections)
        self.address_family = socket.AF_INET6 if ":" in guard.cfg.host else socket.AF_INET
        super().__init__((guard.cfg.host, guard.cfg.port), ProxyHandler)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self.slots.acquire(blocking=False):
            self.guard.counters.reject()
            with contextlib.suppress(OSError):
                request.settimeout(0.2)
                request.sendall(BUSY)
                request.shutdown(socket.SHUT_WR)
                request.recv(65536)  # let the request arrive, so close() does not reset
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            self.guard.log.write("guard", f"request failed: {type(exc).__name__}: {exc}")


class Reaper:
    """Decides when the instance must go: idle, ttl, engine dead or never ready."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def run(self) -> None:
        g = self.guard
        while not g.stop_event.is_set():
            reason = self.check(time.monotonic())
            if reason:
                g.request_stop(reason, teardown=True)
                return
            g.stop_event.wait(g.cfg.poll_s)

    def check(self, now: float) -> str | None:
        cfg, engine, counters = self.guard.cfg, self.guard.engine, self.guard.counters
        engine.update(now, busy=counters.in_flight > 0)
        if engine.ever_ready:
            counters.mark_ready()
        age, grace = now - counters.started, _num(cfg.engine_grace_s)
        if cfg.ttl_s and age >= cfg.ttl_s:
            return f"ttl reached (age {age:.1f}s >= ttl {_num(cfg.ttl_s)}s)"
        if engine.exited_at is not None and now - engine.exited_at >= cfg.engine_grace_s:
            return f"engine exited and did not come back within {grace}s"
        if not engine.ever_ready and engine.exited_at is None and age >= cfg.engine_start_s:
            return f"engine not ready within {_num(cfg.engine_start_s)}s"
        if engine.down_since is not None and now - engine.down_since >= cfg.engine_grace_s:
            return f"engine unhealthy for more than {grace}s"
        idle = counters.idle_s(now)
        if cfg.keep_alive_s and counters.ready_at is not None and idle >= cfg.keep_alive_s:
            return f"idle for {idle:.1f}s (keep-alive {_num(cfg.keep_alive_s)}s)"
        return None


# -- teardown: the instance destroys itself with its own scoped credential ---------------
def _http(method: str, url: str, headers: dict, body: bytes | None = None) -> tuple[int, bytes]:
    headers = dict(headers, **{"User-Agent": "deployctl-guard/1", "Accept": "application/json"})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _json_field(body: bytes, name: str) -> object:
    with contextlib.suppress(ValueError, AttributeError):
        return json.loads(body or b"{}").get(name)
    return None


def _vast_destroy(env: dict) -> tuple[bool, str]:
    base = (env.get("VAST_URL") or "https://console.vast.ai").rstrip("/")
    url = f"{base}/api/v0/instances/{quote(env['CONTAINER_ID'], safe='')}/"
    status, body = _http("DELETE", url, {"Authorization": "Bearer " + env["CONTAINER_API_KEY"]})
    detail = f"HTTP {status} {body[:200].decode('utf-8', 'replace')}"
    if status == 404:
        return True, "already gone: " + detail
    return 200 <= status < 300 and _json_field(body, "success") is not False, detail


def _runpod_terminate(env: dict) -> tuple[bool, str]:
    # Same meaning as for runpod-python and deployctl's adapter: the API's base URL.
    base = (env.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io").rstrip("/")
    url = base if base.endswith("/graphql") else base + "/graphql"
    payload = {"query": RUNPOD_TERMINATE, "variables": {"input": {"podId": env["RUNPOD_POD_ID"]}}}
    headers = {"Authorization": "Bearer " + env["RUNPOD_API_KEY"]}
    headers["Content-Type"] = "application/json"
    status, body = _http("POST", url, headers, json.dumps(payload).encode())
    detail = f"HTTP {status} {body[:200].decode('utf-8', 'replace')}"
    errors = _json_field(body, "errors")
    if errors and "not found" in json.dumps(errors).lower():
        return True, "already gone: " + detail
    return status == 200 and not errors, detail


TEARDOWN_CALLS = {
    "vast": (("CONTAINER_ID", "CONTAINER_API_KEY"), _vast_destroy),
    "runpod": (("RUNPOD_POD_ID", "RUNPOD_API_KEY"), _runpod_terminate),
}


def _missing_credentials(cfg: Config) -> list[str]:
    needed = TEARDOWN_CALLS[cfg.teardown][0] if cfg.teardown in TEARDOWN_CALLS else ()
    return [name for name in needed if not cfg.env.get(name)]


def destroy_instance(cfg: Config, log: Log, abort: threading.Event | None = None) -> bool:
    """Call the provider (vast, runpod) with retries (`--teardown-attempts`, 0: until it
    succeeds or `abort` is set); local/skypilot/none: nothing to call."""
    if cfg.teardown not in TEARDOWN_CALLS:
        log.write("guard", f"teardown {cfg.teardown}: no provider call")
        return True
    missing = _missing_credentials(cfg)
    if missing:
        log.write("guard", f"teardown {cfg.teardown} impossible: {', '.join(missing)} not set")
        return False
    call = TEARDOWN_CALLS[cfg.teardown][1]
    abort = abort or threading.Event()
    attempt = 0
    while True:
        attempt += 1
        try:
            ok, detail = call(cfg.env)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        outcome = "ok" if ok else "failed"
        log.write("guard", f"teardown {cfg.teardown} attempt {attempt}: {outcome} ({detail})")
        if ok:
            return True
        if attempt == cfg.teardown_attempts:
            return False
        delay = min(cfg.teardown_backoff_s * 2 ** min(attempt - 1, 30), cfg.teardown_backoff_max_s)
        if abort.wait(delay):
            log.write("guard", "teardown retries ended by a signal")
            return False


class Guard:
    """Wires it together: server thread, reaper thread, and the main thread that stops."""

    def __init__(self, cfg: Config, log: Log | None = None,
                 engine: EngineProcess | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.log = log or Log(cfg.log_file, [cfg.env.get(name, "") for name in SCRUB_ENV])
        self.counters = Counters()
        self.engine = engine or EngineProcess(cfg, self.log)
        self.stop_event = threading.Event()
        self.stop_lock = threading.Lock()
        self.stop_reason: str | None = None
        self.teardown = False
        self.abort_teardown = threading.Event()  # a signal while the teardown retries

    def request_stop(self, reason: str, teardown: bool) -> None:
        with self.stop_lock:
            if self.stop_reason is None:
                self.stop_reason, self.teardown = reason, teardown
                if teardown:
                    self.counters.teardown_reason = reason
        self.stop_event.set()

    def health(self) -> dict:
        uptime = round(time.monotonic() - self.counters.started, 3)
        return {"status": "ok", "engine": self.engine.state, "uptime_s": uptime}

    def status(self) -> dict:
        snap = self.counters.snapshot()
        snap.update(keep_alive_s=_num(self.cfg.keep_alive_s), ttl_s=_num(self.cfg.ttl_s))
        snap["engine"] = self.engine.state
        return snap

    def metrics(self) -> str:
        s = self.status()
        rows = [
            ("requests_total", "counter", "Inference requests answered", s["requests"]),
            ("prompt_tokens_total", "counter", "Prompt tokens", s["prompt_tokens"]),
            ("completion_tokens_total", "counter", "Completion tokens", s["completion_tokens"]),
            ("rejected_requests_total", "counter", "Requests refused", s["rejected_requests"]),
            ("in_flight_requests", "gauge", "Inference requests being served", s["in_flight"]),
            ("idle_seconds", "gauge", "Seconds without an inference request", s["idle_s"]),
            ("age_seconds", "gauge", "Seconds since the guard started", s["age_s"]),
            ("keep_alive_seconds", "gauge", "Idle limit (0 = none)", s["keep_alive_s"]),
            ("ttl_seconds", "gauge", "Lifetime limit (0 = none)", s["ttl_s"]),
            ("engine_up", "gauge", "1 when the engine is ready", int(s["engine"] == "ready")),
        ]
        out = []
        for name, kind, text, value in rows:
            name = "deployctl_guard_" + name
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"

    def _on_signal(self, num: int, _frame: object) -> None:
        if self.stop_event.is_set():
            self.abort_teardown.set()
        self.request_stop(f"received {signal.Signals(num).name}", teardown=False)

    def run(self) -> int:
        cfg = self.cfg
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        limits = f"keep-alive {_num(cfg.keep_alive_s)}s, ttl {_num(cfg.ttl_s)}s"
        where = f"{cfg.host}:{cfg.port}, engine port {cfg.engine_port}"
        self.log.write("guard", f"starting on {where}, {limits}, teardown {cfg.teardown}")
        if _missing_credentials(cfg):
            missing = ", ".join(_missing_credentials(cfg))
            self.log.write("guard", f"WARNING: teardown {cfg.teardown} needs {missing}")
        self.engine.start()  # before any other thread: preexec_fn forks cleanly
        server: GuardServer | None = None
        try:
            server = GuardServer(self)
        except OSError as exc:  # a guard that cannot serve must not leave the instance up
            self.request_stop(f"cannot listen on {cfg.host}:{cfg.port}: {exc}", teardown=True)
        if server is not None:
            serve = threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True)
            serve.start()
            threading.Thread(target=Reaper(self).run, daemon=True).start()
        while not self.stop_event.wait(0.5):
            pass
        self.log.write(
            "guard", ("teardown: " if self.teardown else "stopping: ") + str(self.stop_reason)
        )
        self.engine.stop()
        ok = destroy_instance(cfg, self.log, self.abort_teardown) if self.teardown else True
        if server is not None:
            server.shutdown()
            server.server_close()
        self.log.write("guard", "exit" if ok else "exit: the instance could NOT be destroyed")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    if argv is None and _EARLY is not None:  # run as a program: the engine is starting
        return Guard(*_EARLY).run()
    return Guard(Config(sys.argv[1:] if argv is None else argv)).run()


if __name__ == "__main__":
    sys.exit(main())
