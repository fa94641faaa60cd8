"""A streaming chat-completions stub of known latency, run as its own process (so that it
does not share a GIL with the load generator it checks).

    python tests/unit/_stream_stub.py '{"prompt": [first_delay_s, tokens, "text"], ...}'

prints its port on the first line of stdout, then serves on 127.0.0.1 until killed.
POST /v1/chat/completions streams: the first content chunk after the prompt's delay
(default 50 ms), then one chunk every TOKEN_GAP_S, a finish chunk, a usage chunk, [DONE].
Prompts "fail" (HTTP 500) and "cut" ([DONE] without finish_reason) are errors. A wrong
bearer key gets 401. GET /timings returns, per answered request, the seconds from
reading the request to writing the first chunk and the last one, as the stub saw them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "stub-key-123"
TOKEN_GAP_S = 0.010
ANSWERS: dict[str, list] = {}
TIMINGS: list[dict] = []
SEEN: list[dict] = []
LOCK = threading.Lock()


class Stub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one chunk per write, sent at once

    def log_message(self, *args) -> None:
        pass

    def _chunk(self, obj) -> None:
        data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        with LOCK:
            body = json.dumps({"timings": TIMINGS, "seen": SEEN}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        t0 = time.perf_counter()
        with LOCK:
            SEEN.append(body)
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._empty(401)
        prompt = body["messages"][-1]["content"]
        if prompt == "fail":
            return self._empty(500)
        first_s, tokens, text = ANSWERS.get(prompt, (0.050, 5, "alpha"))
        tokens = min(tokens, body["max_tokens"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        words = text.split() or ["x"]
        first = last = None
        for i in range(tokens):
            # sleep to an absolute schedule: first_s, then TOKEN_GAP_S apart
            due = t0 + first_s + i * TOKEN_GAP_S
            time.sleep(max(due - time.perf_counter(), 0.0))
            piece = ("" if i == 0 else " ") + words[i % len(words)]
            self._chunk({"choices": [{"index": 0, "delta": {"content": piece}}]})
            last = time.perf_counter() - t0
            first = last if first is None else first
        if prompt != "cut":
            self._chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            self._chunk({"choices": [], "usage": {"completion_tokens": tokens}})
        self._chunk(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        with LOCK:
            TIMINGS.append({"prompt": prompt, "first_s": first, "last_s": last})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is no news
            super().handle_error(request, client_address)


def main() -> None:
    ANSWERS.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
    server = Server(("127.0.0.1", 0), Stub)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
