"""The warm agent behind `deployctl agent start`: deployctl imported once, a fork per command.

A cold `deployctl` spends ~0.2 s starting Python and importing click, pydantic, the
models and the providers before it does anything; for `up --provider local` that is a
third of the time to a ready endpoint. The agent pays it once. For each command that
entry.py hands it, it forks a child that takes the caller's argv, environment, working
directory, umask and standard streams, runs `cli.main` exactly as the cold path does,
and reports the exit code. The caller forwards SIGINT/SIGTERM/SIGHUP to the child; if
the caller dies, the child is SIGKILLed, as the cold process would have been.

The agent rents nothing and holds no state: it exits after `--idle-s` without a command,
on `deployctl agent stop`, when deployctl's files change (a stale agent refuses work and
exits; the command then runs cold), or when its socket is taken over.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from .entry import MAX_SOCKET_PATH, socket_path

PRELOAD = ("lifecycle_commands", "commands", "money_commands", "schedule_commands",
           "guardrails", "ledger", "abtest")  # fmt: skip
START_WAIT_S = 15.0
DEFAULT_IDLE_S = 1800.0


# -- the agent process ---------------------------------------------------------------------
def serve(path: str, idle_s: float) -> int:
    """Listen on `path` until idle for `idle_s`, stopped, stale or replaced."""
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")  # as cli.main does
    from . import cli

    for name in PRELOAD:
        cli._load(name)
    for name in ("httpx", "rich.console", "rich.table"):  # what commands import on first use
        with contextlib.suppress(ImportError):
            __import__(name)
    _warm_models()
    gc.freeze()  # children share these pages; collections in them skip the agent's objects
    stamp = _stamp()
    listener = _bind(path)
    inode = os.stat(path).st_ino
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # detached: only `agent stop` or SIGTERM
    children: set[int] = set()
    last_used = time.monotonic()
    _log(f"listening on {path} (pid {os.getpid()}, idle exit after {idle_s:g} s)")
    try:
        listener.settimeout(1.0)
        while not stop.is_set():
            _reap(children)
            if children:
                last_used = time.monotonic()
            if time.monotonic() - last_used > idle_s:
                _log("idle: exiting")
                break
            if not _still_ours(path, inode):
                _log("the socket was replaced: exiting")
                break
            try:
                conn, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            with contextlib.ExitStack() as cleanup:
                cleanup.callback(conn.close)
                if not _same_user(conn):
                    continue
                request, fds = _receive(conn)
                for fd in fds:
                    cleanup.callback(os.close, fd)
                if request is None:
                    continue
                control = request.get("control")
                _reap(children)
                if control == "status":
                    _reply(conn, {"pid": os.getpid(), "children": len(children),
                                  "idle_s": round(time.monotonic() - last_used, 1)})  # fmt: skip
                    continue
                if control == "stop":
                    _reply(conn, {"stopped": os.getpid()})
                    _log("stopped by `deployctl agent stop`")
                    break
                if _stamp() != stamp:
                    _reply(conn, {"refused": "deployctl's files changed since the agent started"})
                    _log("stale (deployctl's files changed): exiting")
                    break
                if request.get("executable") != sys.executable:
                    _reply(conn, {"refused": "another Python interpreter"})
                    continue
                last_used = time.monotonic()  # commands count as use; `status` does not
                pid = os.fork()
                if pid == 0:  # the child: tests/e2e/test_agent.py
                    listener.close()
                    _run_child(conn, request, fds)
                children.add(pid)
    finally:
        listener.close()
        if _still_ours(path, inode):
            with contextlib.suppress(OSError):
                os.unlink(path)
    return 0


def _warm_models() -> None:
    """Build the deferred pydantic validators now, not in every child."""
    from pydantic import BaseModel

    from . import config, models

    for module in (models, config):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel:
                with contextlib.suppress(Exception):  # a model that cannot build fails later
                    value.model_rebuild()


def _stamp() -> dict[str, int]:
    """mtimes of deployctl's loaded modules: a change makes the agent stale."""
    out = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and name.split(".")[0] in ("orchestrator", "providers"):
            with contextlib.suppress(OSError):
                out[file] = os.stat(file).st_mtime_ns
    return out


def _bind(path: str) -> socket.socket:
    """Bind the socket owner-only; a path nobody answers on is a dead agent's: replace it."""
    if os.path.exists(path):
        if status(path) is not None:
            raise SystemExit(f"an agent already listens on {path}")
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    return listener


