"""Fault trials against the fake clouds: `deployctl` as a subprocess, killed or starved.

One `Cloud` is a fake Vast or RunPod API (instances really run the guard and a fake
engine, tests/fakes/instances.py) plus an isolated deployctl home (HOME, XDG dirs, state
dir) that the CLI subprocesses use. Every CLI run's output is kept, so the secrets test
can search it with the state database and the instances' logs (`Cloud.artifacts`).

Two kinds of trial, each on a fresh cloud, each returning a `Trial` whose `problems` is
empty when every invariant held:

- `kill_trial`: `deployctl up` is SIGKILLed at a moment chosen by watching the fake
  (seeded): before the rent (at the re-validating offer search, or when the rent request
  arrives, which the fake then refuses or carries out with nobody left to hear the
  answer), just after the rent, while the instance boots, while the model loads. Then
  ONE `deployctl reap`; then: no instance on the fake, no live deployment or instance in
  the journal, no open intent (but the killed launcher's own rent intent, which `reap`
  leaves open: counted apart as `stale_intents`), every instance the fake created was
  destroyed and has a verified terminate in the journal or its deployment ended, with a
  bill closed.
- `fault_trial`: a fraction of all provider API calls fail (5xx, 429, requests held past
  the client's deadline, dropped connections; `FakeApi.fail_randomly`). `deployctl up`
  must succeed, or fail cleanly (exit 1, 3 or 4; one `error:` line; no traceback) with
  nothing left on the fake. A success is brought `down` (faults still on); a last `reap`
  with faults off must find nothing.

After either, no secret of the cloud may appear in anything it left behind (`leaks`).

`bench/fault_trials.py` runs full campaigns and prints the table; tests/faults runs a few
trials of each kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.state import State
from tests.fakes.instances import FakeFleet, FakeInstanceRunner
from tests.fakes.runpod_api import FakeRunPodApi, serve_runpod
from tests.fakes.server import RecordedRequest
from tests.fakes.vast_api import FakeVastApi, serve_vast

__all__ = [
    "BEFORE_RENT_FLAVOURS",
    "KILL_MOMENTS",
    "PROVIDERS",
    "TASK",
    "CliRun",
    "Cloud",
    "Trial",
    "fault_trial",
    "kill_trial",
    "leaks",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
TASK = "qwen2.5-7b"
PROVIDERS = ("vast", "runpod")
KILL_MOMENTS = ("before_rent", "just_after_rent", "during_boot", "during_readiness")
CLEAN_EXIT_CODES = (1, 3, 4)
HTTP_DEADLINE_S = 2.0  # the CLI's provider deadline in fault trials (short_deadline_cli)
BOOT_DELAY_S = 2.0  # loading -> running, in the during_boot trials
ENGINE_START_S = 3.0  # the fake engine's model load, in the during_readiness trials
_LIVE = ("planning", "launching", "ready")


@dataclass
class CliRun:
    """One finished deployctl process."""

    argv: list[str]
    code: int | None  # None: killed by the harness
    stdout: str
    stderr: str
    elapsed_s: float
    shows_key: bool = False  # `--show-key`: the key is printed on purpose

    def json(self) -> dict:
        return json.loads(self.stdout) if self.stdout.strip() else {}


@dataclass
class Trial:
    """What one trial did and which invariants failed (`problems`)."""

    provider: str
    kind: str  # kill | faults
    moment: str  # the kill moment, or "20% faults"
    detail: str = ""  # finer: what the fake saw at the kill; how the up ended
    up_exit: int | None = None
    instances_created: int = 0
    destroyed_by: dict[str, int] = field(default_factory=dict)  # account/scoped -> count
    reaped: int = 0
    fault_kinds: dict[str, int] = field(default_factory=dict)  # whole trial: up, down, guards
    stale_intents: int = 0  # rent intents of the killed process that reap left open
    down_retries: int = 0  # fault trials: downs that failed (cleanly) and were run again
    faults_in_up: int = 0  # fault trials: faults and API calls while `up` ran
    calls_in_up: int = 0
    up_s: float = 0.0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    log: str = ""  # the tail of the up's stderr, to explain a problem

    @property
    def ok(self) -> bool:
        return not self.problems


class Cloud:
    """A fake cloud and an isolated deployctl home; a context manager."""

    def __init__(self, provider: str, workdir: Path, *, hf_token: str | None = None) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"no fake cloud for {provider!r}")
        self.provider = provider
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.runner = FakeInstanceRunner(root=workdir / "instances")
        self.runner.root.mkdir(parents=True, exist_ok=True)
        fleet = FakeFleet(self.runner, boot_delay_s=0.3)
        if provider == "vast":
            self.api: FakeVastApi | FakeRunPodApi = FakeVastApi(
                api_key="vast-" + secrets.token_hex(16), fleet=fleet
            )
        else:
            self.api = FakeRunPodApi(api_key="rpa_" + secrets.token_hex(16).upper(), fleet=fleet)
        self.fleet = fleet
        self.hf_token = hf_token
        self.runs: list[CliRun] = []
        self._stack = contextlib.ExitStack()
        self.env: dict[str, str] = {}

    # -- set-up ---------------------------------------------------------------------------
    def __enter__(self) -> Cloud:
        serve = serve_vast if self.provider == "vast" else serve_runpod
        _, url = self._stack.enter_context(serve(self.api))
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
            "XDG_DATA_HOME": str(self.workdir / "data"),
            "XDG_CACHE_HOME": str(self.workdir / "cache"),
            "DEPLOYCTL_STATE_DIR": str(self.state_dir),
            "PYTHONPATH": str(ROOT),
            "FAULT_HTTP_TIMEOUT_S": str(HTTP_DEADLINE_S),
        }
        if self.provider == "vast":
            env.update(VAST_URL=url, VAST_API_KEY=self.api.api_key)
        else:
            env.update(
                RUNPOD_API_BASE_URL=url,
                RUNPOD_API_KEY=self.api.api_key,
                RUNPOD_PROXY_URL=self.api.proxy_url or "",
            )
        if self.hf_token:
            env["HF_TOKEN"] = self.hf_token
        self.env = env
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.intercept = None
        self.api.reset_faults()
        self._stack.close()  # stops the servers and every instance's processes

    # -- the CLI --------------------------------------------------------------------------
    def _argv(self, args: tuple[str, ...], short_deadlines: bool) -> list[str]:
        module = "tests.faults.short_deadline_cli" if short_deadlines else "orchestrator.cli"
        return [sys.executable, "-m", module, *args]

    def cli(self, *args: str, timeout_s: float = 180.0, short_deadlines: bool = False) -> CliRun:
        """Run deployctl to completion; its output is kept for `artifacts`."""
        argv = self._argv(args, short_deadlines)
        started = time.monotonic()
        proc = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        run = CliRun(
            list(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started,
            shows_key="--show-key" in args,
        )  # fmt: skip
        self.runs.append(run)
        return run

    def start(self, *args: str) -> subprocess.Popen:
        """Start deployctl in the background (stdout/stderr to files under workdir)."""
        n = len(self.runs) + len(list(self.workdir.glob("bg-*.out")))
        out = (self.workdir / f"bg-{n}.out").open("wb")
        err = (self.workdir / f"bg-{n}.err").open("wb")
        with out, err:
            proc = subprocess.Popen(
                self._argv(args, False), cwd=ROOT, env=self.env, stdout=out, stderr=err
            )
        proc.deployctl_args = list(args)  # type: ignore[attr-defined]
        proc.deployctl_files = (out.name, err.name)  # type: ignore[attr-defined]
        proc.started = time.monotonic()  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen, timeout_s: float = 120.0) -> CliRun:
        """Wait for a background deployctl and keep its output."""
        code = proc.wait(timeout_s)
        out, err = (Path(p).read_text(errors="replace") for p in proc.deployctl_files)  # type: ignore[attr-defined]
        args = proc.deployctl_args  # type: ignore[attr-defined]
        run = CliRun(
            args, None if code == -signal.SIGKILL else code, out, err,
            time.monotonic() - proc.started,  # type: ignore[attr-defined]
            shows_key="--show-key" in args,
        )  # fmt: skip
        self.runs.append(run)
        return run

    def up_args(self, *extra: str) -> tuple[str, ...]:
        return ("up", TASK, "--provider", self.provider, "--json", "--boot-timeout", "60",
                "--ready-timeout", "60", *extra)  # fmt: skip

    # -- what the fake and the journal say -----------------------------------------------
    @contextlib.contextmanager
    def state(self) -> Iterator[State]:
        with State.open(self.state_dir / "state.db") as state:
            yield state

    def live_ids(self) -> list[str]:
        return sorted(i.instance_id for i in self.fleet.live())

    def created(self) -> dict:
        """Every instance the fake ever created: id -> FakeInstance."""
        with self.fleet.lock:
            return {**self.fleet.destroyed, **self.fleet.instances}

    def is_rent(self, request: RecordedRequest) -> bool:
        if self.provider == "vast":
            return request.method == "PUT" and "/api/v0/asks/" in request.path
        body = request.body
        return b"podFindAndDeployOnDemand" in body or b"podRentInterruptable" in body

    def is_search(self, request: RecordedRequest) -> bool:
        if self.provider == "vast":
            return request.path.rstrip("/") == "/api/v0/bundles"
        return b"gpuTypes" in request.body

    # -- secrets and what may leak them -----------------------------------------------------
    def secrets(self) -> dict[str, str]:
        """Every secret of this cloud: the account key, each instance's scoped provider key
        and endpoint key, and the HF token."""
        found = {"provider key": self.api.api_key}
        if self.hf_token:
            found["HF token"] = self.hf_token
        for iid, inst in self.created().items():
            for name in ("CONTAINER_API_KEY", "RUNPOD_API_KEY"):
                if inst.injected.get(name):
                    found[f"{iid} scoped key"] = inst.injected[name]
            if inst.env.get("DEPLOYCTL_ENDPOINT_KEY"):
                found[f"{iid} endpoint key"] = inst.env["DEPLOYCTL_ENDPOINT_KEY"]
        return found

    def artifacts(self) -> list[tuple[str, bytes]]:
        """What deployctl and the guards left for people to read: every CLI run's stdout and
        stderr (but the output of `--show-key`, which prints the key on purpose), every file
        of the state dir (the database, its WAL; not keys/, the key store itself) and every
        file an instance wrote (guard.log, container.log)."""
        found = []
        for n, run in enumerate(self.runs):
            name = f"run {n}: deployctl {' '.join(run.argv)}"
            if not run.shows_key:
                found.append((f"{name} (stdout)", run.stdout.encode()))
            found.append((f"{name} (stderr)", run.stderr.encode()))
        for base in (self.state_dir, self.runner.root):
            for path in sorted(base.rglob("*")):
                if path.is_file() and "keys" not in path.relative_to(base).parts:
                    found.append((str(path.relative_to(self.workdir)), path.read_bytes()))
        return found


# -- checks ------------------------------------------------------------------------------
def _clean_failure(run: CliRun) -> list[str]:
    """An up that failed must fail like a tool, not like a crash."""
    problems = []
    if run.code not in CLEAN_EXIT_CODES:
        problems.append(f"exit {run.code}, not 1/3/4")
    if "Traceback" in run.stderr or "Traceback" in run.stdout:
        problems.append("a traceback was printed")
    if "internal error" in run.stderr:
        problems.append("internal error: " + run.stderr.split("internal error", 1)[1][:200])
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines, not one")
    return problems


def _journal_problems(cloud: Cloud, trial: Trial) -> list[str]:
    """The journal must agree with the fake once everything is over: nothing live, no
    open intent, every rented instance terminated-and-verified or its deployment ended
    with its bill closed.

    An intent whose writer is dead and whose deployment has ended (the launcher was
    killed between journaling a rent and hearing its answer; `reap` has since destroyed
    whatever the rent made and ended the deployment) is counted in `trial.stale_intents`
    instead: it misleads nobody, but the journal still calls that call in flight."""
    problems = []
    created = cloud.created()
    with cloud.state() as state:
        deployments = {d.id: d for d in state.list_deployments()}
        live = [d.id for d in deployments.values() if d.status.value in _LIVE]
        if live:
            problems.append(f"journal holds {live} as live")
        if state.live_instances():
            problems.append(f"journal holds instances as live: {state.live_instances()}")
        intents = []
        for entry in state.open_intents():
            dep = deployments.get(entry.deployment_id)
            if not entry.owner_alive and dep is not None and dep.ended_at is not None:
                trial.stale_intents += 1
            else:
                intents.append(entry)
        if intents:
            problems.append(
                "open intents: " + ", ".join(f"{e.action} {e.deployment_id}" for e in intents)
            )
        terminated = {
            e.instance_id for e in state.journal() if e.action == "terminate" and e.state == "done"
        }
        for iid, inst in created.items():
            dep_id = inst.label.removeprefix("deployctl-")
            dep = deployments.get(dep_id)
            if dep is None:
                problems.append(f"instance {iid} belongs to no deployment the journal knows")
                continue
            if iid not in terminated and dep.ended_at is None:
                problems.append(f"instance {iid}: no verified terminate, {dep_id} not ended")
            if dep.ended_at is not None and dep.status.value == "ended" and not state.bill(dep_id):
                problems.append(f"{dep_id} ended without a closed bill")
    return problems


def leaks(cloud: Cloud, extra_secrets: dict[str, str] | None = None) -> list[str]:
    """Where any secret of `cloud` shows in what it left for people to read (a 16-char
    prefix counts too: a key cut short in a message is still most of a key)."""
    found = []
    secrets_ = {**cloud.secrets(), **(extra_secrets or {})}
    for where, data in cloud.artifacts():
        for name, secret in secrets_.items():
            if secret.encode() in data or secret[:16].encode() in data:
                found.append(f"{name} in {where}")
    return found


def _fleet_problems(cloud: Cloud, expected_live: set[str]) -> list[str]:
    live = set(cloud.live_ids())
    problems = []
    if live - expected_live:
        problems.append(f"instances left on the fake: {sorted(live - expected_live)}")
    if expected_live - live:
        problems.append(f"instances missing from the fake: {sorted(expected_live - live)}")
    return problems


def _tally(trial: Trial, cloud: Cloud) -> None:
    created = cloud.created()
    trial.instances_created = len(created)
    for inst in created.values():
        if inst.destroyed_by:
            trial.destroyed_by[inst.destroyed_by] = trial.destroyed_by.get(inst.destroyed_by, 0) + 1
    for _, _, kind, _ in cloud.api.injected:
        trial.fault_kinds[kind] = trial.fault_kinds.get(kind, 0) + 1


def _wait(predicate: Callable[[], object], timeout_s: float, poll_s: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `predicate` every 0.1 s; AssertionError naming `what` after `timeout_s`."""
    if not _wait(predicate, timeout_s, 0.1):
        raise AssertionError(f"not within {timeout_s} s: {what}")


