"""Local "instances": the guard and its engine as a detached process group on this machine.

An instance is a registry file `<data dir>/local/<id>.json` plus a process group started
with `sh -c <bootstrap>` in its own session, so it outlives the command that launched
it (like a rented machine outlives a closed laptop). The guard stops its engine and exits
at keep-alive or ttl; an instance whose process is gone is gone, and its registry entry is
removed the next time anyone looks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.models import ContainerSpec
from orchestrator.paths import data_dir, private_dir

__all__ = ["LocalProcess", "free_port", "registry_dir"]

# Environment passed through from the launching shell; everything else comes from the spec.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME")
LEADER_FILE = "leader.pid"  # in the workdir, written by the group leader itself
START_GRACE_S = 10.0  # an entry without a pid this old never started


def registry_dir() -> Path:
    return private_dir(data_dir() / "local")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalProcess:
    """One registry entry."""

    instance_id: str
    pid: int  # leader of the process group (the shell that execs the guard); 0: unknown
    guard_port: int
    engine_port: int
    workdir: str
    labels: dict[str, str]
    started_at: str

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.guard_port}"

    @property
    def log_file(self) -> Path:
        return Path(self.workdir) / "guard.log"

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def spawn(cls, instance_id: str, spec: ContainerSpec, labels: dict[str, str]) -> LocalProcess:
        workdir = private_dir(registry_dir() / instance_id)
        guard_port, engine_port = free_port(), free_port()
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update(spec.all_env())
        env.update(
            DEPLOYCTL_DIR=str(workdir),
            # Our own interpreter, not whatever python3 PATH finds first (a pyenv shim
            # costs a tenth of a second a start).
            DEPLOYCTL_PYTHON=sys.executable,
            DEPLOYCTL_GUARD_HOST="127.0.0.1",
            DEPLOYCTL_GUARD_PORT=str(guard_port),
            DEPLOYCTL_ENGINE_PORT=str(engine_port),
        )
        entry = cls(
            instance_id=instance_id,
            pid=0,  # not started yet: written first, so that a launcher killed between
            guard_port=guard_port,  # the start and the save still leaves a record
            engine_port=engine_port,
            workdir=str(workdir),
            labels=dict(labels),
            started_at=datetime.now(timezone.utc).isoformat(),
        )
        entry._save()
        console = open(workdir / "console.log", "ab")  # noqa: SIM115 (handed to the child)
        try:
            proc = subprocess.Popen(
                # The leader records its own pid, for an entry whose launcher died before
                # it could (the shell then execs the guard under that same pid).
                ["sh", "-c", f"echo $$ > {LEADER_FILE}\n{spec.bootstrap}"],
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            entry.forget()
            raise
        finally:
            console.close()
        entry.pid = proc.pid
        entry._save()
        return entry

    @classmethod
    def load(cls, instance_id: str) -> LocalProcess | None:
        path = registry_dir() / f"{instance_id}.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def all(cls) -> list[LocalProcess]:
        entries = []
        for path in sorted(registry_dir().glob("*.json")):
            entry = cls.load(path.stem)
            if entry is not None:
                entries.append(entry)
        return entries

    def _save(self) -> None:
        path = registry_dir() / f"{self.instance_id}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh)

    def forget(self) -> None:
        (registry_dir() / f"{self.instance_id}.json").unlink(missing_ok=True)

    def leader(self) -> int | None:
        """The group leader's pid: from the entry, else from the file the leader wrote
        (its launcher died before saving it); None if it never started."""
        if self.pid > 0:
            return self.pid
        with contextlib.suppress(OSError, ValueError):
            pid = int((Path(self.workdir) / LEADER_FILE).read_text().strip())
            if pid > 0:
                return pid
        return None

    def alive(self) -> bool:
        """True while any process of the group runs (zombies do not count)."""
        pid = self.leader()
        if pid is None:  # maybe starting this very moment; after that, it never started
            started = datetime.fromisoformat(self.started_at)
            return (datetime.now(timezone.utc) - started).total_seconds() < START_GRACE_S
        _reap_if_child(pid)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _group_has_live_member(pid)

    def kill(self, grace_s: float = 10.0) -> None:
        """SIGTERM the group (the guard stops its engine), then SIGKILL what is left."""
        pid = self.leader()
        if pid is None:  # never started (killpg(0) would signal our own group)
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not self.alive():
                    return
                time.sleep(0.1)


def _reap_if_child(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_has_live_member(pgid: int) -> bool:
    """Whether a non-zombie process with this process group exists (Linux /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may contain spaces, so split after ')'
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
