"""The `deployctl` program: through a warm agent when one runs, else in this process.

`deployctl agent start` keeps one process with deployctl already imported (pydantic,
click, the providers: ~0.2 s of every cold start). This entry point, which imports only
the standard library, hands the command to that agent when its socket answers: the
agent forks a child that runs the command with this process's arguments, environment,
working directory and standard streams, while this process forwards signals to it and
exits with its exit code. With no agent (or a stale one, or any trouble reaching it)
the command runs here, exactly as `python -m orchestrator.cli` would.

Wire protocol on the agent's unix socket (owner-only directory, peer uid checked):
  client -> agent: 4-byte big-endian length + JSON request, fds 0, 1, 2 attached
  agent -> client: JSON lines {"pid": N}, then {"exit": CODE}; or {"refused": why}
  client -> agent's child: JSON lines {"signal": N}; closing the socket = SIGKILL
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

SOCKET_NAME = "agent.sock"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; leave room
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NO_AGENT_ENV = "DEPLOYCTL_NO_AGENT"


def socket_path() -> str:
    """Where the agent listens: `<data dir>/agent.sock` (see orchestrator.paths)."""
    from .paths import data_dir  # os and pathlib only

    return os.path.join(str(data_dir()), SOCKET_NAME)


def request_for(argv: list[str]) -> dict:
    """What the agent's child needs to run `argv` as this process would."""
    umask = os.umask(0o077)
    os.umask(umask)
    return {
        "argv": argv,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": umask,
        "executable": sys.executable,
        "encoding": {n: getattr(getattr(sys, n), "encoding", None) or "utf-8"
                     for n in ("stdin", "stdout", "stderr")},
    }  # fmt: skip


def send_request(sock: socket.socket, request: dict) -> None:
    """One length-prefixed JSON message with our open standard streams attached."""
    fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
    request["fds"] = fds  # which of 0, 1, 2 are attached, in order
    body = json.dumps(request).encode()
    socket.send_fds(sock, [len(body).to_bytes(4, "big") + body], fds)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def run_via_agent(argv: list[str], path: str | None = None) -> int | None:
    """Run `argv` in the agent's child; its exit code, or None when no agent took it
    (the caller then runs the command itself: nothing was started)."""
    path = path or socket_path()
    if len(path) > MAX_SOCKET_PATH or not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        send_request(sock, request_for(argv))
        reader = sock.makefile("rb")
        first = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError):
        sock.close()
        return None
    if "pid" not in first:  # refused (stale, another interpreter) or gone: run here
        sock.close()
        return None
    return _follow(sock, reader)


def _follow(sock: socket.socket, reader) -> int:
    """Forward our signals to the child until it reports its exit code."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(json.dumps({"signal": signum}).encode() + b"\n")

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            line = reader.readline()
        except InterruptedError:  # pragma: no cover - PEP 475 retries reads
            continue
        if not line:  # the child died without a word (SIGKILL, OOM)
            sys.stderr.write("deployctl: the agent's child ended without an exit code\n")
            return 1
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "exit" in message:
            return int(message["exit"])


def main() -> None:
    """Console-script entry point."""
    argv = sys.argv[1:]
    if not os.environ.get(NO_AGENT_ENV) and not (argv and argv[0] == "agent"):
        code = run_via_agent(argv)
        if code is not None:
            sys.exit(code)
    from .cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