# -- kill trials ---------------------------------------------------------------------------
def kill_trial(
    provider: str, moment: str, seed: int, workdir: Path, *, flavour: str | None = None
) -> Trial:
    """SIGKILL `deployctl up` at `moment` (jitter, and the flavour of a before_rent kill
    unless given, drawn from `seed`), then run one `deployctl reap` and check the fake
    and the journal."""
    rng = random.Random(f"{provider}-{moment}-{seed}")
    trial = Trial(provider, "kill", moment)
    started = time.monotonic()
    with Cloud(provider, workdir) as cloud:
        if moment == "during_boot":
            cloud.fleet.boot_delay_s = BOOT_DELAY_S
        if moment == "during_readiness":
            cloud.fleet.engine_args = f"--startup-delay-s {ENGINE_START_S}"
        killed = threading.Event()

        def kill(what: str) -> None:
            if not killed.is_set():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                trial.detail = what
                killed.set()

        if moment == "before_rent":
            _kill_before_rent(cloud, rng, kill, flavour)  # armed before the process starts
        proc = cloud.start(*cloud.up_args())
        if moment != "before_rent":
            _kill_after_rent(cloud, rng, moment, kill)
        if not killed.wait(90):
            kill("never reached the moment: killed late")
            trial.problems.append(f"{moment} was not reached within 90 s")
        cloud.api.intercept = None
        up = cloud.finish(proc)
        trial.up_exit = up.code
        trial.log = up.stderr[-2000:]
        if up.code is not None:
            trial.problems.append(f"up finished (exit {up.code}) before the kill")
        reap = cloud.cli("reap", "--json")
        if reap.code != 0:
            trial.problems.append(f"reap exit {reap.code}: {reap.stderr.strip()[-300:]}")
        else:
            trial.reaped = len(reap.json().get("destroyed", []))
        trial.problems += _fleet_problems(cloud, set())
        trial.problems += _journal_problems(cloud, trial)
        trial.problems += leaks(cloud)
        _tally(trial, cloud)
    trial.elapsed_s = time.monotonic() - started
    return trial