def _still_ours(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _receive(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """One length-prefixed JSON request and the descriptors sent with it."""
    conn.settimeout(5.0)
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            more = conn.recv(65536)
            if not more:
                return None, fds
            data += more
        request = json.loads(data[4 : 4 + int.from_bytes(data[:4], "big")])
    except (OSError, ValueError):
        return None, []
    conn.settimeout(None)
    return (request if isinstance(request, dict) else None), fds


def _reply(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _reap(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                continue
        children.discard(pid)


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError, ValueError):
        print(f"{stamp} [agent] {text}", flush=True)


# -- a child: one command, as the caller would have run it ---------------------------------
def _run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Become the caller's process for one command; never returns. It ends with os._exit
    once its streams are flushed (unwinding would run the agent's own clean-up; deployctl
    registers no atexit handlers)."""
    code = 1
    done = threading.Event()
    try:
        os.setpgid(0, 0)  # out of the agent's group: `agent stop` never reaches a command
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _take_streams(request, fds)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        sys.argv = ["deployctl", *request["argv"]]
        threading.Thread(target=_watch, args=(conn, done), daemon=True).start()
        _reply(conn, {"pid": os.getpid()})
        from .cli import main

        code = main(list(request["argv"]))
    except KeyboardInterrupt:  # a forwarded Ctrl-C before the command took over
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # the caller must hear why, not a traceback
        with contextlib.suppress(Exception):
            sys.stderr.write(f"deployctl: the agent could not run the command "
                             f"({type(exc).__name__}: {exc})\n")  # fmt: skip
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        done.set()
        # Let go of the caller's streams before exiting, so a pipe reader sees EOF now.
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
        code = code if isinstance(code, int) else 1
        _reply(conn, {"exit": code})
        os._exit(code)


def _take_streams(request: dict, fds: list[int]) -> None:
    """The caller's stdin/stdout/stderr become ours (fd 0/1/2 and sys.std*)."""
    sent = dict(zip(request.get("fds") or [], fds, strict=False))
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(sent.get(target, null), target)
    for fd in [null, *fds]:
        with contextlib.suppress(OSError):
            os.close(fd)
    enc = request.get("encoding") or {}
    sys.stdin = sys.__stdin__ = _text(0, "r", enc.get("stdin"), "surrogateescape")
    sys.stdout = sys.__stdout__ = _text(1, "w", enc.get("stdout"), "surrogateescape")
    sys.stderr = sys.__stderr__ = _text(2, "w", enc.get("stderr"), "backslashreplace")


def _text(fd: int, mode: str, encoding: str | None, errors: str) -> io.TextIOWrapper:
    tty = os.isatty(fd)
    raw = open(fd, mode + "b", buffering=0 if mode == "w" and tty else -1, closefd=False)  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding=encoding or "utf-8", errors=errors,
                            line_buffering=tty or fd == 2, write_through=fd == 2)  # fmt: skip


def _watch(conn: socket.socket, done: threading.Event) -> None:
    """Signals the caller forwards; the caller gone before we finished = SIGKILL."""
    reader = conn.makefile("rb")
    for line in iter(reader.readline, b""):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            os.kill(os.getpid(), int(json.loads(line)["signal"]))
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGKILL)


# -- `deployctl agent start|stop|status` --------------------------------------------------
def status(path: str | None = None) -> dict | None:
    """The running agent's {"pid", "children", "idle_s"}, or None."""
    return _control(path or socket_path(), "status")


def _control(path: str, what: str) -> dict | None:
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        sock.connect(path)
        body = json.dumps({"control": what}).encode()
        sock.sendall(len(body).to_bytes(4, "big") + body)
        line = sock.makefile("rb").readline()
        return json.loads(line) if line else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def start(idle_s: float = DEFAULT_IDLE_S) -> dict:
    """Start the agent detached (if none runs) and wait until it answers."""
    from .errors import BadInputError, DeployctlError
    from .paths import data_dir, private_dir

    path = socket_path()
    if len(path) > MAX_SOCKET_PATH:
        raise BadInputError(
            "DEPLOYCTL_STATE_DIR",
            f"the agent's socket {path} would be longer than {MAX_SOCKET_PATH} characters",
            hint="set DEPLOYCTL_STATE_DIR to a shorter directory",
        )
    running = status(path)
    if running is not None:
        return {**running, "started": False}
    log = private_dir(data_dir()) / "agent.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.agent", "--socket", path, "--idle-s", str(idle_s)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, cwd="/",
            env={**os.environ, "PYTHONPATH": _package_root()},
        )  # fmt: skip
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        answer = status(path)
        if answer is not None:
            return {**answer, "started": True}
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        proc.kill()
    raise DeployctlError(f"the agent did not start (see {log})")


def stop() -> int | None:
    """Stop the running agent; its pid, or None when none ran."""
    answer = _control(socket_path(), "stop")
    return int(answer["stopped"]) if answer and "stopped" in answer else None


def _package_root() -> str:
    here = str(Path(__file__).resolve().parents[1])
    extra = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + extra if extra else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.agent")
    parser.add_argument("--socket", default=None)
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    return serve(args.socket or socket_path(), args.idle_s)


if __name__ == "__main__":
    sys.exit(main())
