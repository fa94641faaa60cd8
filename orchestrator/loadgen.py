"""The A/B load generator: replay a prompt set against an OpenAI-compatible endpoint and
time every streamed answer.

    prompts = load_prompts("prompts.jsonl")
    order = request_order(len(prompts), requests=40, seed=7)    # the same for both sides
    run = run_load(Target(url, key, model), prompts, order, concurrency=4, max_tokens=128)

Closed loop: `concurrency` worker threads, each with its own connection, take the next
request of `order` as soon as their previous one ends. Every request is a streamed
`/v1/chat/completions` (temperature 0, the rig's seed); per request it records:

- TTFT: from sending to the first chunk that carries content;
- latency: from sending to the end of the stream;
- output tokens: `usage.completion_tokens` when the server reports it, else the number
  of content chunks;
- time per output token: (latency - TTFT) / (output tokens - 1), as vLLM's benchmarks do;
- an error kind (`HTTP 503`, `timeout`, `RemoteProtocolError`, `no finish_reason`, ...)
  for anything but a whole answer (a stream must end with a finish_reason and [DONE]).

Prompt file (JSON Lines, one object per line; blank lines and `#` lines are skipped):

    {"prompt": "What is the capital of France?", "expected": "Paris", "match": "contains"}
    {"messages": [{"role": "user", "content": "2+2="}], "expected": {"regex": "\\b4\\b"}}
    {"id": "long", "prompt": "Write a haiku.", "max_tokens": 64}

`expected` is a string (compared with `match`: exact | contains | regex, default
contains) or an object with one of those keys. exact: equal after stripping surrounding
whitespace; contains: substring, ignoring case; regex: Python `re.search`.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .threads import Worker, join_threads

__all__ = [
    "Expectation",
    "Prompt",
    "RequestResult",
    "RunResult",
    "Target",
    "load_prompts",
    "request_order",
    "run_load",
    "send_one",
]

MATCH_KINDS = ("exact", "contains", "regex")
_PROMPT_KEYS = {"id", "prompt", "messages", "max_tokens", "expected", "match"}


@dataclass(frozen=True)
class Expectation:
    kind: str  # exact | contains | regex
    value: str

    def check(self, text: str) -> bool:
        if self.kind == "exact":
            return text.strip() == self.value.strip()
        if self.kind == "contains":
            return self.value.casefold() in text.casefold()
        return re.search(self.value, text) is not None


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int | None = None
    expected: Expectation | None = None


@dataclass(frozen=True)
class Target:
    base_url: str  # the guard's URL (without /v1)
    key: str | None
    model: str

    def __repr__(self) -> str:  # never show the key
        return f"Target({self.base_url!r}, model={self.model!r})"


@dataclass
class RequestResult:
    prompt_id: str
    ok: bool
    started_s: float  # since the run started
    latency_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    error: str | None = None
    text: str = ""
    passed: bool | None = None  # None: the prompt carries no expected answer

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        return max(self.latency_s - self.ttft_s, 0.0) / (self.output_tokens - 1)

    @property
    def output_tok_s(self) -> float | None:
        if not self.ok or self.latency_s <= 0:
            return None
        return self.output_tokens / self.latency_s


@dataclass
class RunResult:
    results: list[RequestResult] = field(default_factory=list)
    wall_s: float = 0.0  # first request sent -> last answer received
    planned: int = 0
    stopped: str | None = None  # why it stopped before sending every request

    def finish(self) -> None:
        done = list(self.results)
        if done:
            end = max(r.started_s + r.latency_s for r in done)
            self.wall_s = end - min(r.started_s for r in done)

    def snapshot(self) -> RunResult:
        """A frozen copy (what was measured so far), e.g. when a rig is interrupted."""
        copy = RunResult(list(self.results), self.wall_s, self.planned, self.stopped)
        copy.finish()
        return copy


# ---------------------------------------------------------------------------- prompts


def _expectation(obj: dict[str, Any], where: str) -> Expectation | None:
    expected = obj.get("expected")
    if expected is None:
        return None
    if isinstance(expected, str):
        kind = obj.get("match", "contains")
        value = expected
    elif isinstance(expected, dict) and len(expected) == 1:
        ((kind, value),) = expected.items()
    else:
        raise BadInputError(
            "prompts", f"{where}: expected must be a string or one of "
            '{"exact": ...}, {"contains": ...}, {"regex": ...}'
        )  # fmt: skip
    if kind not in MATCH_KINDS or not isinstance(value, str):
        raise BadInputError(
            "prompts", f"{where}: match {kind!r} is not one of {', '.join(MATCH_KINDS)}"
        )
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            raise BadInputError("prompts", f"{where}: bad regex {value!r} ({exc})") from None
    return Expectation(kind, value)


def _prompt(obj: Any, n: int, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise BadInputError("prompts", f"{where} must be a JSON object")
    if unknown := sorted(set(obj) - _PROMPT_KEYS):
        accepted = ", ".join(sorted(_PROMPT_KEYS))
        raise BadInputError("prompts", f"{where}: unknown field {unknown[0]!r}; fields: {accepted}")
    if ("prompt" in obj) == ("messages" in obj):
        raise BadInputError("prompts", f"{where} needs exactly one of prompt or messages")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise BadInputError("prompts", f"{where}: prompt must be a non-empty string")
        messages: tuple[dict[str, str], ...] = ({"role": "user", "content": obj["prompt"]},)
    else:
        raw = obj["messages"]
        ok = isinstance(raw, list) and raw and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in raw
        )  # fmt: skip
        if not ok:
            raise BadInputError(
                "prompts", f"{where}: messages must be a list of {{role, content}} strings"
            )
        messages = tuple({"role": m["role"], "content": m["content"]} for m in raw)
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadInputError("prompts", f"{where}: max_tokens must be a positive integer")
    return Prompt(str(obj.get("id", n)), messages, max_tokens, _expectation(obj, where))


def load_prompts(path: str | Path) -> list[Prompt]:
    """Every prompt of a JSON Lines file; BadInputError naming the line otherwise."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError("prompts", f"cannot read {str(path)!r} ({exc})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path} line {number}"
        try:
            obj = json.loads(line)
        except ValueError:
            raise BadInputError("prompts", f"{where} is not valid JSON") from None
        prompts.append(_prompt(obj, len(prompts) + 1, where))
    if not prompts:
        raise BadInputError("prompts", f"{path} holds no prompt (one JSON object per line)")
    return prompts


