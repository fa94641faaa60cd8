"""A fake OpenAI-compatible inference engine (stdlib only): what the guard fronts in tests.

    python tests/fakes/engine.py --host 127.0.0.1 --port P --model NAME
        [--startup-delay-s S] [--never-ready] [--token-delay-s D] [--die-after-s S]
        [--unhealthy-after-s S] [--ignore-sigterm]

Endpoints, shaped like vLLM's:

    GET  /health                200 once ready, 503 while starting
    GET  /v1/models             {"object": "list", "data": [{"id": NAME, ...}]}; 503 while starting
    POST /v1/chat/completions   messages, max_tokens (or max_completion_tokens), stream,
    POST /v1/completions        stream_options.include_usage; prompt (string or list)
    POST /v1/embeddings         input (string or list) -> 8-dim vectors
    *    /admin/...             engine-internal paths the guard must never forward:
                                GET /admin/stats (JSON counters, env names, pid),
                                POST /admin/shutdown (only counted)

Text is deterministic: token i of a completion is WORDS[i % len(WORDS)]; a prompt counts one
token per whitespace-separated word plus 4 per chat message. Streams are SSE, one
`data: {...}` chunk per token (chunked transfer encoding, flushed per chunk), then a
chunk with finish_reason, then the usage chunk when `stream_options.include_usage` is
true, then `data: [DONE]`. Every token waits --token-delay-s (streamed or not).
--die-after-s exits the process (code 3) that many seconds after start, like a crash;
--unhealthy-after-s keeps it running but answering 503 on /health and /v1/models (a hung
engine); --ignore-sigterm makes it need a SIGKILL.
Runs under python3.8+ (the fake clouds run it in place of vLLM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india")


class Engine:
    """State shared by the handler threads."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "admin_calls": 0, "authorization_seen": 0}
        self.last_headers: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        age, args = time.monotonic() - self.started, self.args
        sick = args.unhealthy_after_s and age >= args.unhealthy_after_s
        return not args.never_ready and not sick and age >= args.startup_delay_s

    def count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1


def _prompt_tokens(body: dict) -> int:
    if "messages" in body:
        messages = body.get("messages") or []
        texts = [m.get("content") for m in messages if isinstance(m, dict)]
        return sum(len(str(t or "").split()) + 4 for t in texts)
    prompt = body.get("prompt", body.get("input", ""))
    items = prompt if isinstance(prompt, list) else [prompt]
    return sum(max(1, len(str(item).split())) for item in items)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-engine/1"
    engine: Engine

    def log_message(self, format: str, *args: object) -> None:
        if not getattr(self, "path", "").startswith(
            "/health"
        ):  # probes every poll: keep the log readable
            print("fake-engine: " + format % args, flush=True)

    # -- plumbing --------------------------------------------------------------------
    def _json(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"object": "error", "message": message, "code": status})

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _note(self) -> None:
        self.engine.count("requests")
        if "Authorization" in self.headers:
            self.engine.count("authorization_seen")
        with self.engine.lock:
            self.engine.last_headers = {k.lower(): v for k, v in self.headers.items()}

    # -- routes ----------------------------------------------------------------------
    def do_GET(self) -> None:
        self._note()
        path = self.path.split("?")[0]
        if path == "/admin/stats":
            with self.engine.lock:
                stats = dict(self.engine.stats, last_headers=self.engine.last_headers)
            stats.update(pid=os.getpid(), env_names=sorted(os.environ))
            return self._json(200, stats)
        if path.startswith("/admin/"):
            self.engine.count("admin_calls")
            return self._json(200, {"admin": True})
        if path not in ("/health", "/v1/models"):
            return self._error(404, "not found")
        if not self.engine.ready:
            return self._error(503, "model is loading")
        if path == "/health":
            return self._json(200, {"status": "ok"})
        model = {"id": self.engine.args.model, "object": "model", "owned_by": "fake"}
        self._json(200, {"object": "list", "data": [dict(model, created=0)]})

    def do_POST(self) -> None:
        self._note()
        path = self.path.split("?")[0]
        if path.startswith("/admin/"):
            self.engine.count("admin_calls")
            return self._json(200, {"shutdown": "refused: this is a fake"})
        body = self._body()
        if body is None:
            return self._error(400, "body must be a JSON object")
        if path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            return self._error(404, "not found")
        if not self.engine.ready:
            return self._error(503, "model is loading")
        if body.get("model", self.engine.args.model) != self.engine.args.model:
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        if path == "/v1/embeddings":
            return self._embeddings(body)
        self._complete(body, chat=path == "/v1/chat/completions")

    def _embeddings(self, body: dict) -> None:
        items = body.get("input")
        items = items if isinstance(items, list) else [items]
        data = [
            {"object": "embedding", "index": i, "embedding": [((i + k) % 7) / 7 for k in range(8)]}
            for i in range(len(items))
        ]
        tokens = _prompt_tokens(body)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._json(
            200, {"object": "list", "data": data, "model": self.engine.args.model, "usage": usage}
        )

    def _complete(self, body: dict, chat: bool) -> None:
        args = self.engine.args
        n = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if not isinstance(n, int) or n < 1:
            return self._error(400, "max_tokens must be a positive integer")
        prompt = _prompt_tokens(body)
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        kind = "chat.completion" if chat else "text_completion"
        base = {"id": "cmpl-fake", "created": int(time.time()), "model": args.model}
        tokens = [("" if i == 0 else " ") + WORDS[i % len(WORDS)] for i in range(n)]
        if not body.get("stream"):
            time.sleep(args.token_delay_s * n)
            text = "".join(tokens)
            if chat:
                message = {"role": "assistant", "content": text}
                choice = {"index": 0, "message": message, "finish_reason": "length"}
            else:
                choice = {"index": 0, "text": text, "finish_reason": "length"}
            return self._json(200, dict(base, object=kind, choices=[choice], usage=usage))
        options = body.get("stream_options") or {}
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        kind += ".chunk" if chat else ""

        def event(choices: list, **extra: object) -> None:
            obj = dict(base, object=kind, choices=choices, **extra)
            self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

        for i, token in enumerate(tokens):
            time.sleep(args.token_delay_s)
            delta = {"content": token, **({"role": "assistant"} if i == 0 else {})}
            piece = {"delta": delta} if chat else {"text": token}
            event([dict(piece, index=0, finish_reason=None)])
        end = {"delta": {}} if chat else {"text": ""}
        event([dict(end, index=0, finish_reason="length")])
        if options.get("include_usage"):
            event([], usage=usage)
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is no news
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fake OpenAI-compatible engine")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--startup-delay-s", type=float, default=0.0)
    p.add_argument("--never-ready", action="store_true")
    p.add_argument("--token-delay-s", type=float, default=0.0)
    p.add_argument("--die-after-s", type=float, default=0.0)
    p.add_argument("--unhealthy-after-s", type=float, default=0.0)
    p.add_argument("--ignore-sigterm", action="store_true")
    args = p.parse_args(argv)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.die_after_s:

        def die() -> None:
            print("fake-engine: simulated crash", flush=True)
            os._exit(3)

        threading.Timer(args.die_after_s, die).start()
    Handler.engine = Engine(args)
    server = _Server((args.host, args.port), Handler)
    print(f"fake-engine: serving {args.model} on {args.host}:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