BEFORE_RENT_FLAVOURS = ("at re-validation", "rent refused", "rent done, answer lost")


def _kill_before_rent(
    cloud: Cloud, rng: random.Random, kill: Callable[[str], None], flavour: str | None
) -> None:
    """At the re-validating search (the rent intent is journaled, nothing is rented), or
    when the rent request arrives: the fake then refuses it, or carries it out for a
    client that is already dead (an instance whose id nobody heard)."""
    flavour = flavour or rng.choice(BEFORE_RENT_FLAVOURS)
    if flavour not in BEFORE_RENT_FLAVOURS:
        raise ValueError(f"no before_rent flavour {flavour!r}")
    searches = []

    def intercept(request: RecordedRequest) -> str | None:
        if flavour == "at re-validation" and cloud.is_search(request):
            searches.append(request)
            if len(searches) == 2:  # the first lists offers, the second re-validates one
                time.sleep(rng.uniform(0.0, 0.05))
                kill(flavour)
                return "drop"
        if flavour != "at re-validation" and cloud.is_rent(request):
            kill(flavour)
            return "drop" if flavour == "rent refused" else None
        return None

    cloud.api.intercept = intercept


def _kill_after_rent(
    cloud: Cloud, rng: random.Random, moment: str, kill: Callable[[str], None]
) -> None:
    if not _wait(lambda: cloud.fleet.instances, 60):
        return
    (iid,) = list(cloud.fleet.instances)
    if moment == "just_after_rent":  # the launcher heard the answer and recorded it
        with cloud.state() as state:
            _wait(lambda: any(d.instance_id == iid for d in state.list_deployments()), 30)
        time.sleep(rng.uniform(0.0, 0.02))
        inst = cloud.fleet.get(iid)
        kill(f"instance id journaled, instance {inst.status if inst else 'gone'}")
        return
    if moment == "during_boot":
        time.sleep(rng.uniform(0.05, BOOT_DELAY_S - 0.4))
        inst = cloud.fleet.get(iid)
        kill(f"instance {inst.status if inst else 'gone'}")
        return
    # during_readiness: the instance runs, the guard is up, the model is still loading
    if not _wait(lambda: (i := cloud.fleet.get(iid)) and i.status == "running", 60, 0.01):
        return
    time.sleep(rng.uniform(0.05, ENGINE_START_S - 0.8))
    with cloud.state() as state:
        ready = any(d.status.value == "ready" for d in state.list_deployments())
    kill("deployment already READY" if ready else "model loading")


