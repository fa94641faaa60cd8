"""Local instances whose launcher died at the worst moment, and `reap` beside a launch.

Real processes (a `sleep` as the "instance"), the real registry and the real state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrator.lifecycle import reap
from orchestrator.models import ContainerSpec
from orchestrator.state import State
from providers.local import LocalProvider
from providers.local_process import LEADER_FILE, LocalProcess, registry_dir
from tests.procs import pid_alive

SLEEPER = ContainerSpec(image="-", command=["sleep"], model_name="m", bootstrap="exec sleep 60")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))


def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_spawn_records_the_leader_and_terminate_ends_the_group():
    entry = LocalProcess.spawn("deployctl-t1", SLEEPER, {"deployctl": "t1"})
    provider = LocalProvider()
    assert entry.pid > 0 and LocalProcess.load("deployctl-t1").pid == entry.pid
    _wait(lambda: (Path(entry.workdir) / LEADER_FILE).exists())
    assert int((Path(entry.workdir) / LEADER_FILE).read_text()) == entry.pid
    assert provider.get("deployctl-t1") is not None
    provider.terminate("deployctl-t1")
    assert provider.get("deployctl-t1") is None and not pid_alive(entry.pid)


def test_an_entry_whose_launcher_died_before_saving_the_pid_is_still_found_and_ended():
    """The launcher saved the entry (pid 0), started the group, and was SIGKILLed before
    it could save the pid: the leader's own pid file lets `terminate` end it."""
    entry = LocalProcess.spawn("deployctl-t2", SLEEPER, {"deployctl": "t2"})
    _wait(lambda: (Path(entry.workdir) / LEADER_FILE).exists())
    leader = entry.pid
    path = registry_dir() / "deployctl-t2.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pid": 0}))
    provider = LocalProvider()
    (listed,) = [i for i in provider.list_instances() if i.instance_id == "deployctl-t2"]
    assert listed.labels == {"deployctl": "t2"}
    provider.terminate("deployctl-t2")
    _wait(lambda: not pid_alive(leader))
    assert provider.get("deployctl-t2") is None


def test_an_entry_that_never_started_is_gone_after_a_grace_and_never_signals_us(tmp_path):
    never = LocalProcess(
        instance_id="deployctl-t4", pid=0, guard_port=1, engine_port=2,
        workdir=str(tmp_path), labels={}, started_at=datetime.now(timezone.utc).isoformat(),
    )  # fmt: skip
    never._save()
    assert never.alive()  # it may be starting this very moment
    never.kill()  # pid unknown: nothing is signalled (killpg(0) would hit this test)
    never.started_at = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat()
    never._save()
    assert LocalProvider().get("deployctl-t4") is None  # and the entry is forgotten
    assert LocalProcess.load("deployctl-t4") is None


def test_reap_leaves_the_instance_of_a_launch_in_flight_and_takes_it_once_the_launcher_died():
    with State.open() as state:
        dep = state.new_deployment("t", "{}", 60, 600, {"task": "t"})
        jid = state.journal_intent(dep.id, "rent", "local", offer_key="local:cpu")
        entry = LocalProcess.spawn(dep.label, SLEEPER, {"deployctl": dep.id})
        report = reap(state, dry_run=False, provider_names=["local"])
        assert report.orphans == [] and entry.alive()  # its launcher (this test) is alive

        # The launcher dies before journaling the answer: the intent's writer is gone.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        with state._tx() as db:
            db.execute("UPDATE journal SET pid = ? WHERE id = ?", (int(dead.stdout), jid))
        report = reap(state, dry_run=False, provider_names=["local"])
        assert [iid for _, iid in report.destroyed] == [dep.label]
        assert not entry.alive() and state.open_intents() == []
