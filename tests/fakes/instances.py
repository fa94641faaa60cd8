"""Container emulation for fake clouds: an instance's bootstrap really runs, locally.

A fake cloud (fake Vast, fake RunPod) keeps its vendor-shaped payloads; what an instance
*does* lives here, shared by every fake, so the guard's own behaviour (serving, idle
self-destroy through the provider API) is exercised for real.

Two layers:

`FakeInstanceRunner` — processes. One "container" = one process group running
`sh -c <bootstrap>`:

    runner = FakeInstanceRunner()
    proc = runner.start("123", spec.bootstrap, spec.all_env(), spec.image,
                        injected={"CONTAINER_ID": "123", "VAST_URL": url, ...})
    proc.guard_port      # loopback port the guard listens on (the published port)
    proc.engine_port     # loopback port the engine gets
    proc.workdir         # DEPLOYCTL_DIR: guard.py, guard.log; container.log beside it
    runner.alive("123"); runner.environ("123"); runner.log_text("123")
    runner.stop("123")   # SIGTERM the group, SIGKILL after a grace period
    runner.stop_all()    # fixture teardown: nothing may outlive a test
    runner.stray_pids()  # processes still carrying one of this runner's markers

The container's environment is built like `docker run -e`: a minimal base (PATH, HOME,
LANG; never the test process's own credentials), then the client's env, then `injected`
(what the platform adds: CONTAINER_ID, a scoped key, VAST_URL, RUNPOD_POD_ID, ...), then
the runner's own DEPLOYCTL_GUARD_PORT / DEPLOYCTL_ENGINE_PORT / DEPLOYCTL_DIR (the
loopback ports stand in for the container's 8000/8001) and DEPLOYCTL_GUARD_HOST=127.0.0.1.
Every process also carries a private marker variable, so `stop` finds children that left
the process group.

Images are emulated by shims (`tests/fakes/images/<name>/bin`, first on PATH):
`vllm/vllm-openai:*` gets a `python3` that turns `python3 -m
vllm.entrypoints.openai.api_server ... --served-model-name N --port P` into
`tests/fakes/engine.py --host 127.0.0.1 --port P --model N $FAKE_ENGINE_ARGS` and runs
anything else (the guard) on the real interpreter; `ghcr.io/huggingface/
text-generation-inference:*` gets a `text-generation-launcher` doing the same with
`--model-id`/`--port`. Fault flags for the engine (`--never-ready`, `--die-after-s 5`,
...) travel in FAKE_ENGINE_ARGS, which a fake cloud puts in `injected`.

`FakeFleet` — the vendor-neutral instance lifecycle a fake cloud stores: creation,
loading -> running after `boot_delay_s` (the bootstrap starts then), destroy (the
process group is stopped in the background, as a real host would), preemption, a
billing clock (`cost_usd` = price_per_hour_usd x seconds alive / 3600) and the fault
switches shared by all fakes:

    fleet.boot_delay_s = 0.5          # loading -> running
    fleet.vanish_next(2)              # the fake answers the next 2 rents "unavailable"
    fleet.stall_next(1)               # the next instance stays loading, nothing starts
    fleet.engine_args = "--never-ready"   # FAKE_ENGINE_ARGS for instances created later
    fleet.preempt(iid, status="exited", gone=False)   # kill it while serving

Statuses are generic ("loading", "running", "exited", "offline", "stopped"); each fake
maps them to its own vocabulary. Linux is assumed for the marker sweep (/proc); elsewhere
`stop` falls back to the process group alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGES_DIR",
    "FakeFleet",
    "FakeInstance",
    "FakeInstanceRunner",
    "RunningInstance",
    "free_port",
    "shim_dir_for",
]

FAKES_DIR = Path(__file__).resolve().parent
IMAGES_DIR = FAKES_DIR / "images"
ENGINE_SCRIPT = FAKES_DIR / "engine.py"
MARKER_ENV = "FAKE_INSTANCE_MARKER"

# image repository (without tag) -> shim directory under images/
IMAGE_SHIMS: dict[str, str] = {
    "vllm/vllm-openai": "vllm",
    "docker.io/vllm/vllm-openai": "vllm",
    "ghcr.io/huggingface/text-generation-inference": "tgi",
}


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _repository(image: str) -> str:
    """'vllm/vllm-openai:v0.10.2' -> 'vllm/vllm-openai' (a registry port is not a tag)."""
    image = image.split("@", 1)[0]
    head, _, last = image.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def shim_dir_for(image: str) -> list[Path]:
    """PATH entries that make `image` behave like the real one (most specific first)."""
    dirs = []
    shim = IMAGE_SHIMS.get(_repository(image))
    if shim:
        dirs.append(IMAGES_DIR / shim / "bin")
    dirs.append(IMAGES_DIR / "base" / "bin")
    for directory in dirs:  # git keeps the mode, but a copied tree may not
        for path in directory.iterdir():
            if not os.access(path, os.X_OK):
                path.chmod(0o755)
    return dirs


@dataclass
class RunningInstance:
    """One emulated container: its process group, ports and files."""

    instance_id: str
    process: subprocess.Popen
    guard_port: int
    engine_port: int
    workdir: Path
    marker: str
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        """stdout and stderr of the bootstrap (the guard logs to workdir/guard.log)."""
        return self.workdir.parent / "container.log"

    def alive(self) -> bool:
        return self.process.poll() is None


class FakeInstanceRunner:
    """Runs bootstraps as local process groups; see the module docstring."""

    def __init__(self, root: Path | None = None, python: str = sys.executable) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fake-instances-")) if root is None else root
        self.python = python
        self.lock = threading.RLock()
        self.instances: dict[str, RunningInstance] = {}
        self._markers: set[str] = set()

    def start(
        self,
        instance_id: str,
        bootstrap: str,
        env: dict[str, str],
        image: str,
        *,
        injected: dict[str, str] | None = None,
    ) -> RunningInstance:
        """Start `sh -c bootstrap` for `instance_id` (which must not be running)."""
        with self.lock:
            if instance_id in self.instances and self.instances[instance_id].alive():
                raise RuntimeError(f"instance {instance_id} is already running")
            home = self.root / f"i{instance_id}"
            workdir = home / "deployctl"
            workdir.mkdir(parents=True, exist_ok=True)
            guard_port, engine_port = free_port(), free_port()
            while engine_port == guard_port:
                engine_port = free_port()
            marker = uuid.uuid4().hex
            path = [str(d) for d in shim_dir_for(image)] + [os.environ.get("PATH", "/usr/bin:/bin")]
            full_env = {
                "PATH": os.pathsep.join(path),
                "HOME": str(home),
                "LANG": "C.UTF-8",
                "TMPDIR": str(home),
                "FAKE_REAL_PYTHON": self.python,
                "FAKE_ENGINE_SCRIPT": str(ENGINE_SCRIPT),
                **env,
                **(injected or {}),
                "DEPLOYCTL_GUARD_PORT": str(guard_port),
                "DEPLOYCTL_ENGINE_PORT": str(engine_port),
                "DEPLOYCTL_DIR": str(workdir),
                "DEPLOYCTL_GUARD_HOST": "127.0.0.1",  # for a guard that honours it
                MARKER_ENV: marker,
            }
            with (home / "container.log").open("ab") as log:
                process = subprocess.Popen(
                    ["sh", "-c", bootstrap],
                    env=full_env,
                    cwd=home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            running = RunningInstance(
                instance_id, process, guard_port, engine_port, workdir, marker
            )
            self.instances[instance_id] = running
            self._markers.add(marker)
            return running

    def get(self, instance_id: str) -> RunningInstance | None:
        with self.lock:
            return self.instances.get(instance_id)

    def alive(self, instance_id: str) -> bool:
        running = self.get(instance_id)
        return running is not None and running.alive()

    def log_text(self, instance_id: str) -> str:
        """container.log plus guard.log, for assertion messages."""
        running = self.get(instance_id)
        if running is None:
            return ""
        parts = []
        for path in (running.log_path, running.workdir / "guard.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def environ(self, instance_id: str) -> dict[str, str]:
        """The environment the instance's main process runs with now (Linux /proc)."""
        running = self.get(instance_id)
        if running is None:
            return {}
        raw = Path(f"/proc/{running.pid}/environ").read_bytes()
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        return {k.decode(): v.decode(errors="replace") for k, v in pairs}

    def stop(self, instance_id: str, grace_s: float = 3.0) -> bool:
        """Kill the instance's processes (SIGTERM, then SIGKILL). True if any were alive."""
        running = self.get(instance_id)
        if running is None:
            return False
        was_alive = running.alive() or bool(_pids_with_marker(running.marker))
        _signal_group(running, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not running.alive() and not _pids_with_marker(running.marker):
                break
            time.sleep(0.05)
        _signal_group(running, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.process.wait(timeout=5)
        return was_alive

    def stop_all(self, grace_s: float = 2.0) -> None:
        """Stop every instance this runner started; remove its temp dir if it made one."""
        with self.lock:
            ids = list(self.instances)
        threads = [
            threading.Thread(target=self.stop, args=(iid, grace_s), daemon=True) for iid in ids
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=grace_s + 10)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def stray_pids(self) -> list[int]:
        """Processes still alive that one of this runner's instances started."""
        with self.lock:
            markers = set(self._markers)
        return [pid for marker in markers for pid in _pids_with_marker(marker)]

    def __enter__(self) -> FakeInstanceRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _signal_group(running: RunningInstance, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(running.pid, sig)
    for pid in _pids_with_marker(running.marker):  # children that left the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _pids_with_marker(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (empty where /proc is absent)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                status = (entry / "stat").read_text()
                if status.rsplit(")", 1)[-1].split()[0] != "Z":  # zombies are already dead
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


# -- the vendor-neutral lifecycle ----------------------------------------------------------


@dataclass
class FakeInstance:
    """What a fake cloud knows about one instance (vendor fields go in `extra`)."""

    instance_id: str
    label: str
    image: str
    bootstrap: str | None  # None: the fake could not tell what to run (stays exited)
    env: dict[str, str]  # as the client sent it
    injected: dict[str, str]  # what the platform adds inside the container
    price_per_hour_usd: float
    created_at: float
    status: str = "loading"  # loading | running | exited | offline | stopped
    running_at: float | None = None
    ended_at: float | None = None
    message: str = "Pulling image"
    destroyed_by: str | None = None  # "account" | "scoped" once destroyed
    stalled: bool = False
    process: RunningInstance | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cost_usd(self, now: float) -> float:
        end = self.ended_at if self.ended_at is not None else now
        return self.price_per_hour_usd * max(end - self.created_at, 0.0) / 3600


class FakeFleet:
    """Instances of one fake cloud: lifecycle, real processes, faults and billing."""

    def __init__(self, runner: FakeInstanceRunner | None = None, boot_delay_s: float = 0.0):
        self._own_runner = runner is None
        self.runner = runner or FakeInstanceRunner()
        self.boot_delay_s = boot_delay_s
        self.engine_args = ""
        self.clock = time.time
        self.lock = threading.RLock()
        self.instances: dict[str, FakeInstance] = {}  # live ones
        self.destroyed: dict[str, FakeInstance] = {}  # kept for billing and assertions
        self._vanish = 0
        self._stall = 0
        self._timers: list[threading.Timer] = []
        self._stoppers: list[threading.Thread] = []

    # -- fault switches ----------------------------------------------------------------
    def vanish_next(self, count: int = 1) -> None:
        """The next `count` rents find their offer gone (the fake decides the answer)."""
        with self.lock:
            self._vanish += count

    def take_vanish(self) -> bool:
        """Called by a fake at rent: True when this rent must fail as unavailable."""
        with self.lock:
            if self._vanish > 0:
                self._vanish -= 1
                return True
            return False

    def stall_next(self, count: int = 1) -> None:
        """The next `count` instances stay loading forever; nothing is started."""
        with self.lock:
            self._stall += count

    def preempt(self, instance_id: str, *, status: str = "exited", gone: bool = False) -> None:
        """Kill a serving instance as a host would (spot outbid, host lost). It then shows
        `status` until destroyed, or disappears at once with `gone=True`."""
        with self.lock:
            inst = self.instances[instance_id]
            inst.status, inst.message = status, f"{status}: interrupted by the host"
            inst.ended_at = self.clock()
            if gone:
                self.destroyed[instance_id] = self.instances.pop(instance_id)
        self._stop_process(instance_id, wait=True)

    # -- lifecycle -----------------------------------------------------------------------
    def create(
        self,
        instance_id: str,
        *,
        label: str,
        image: str,
        bootstrap: str | None,
        env: dict[str, str],
        injected: dict[str, str],
        price_per_hour_usd: float,
        extra: dict[str, Any] | None = None,
    ) -> FakeInstance:
        with self.lock:
            stalled = self._stall > 0
            self._stall -= int(stalled)
            injected = dict(injected)
            if self.engine_args:
                injected.setdefault("FAKE_ENGINE_ARGS", self.engine_args)
            inst = FakeInstance(
                instance_id, label, image, bootstrap, dict(env), injected,
                price_per_hour_usd, created_at=self.clock(), stalled=stalled, extra=extra or {},
            )  # fmt: skip
            self.instances[instance_id] = inst
            if not stalled:
                timer = threading.Timer(self.boot_delay_s, self._boot, args=(instance_id,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            return inst

    def _boot(self, instance_id: str) -> None:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.status != "loading":
                return
            if inst.bootstrap is None:
                inst.status, inst.message = "exited", "exited: nothing to run"
                inst.ended_at = self.clock()
                return
            try:
                inst.process = self.runner.start(
                    instance_id, inst.bootstrap, inst.env, inst.image, injected=inst.injected
                )
            except OSError as exc:
                inst.status, inst.message = "exited", f"exited: {exc}"
                inst.ended_at = self.clock()
                return
            inst.status, inst.message = "running", f"success, running {inst.image}"
            inst.running_at = self.clock()

    def get(self, instance_id: str) -> FakeInstance | None:
        """The live instance; a running one whose process died shows as exited."""
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is not None and inst.status == "running" and inst.process is not None:
                code = inst.process.process.poll()
                if code is not None:
                    inst.status, inst.message = "exited", f"exited: container exit code {code}"
                    inst.ended_at = self.clock()
            return inst

    def live(self) -> list[FakeInstance]:
        with self.lock:
            return [i for i in (self.get(iid) for iid in list(self.instances)) if i is not None]

    def destroy(self, instance_id: str, *, by: str = "account") -> bool:
        """Destroy (never just stop): False when there was no such live instance. The
        process group is stopped in the background, like a host tearing a container down."""
        with self.lock:
            inst = self.instances.pop(instance_id, None)
            if inst is None:
                return False
            inst.destroyed_by = by
            if inst.ended_at is None:
                inst.ended_at = self.clock()
            self.destroyed[instance_id] = inst
        self._stop_process(instance_id, wait=False)
        return True

    def cost_usd(self, instance_id: str) -> float:
        """Accrued cost of a live or destroyed instance (the billing clock)."""
        with self.lock:
            inst = self.instances.get(instance_id) or self.destroyed[instance_id]
            return inst.cost_usd(self.clock())

    def _stop_process(self, instance_id: str, *, wait: bool) -> None:
        if self.runner.get(instance_id) is None:
            return
        if wait:
            self.runner.stop(instance_id)
            return
        thread = threading.Thread(target=self.runner.stop, args=(instance_id,), daemon=True)
        with self.lock:
            self._stoppers.append(thread)
        thread.start()

    def close(self) -> None:
        """Cancel pending boots and stop every process (fixture teardown)."""
        with self.lock:
            timers, self._timers = self._timers, []
            stoppers, self._stoppers = self._stoppers, []
            for inst in self.instances.values():
                inst.status = "closed"  # a boot timer that fires now starts nothing
        for timer in timers:
            timer.cancel()
        for thread in stoppers:
            thread.join(timeout=10)
        if self._own_runner:
            self.runner.stop_all()
            return
        with self.lock:  # a shared runner: stop only this fleet's instances
            ids = list(self.instances) + list(self.destroyed)
        for iid in ids:
            self.runner.stop(iid, grace_s=1.0)