# -- fault trials ----------------------------------------------------------------------------
def fault_trial(
    provider: str, seed: int, workdir: Path, *, rate: float = 0.2, never_ready: bool = False
) -> Trial:
    """`deployctl up` while `rate` of all API calls fail; then `down`; then a `reap`.

    With `never_ready` the model never loads, so every rent must be destroyed again
    (two attempts, 2 s each) and the up must fail: the failure path under faults. A `down`
    that fails must fail cleanly and leave the deployment live in the journal (it is
    shown, not forgotten); it is run again, as a person would, up to three times."""
    moment = f"{rate:.0%} faults" + (", never ready" if never_ready else "")
    trial = Trial(provider, "faults", moment)
    started = time.monotonic()
    with Cloud(provider, workdir) as cloud:
        cloud.api.fail_randomly(
            rate, seed=f"{provider}-{seed}", timeout_hold_s=HTTP_DEADLINE_S + 0.5
        )
        extra = ("--ready-timeout", "2", "--max-attempts", "2") if never_ready else ()
        if never_ready:
            cloud.fleet.engine_args = "--never-ready"
        up = cloud.cli(*cloud.up_args(*extra), short_deadlines=True, timeout_s=300)
        trial.up_exit = up.code
        trial.log = up.stderr[-2000:]
        trial.up_s = up.elapsed_s
        trial.faults_in_up = len(cloud.api.injected)
        trial.calls_in_up = len(cloud.api.calls)
        if up.code == 0:
            doc = up.json()
            trial.detail = "ready"
            trial.problems += _fleet_problems(cloud, {str(doc.get("instance_id"))})
            trial.problems += _down(cloud, doc["deployment_id"], trial)
        else:
            trial.detail = _first_error(up.stderr)
            trial.problems += _clean_failure(up)
            trial.problems += _fleet_problems(cloud, set())
        _tally(trial, cloud)
        cloud.api.reset_faults()
        reap = cloud.cli("reap", "--json")
        orphans = reap.json().get("orphans", []) if reap.code == 0 else ["?"]
        if reap.code != 0 or orphans:
            trial.problems.append(f"the last reap found {orphans} (exit {reap.code})")
        trial.problems += _fleet_problems(cloud, set())
        trial.problems += _journal_problems(cloud, trial)
        trial.problems += leaks(cloud)
    trial.elapsed_s = time.monotonic() - started
    return trial


def _down(cloud: Cloud, dep_id: str, trial: Trial, tries: int = 3) -> list[str]:
    """`down`, again after a failure (faults still on); a failure must be clean and must
    leave what still exists live in the journal."""
    for n in range(1, tries + 1):
        down = cloud.cli("down", dep_id, "--json", short_deadlines=True)
        if down.code == 0:
            return _fleet_problems(cloud, set())
        trial.down_retries += 1
        problems = [f"down: {p}" for p in _clean_failure(down)]
        with cloud.state() as state:
            held = {iid for _, _, iid in state.live_instances()}
        if forgotten := set(cloud.live_ids()) - held:
            problems.append(f"down failed and the journal forgot {sorted(forgotten)}")
        if problems or n == tries:
            return [*problems, f"down failed {n} times: {_first_error(down.stderr)}"]
    return []


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith(("error:", "internal error:")):
            return re.sub(r"\s+", " ", line)[:160]
    return stderr.strip().splitlines()[-1][:160] if stderr.strip() else ""