def request_order(n_prompts: int, requests: int, seed: int) -> list[int]:
    """Indices of the prompts to send, in a seeded order: shuffled passes over the whole
    set (every prompt once per pass), cut at `requests`."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < requests:
        block = list(range(n_prompts))
        rng.shuffle(block)
        order.extend(block)
    return order[:requests]


# ---------------------------------------------------------------------------- requests


def _client(timeout_s: float, ssl_context):
    import httpx

    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    return httpx.Client(timeout=timeout, verify=ssl_context)


def send_one(
    client, target: Target, prompt: Prompt, *, max_tokens: int, seed: int, t0: float
) -> RequestResult:
    """One streamed chat completion, timed; never raises for a failed request."""
    import httpx

    body = {
        "model": target.model,
        "messages": list(prompt.messages),
        "max_tokens": prompt.max_tokens or max_tokens,
        "temperature": 0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    url = f"{target.base_url.rstrip('/')}/v1/chat/completions"
    try:
        request = client.build_request("POST", url, json=body, headers=headers)
    except httpx.HTTPError as exc:  # an unusable URL
        return RequestResult(prompt.id, False, time.perf_counter() - t0, 0.0,
                             error=type(exc).__name__)  # fmt: skip
    start = time.perf_counter()  # the clock starts as the request leaves
    ttft = None
    chunks = 0
    usage_tokens: int | None = None
    pieces: list[str] = []
    error = None
    done = finished = False
    ended = 0.0
    try:
        with contextlib.closing(client.send(request, stream=True)) as r:
            if r.status_code != 200:
                error = f"HTTP {r.status_code}"
            else:
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done, ended = True, time.perf_counter()
                        continue  # read on to the end of the body: the connection is reused
                    if done:
                        continue
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        error = "bad chunk"
                        break
                    if not isinstance(obj, dict):
                        continue
                    if obj.get("error"):
                        error = "error event"
                        break
                    usage = obj.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        usage_tokens = usage["completion_tokens"]
                    for choice in obj.get("choices") or ():
                        finished = finished or bool(choice.get("finish_reason"))
                        delta = choice.get("delta") or {}
                        content = delta.get("content") or choice.get("text") or ""
                        if content:
                            if ttft is None:
                                ttft = time.perf_counter() - start
                            chunks += 1
                            pieces.append(content)
                if error is None and not done:
                    error = "stream ended early"
                elif error is None and not finished:  # e.g. llama.cpp cutting it short
                    error = "no finish_reason"
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    except (UnicodeDecodeError, AttributeError, TypeError) as exc:  # a malformed answer
        error = type(exc).__name__
    latency = (ended if done else time.perf_counter()) - start
    text = "".join(pieces)
    ok = error is None
    passed = None
    if prompt.expected is not None:
        passed = ok and prompt.expected.check(text)
    return RequestResult(
        prompt_id=prompt.id,
        ok=ok,
        started_s=start - t0,
        latency_s=latency,
        ttft_s=ttft if ok else None,
        output_tokens=(usage_tokens if usage_tokens is not None else chunks) if ok else 0,
        error=error,
        text=text,
        passed=passed,
    )


def run_load(
    target: Target,
    prompts: list[Prompt],
    order: Iterable[int],
    *,
    concurrency: int,
    max_tokens: int,
    seed: int = 0,
    timeout_s: float = 300.0,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    on_result: Callable[[RequestResult], None] | None = None,
    into: RunResult | None = None,
) -> RunResult:
    """Send `order` (prompt indices) with `concurrency` requests in flight; returns every
    result in completion order (appended to `into` as they come, when given). `stop` (an
    event) or `deadline` (time.monotonic) end it early: no new request starts, the ones
    in flight finish."""
    import ssl

    ssl_context = ssl.create_default_context()  # one for all workers: each costs ~10 ms
    queue = list(order)
    run = into if into is not None else RunResult()
    run.planned = len(queue)
    lock = threading.Lock()
    position = 0
    t0 = time.perf_counter()

    def next_index() -> int | None:
        nonlocal position
        with lock:
            if stop is not None and stop.is_set():
                run.stopped = run.stopped or "stopped"
                return None
            if deadline is not None and time.monotonic() >= deadline:
                run.stopped = run.stopped or "the rig's deadline"
                return None
            if position >= len(queue):
                return None
            position += 1
            return queue[position - 1]

    def worker() -> None:
        with _client(timeout_s, ssl_context) as client:
            while (index := next_index()) is not None:
                result = send_one(
                    client, target, prompts[index], max_tokens=max_tokens, seed=seed, t0=t0
                )
                with lock:
                    run.results.append(result)
                if on_result is not None:
                    on_result(result)

    workers = max(1, min(concurrency, len(queue)))
    threads = [Worker(worker, name=f"loadgen-{n}") for n in range(workers)]
    for t in threads:
        t.start()
    join_threads(threads)  # in short slices: signals reach the main thread at once
    run.finish()
    return run
