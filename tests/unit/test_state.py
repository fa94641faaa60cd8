"""The state database: schema, permissions, round-trips, journal, ledger, keys, concurrency."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrator.errors import BadInputError, DeployctlError
from orchestrator.models import Attempt, DeploymentStatus
from orchestrator.state import SCHEMA_VERSION, State, data_dir, delete_key, load_key, save_key

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_state_worker.py")


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(path))
    return path


@pytest.fixture
def state(state_dir):
    with State.open() as st:
        yield st


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def new(state: State, task: str = "qwen-14b"):
    return state.new_deployment(
        task, json.dumps({"name": task}), keep_alive_s=900, ttl_s=3600, labels={"team": "a"}
    )


# -- files and schema ---------------------------------------------------------------------


def test_schema_created_on_first_open(state, state_dir):
    assert state.path == state_dir / "state.db"
    assert state.schema_version() == SCHEMA_VERSION >= 1
    db = sqlite3.connect(state.path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"deployments", "attempts", "journal", "events", "ledger"} <= tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    State.open().close()  # reopening migrates nothing and keeps the data


def test_file_and_dir_modes(state, state_dir):
    new(state)
    assert mode(state_dir) == 0o700
    assert mode(state.path) == 0o600
    for suffix in ("-wal", "-shm"):
        side = state.path.with_name(state.path.name + suffix)
        if side.exists():
            assert mode(side) == 0o600


def test_loose_existing_permissions_are_tightened(state_dir):
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    (state_dir / "state.db").touch()
    (state_dir / "state.db").chmod(0o644)
    State.open().close()
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "state.db") == 0o600


def test_data_dir_lookup(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPLOYCTL_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "deployctl"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert data_dir() == Path.home() / ".local" / "share" / "deployctl"
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "explicit"))
    assert data_dir() == tmp_path / "explicit"


def test_explicit_path(tmp_path):
    with State.open(tmp_path / "x" / "other.db") as st:
        assert new(st).status is DeploymentStatus.PLANNING
    assert mode(tmp_path / "x" / "other.db") == 0o600


# -- deployments --------------------------------------------------------------------------


def test_deployment_round_trip(state):
    dep = new(state)
    assert dep.id.startswith("d") and len(dep.id) == 9
    int(dep.id[1:], 16)
    assert dep.status is DeploymentStatus.PLANNING
    assert dep.created_at.tzinfo is not None
    ready_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    updated = state.update_deployment(
        dep.id,
        status=DeploymentStatus.READY,
        provider="vast",
        offer_key="vast:42",
        gpu="RTX 4090",
        gpu_count=2,
        instance_id="123",
        endpoint_url="http://1.2.3.4:8000",
        model_name="qwen",
        price_per_hour_usd=0.45,
        ready_at=ready_at,
        labels={"team": "b"},
    )
    again = state.get_deployment(dep.id)
    assert again == updated
    assert (again.status, again.gpu_count, again.ready_at) == (DeploymentStatus.READY, 2, ready_at)
    assert again.price_per_hour_usd == 0.45
    assert state.labels(dep.id) == {"team": "b"}
    assert json.loads(state.task_json(dep.id)) == {"name": "qwen-14b"}
    with pytest.raises(ValueError, match="unknown fields"):
        state.update_deployment(dep.id, colour="red")


def test_ids_are_unique(state):
    ids = {new(state).id for _ in range(200)}
    assert len(ids) == 200


def test_lookup_by_prefix_and_task_name(state):
    a, b = new(state, "alpha"), new(state, "beta")
    assert state.get_deployment(a.id[:5]).id == a.id or a.id[:5] == b.id[:5]
    assert state.get_deployment("alpha").id == a.id
    assert state.get_deployment("nothing") is None
    assert state.get_deployment("dzzz") is None
    with pytest.raises(BadInputError) as err:
        state.get_deployment("d")
    assert err.value.field == "deployment"
    assert a.id in str(err.value) and b.id in str(err.value)


def test_task_name_picks_the_newest_live_one(state):
    old_live = new(state, "svc")
    ended = new(state, "svc")
    state.mark_ended(ended.id, "down")
    assert state.get_deployment("svc").id == old_live.id
    newer = new(state, "svc")
    assert state.get_deployment("svc").id == newer.id
    for dep in (old_live, newer):
        state.mark_ended(dep.id, "down")
    assert state.get_deployment("svc").id == newer.id  # none live: the newest of all


def test_list_deployments(state):
    a, b = new(state), new(state)
    state.mark_ended(a.id, "idle", ended_at=datetime.now(timezone.utc) - timedelta(days=40))
    assert [d.id for d in state.list_deployments()] == [a.id, b.id]
    assert [d.id for d in state.list_deployments(live_only=True)] == [b.id]
    month = datetime.now(timezone.utc) - timedelta(days=30)
    assert [d.id for d in state.list_deployments(since=month)] == [b.id]


def test_attempts(state):
    dep = new(state)
    started = datetime.now(timezone.utc)
    for n in (1, 2):
        state.add_attempt(
            dep.id,
            Attempt(
                n=n,
                provider="vast",
                offer_key=f"vast:{n}",
                gpu="A100",
                price_per_hour_usd=1.1,
                outcome="launching",
                started_at=started,
            ),
        )
    state.finish_attempt(dep.id, 1, "unavailable", "offer vanished")
    state.finish_attempt(dep.id, 2, "ready", instance_id="i-9")
    attempts = state.get_deployment(dep.id).attempts
    assert [(a.n, a.outcome, a.instance_id) for a in attempts] == [
        (1, "unavailable", None),
        (2, "ready", "i-9"),
    ]
    assert attempts[0].reason == "offer vanished" and attempts[0].ended_at is not None


def test_mark_ended_is_idempotent(state):
    dep = new(state)
    first = datetime(2025, 5, 1, tzinfo=timezone.utc)
    assert state.mark_ended(dep.id, "idle", ended_at=first) is True
    assert state.mark_ended(dep.id, "down") is False
    got = state.get_deployment(dep.id)
    assert (got.status, got.ended_at, got.end_reason) == (DeploymentStatus.ENDED, first, "idle")
    failed = new(state)
    state.mark_ended(failed.id, "no candidate worked", status=DeploymentStatus.FAILED)
    assert state.get_deployment(failed.id).status is DeploymentStatus.FAILED


# -- journal ------------------------------------------------------------------------------


def test_journal_intent_done_and_failed(state):
    dep = new(state)
    rent = state.journal_intent(dep.id, "rent", "vast", offer_key="vast:1")
    assert [e.id for e in state.open_intents()] == [rent]
    assert state.open_intents()[0].owner_alive
    state.journal_done(rent, instance_id="i-1")
    bad = state.journal_intent(dep.id, "rent", "vast", offer_key="vast:2")
    state.journal_failed(bad, "offer no longer available")
    assert state.open_intents() == []
    rows = state.journal(dep.id)
    assert [(r.action, r.state, r.instance_id) for r in rows] == [
        ("rent", "done", "i-1"),
        ("rent", "failed", None),
    ]
    assert rows[1].detail == "offer no longer available"
    with pytest.raises(ValueError):
        state.journal_intent(dep.id, "stop", "vast")


def test_live_instances(state):
    a, b, c = new(state), new(state), new(state)
    for dep, inst in ((a, "i-a"), (b, "i-b"), (c, "i-c")):
        state.update_deployment(dep.id, status=DeploymentStatus.LAUNCHING)
        state.journal_done(state.journal_intent(dep.id, "rent", "vast"), instance_id=inst)
    state.journal_intent(a.id, "rent", "vast")  # in flight: no instance yet
    assert state.live_instances() == [
        (a.id, "vast", "i-a"),
        (b.id, "vast", "i-b"),
        (c.id, "vast", "i-c"),
    ]
    term = state.journal_intent(a.id, "terminate", "vast", instance_id="i-a")
    assert (a.id, "vast", "i-a") in state.live_instances()  # not until it is done
    state.journal_done(term)
    state.mark_ended(b.id, "down")
    failed = state.journal_intent(c.id, "terminate", "vast", instance_id="i-c")
    state.journal_failed(failed, "HTTP 500")
    assert state.live_instances() == [(c.id, "vast", "i-c")]


def test_launch_orphaned_by_a_dead_process_is_not_live(state):
    dep = new(state)
    state.update_deployment(dep.id, status=DeploymentStatus.LAUNCHING)
    script = (
        "import sys; from orchestrator.state import State\n"
        "with State.open() as s:\n"
        "    s.journal_done(s.journal_intent(sys.argv[1], 'rent', 'vast'), 'i-x')\n"
        "    s.journal_intent(sys.argv[1], 'rent', 'vast')\n"
    )
    subprocess.run([sys.executable, "-c", script, dep.id], cwd=ROOT, check=True)
    assert state.live_instances() == []  # the launcher died (SIGKILL): reap's to destroy
    assert [e.owner_alive for e in state.open_intents()] == [False]
    state.update_deployment(dep.id, status=DeploymentStatus.READY)
    assert state.live_instances() == [(dep.id, "vast", "i-x")]  # the guard owns it now


def test_secrets_are_redacted_from_text(state):
    dep = new(state)
    state.add_event(dep.id, "error", "POST failed: Authorization: Bearer abcdefghijkl")
    jid = state.journal_intent(dep.id, "rent", "vast")
    state.journal_failed(jid, "GET /x?api_key=supersecret1 returned 500")
    assert "abcdefghijkl" not in state.events(dep.id)[0].message
    assert "supersecret1" not in state.journal(dep.id)[0].detail


def test_events(state):
    dep = new(state)
    state.add_event(dep.id, "phase", "renting")
    state.add_event(dep.id, "phase", "ready")
    events = state.events(dep.id)
    assert [(e.kind, e.message) for e in events] == [("phase", "renting"), ("phase", "ready")]
    assert events[0].at <= events[1].at
    assert state.events("dnothing0") == []


# -- ledger -------------------------------------------------------------------------------


def test_close_bill_is_idempotent(state):
    dep = new(state)
    assert state.bill(dep.id) is None
    bill = state.close_bill(
        dep.id,
        price_per_hour_usd=0.9,
        billed_s=1800,
        requests=10,
        prompt_tokens=1000,
        completion_tokens=500,
        cold_start_s=95.0,
        idle_s=900.0,
        provider_cost_usd=0.46,
    )
    assert bill.cost_usd == pytest.approx(0.45)
    assert (bill.requests, bill.completion_tokens, bill.provider_cost_usd) == (10, 500, 0.46)
    again = state.close_bill(dep.id, price_per_hour_usd=0.9, billed_s=1800, requests=10)
    assert again == bill
    assert state.get_deployment(dep.id).cost_usd == pytest.approx(0.45)
    assert len(state.bills()) == 1
    assert state.bills(since=datetime.now(timezone.utc) + timedelta(hours=1)) == []


# -- keys ---------------------------------------------------------------------------------


def test_keys_are_stored_apart_and_never_in_the_db(state, state_dir):
    dep = new(state)
    key = "dk_" + "7f3a9c" * 8
    path = save_key(dep.id, key)
    assert path == state_dir / "keys" / dep.id
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert load_key(dep.id) == key
    state.update_deployment(dep.id, status=DeploymentStatus.READY, endpoint_url="http://x")
    state.add_event(dep.id, "ready", "endpoint ready")
    state.close()
    for file in state_dir.glob("state.db*"):
        assert key.encode() not in file.read_bytes()
    save_key(dep.id, "rotated")
    assert load_key(dep.id) == "rotated"
    delete_key(dep.id)
    delete_key(dep.id)
    assert load_key(dep.id) is None
    assert list((state_dir / "keys").iterdir()) == []
    with pytest.raises(BadInputError):
        save_key("../escape", key)


# -- concurrency --------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_processes_at_once(state_dir):
    processes, iterations = 8, 25
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(iterations)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for proc in procs:  # every worker imported: start them together (first open included)
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            assert "locked" not in err and "busy" not in err
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    with State.open() as state:
        deployments = state.list_deployments()
        assert len(deployments) == len({d.id for d in deployments}) == processes * iterations
        assert all(d.status is DeploymentStatus.ENDED for d in deployments)
        assert state.open_intents() == []
        assert state.live_instances() == []
        journal = state.journal()
        assert len(journal) == 2 * processes * iterations
        assert all(e.state == "done" and e.instance_id for e in journal)
        bills = state.bills()
        assert len(bills) == processes * iterations
        assert sum(b.cost_usd for b in bills) == pytest.approx(0.01 * processes * iterations)
    print(
        f"{processes}x{iterations}: slowest worker {max(r['elapsed_s'] for r in results):.2f} s,"
        f" slowest iteration {max(r['slowest_iteration_s'] for r in results):.3f} s"
    )


def test_busy_database_is_one_clear_error(state, monkeypatch):
    import orchestrator.state as state_module

    holder = sqlite3.connect(state.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(state_module, "BUSY_TIMEOUT_S", 0.2)
    try:
        with State.open() as other, pytest.raises(DeployctlError, match="busy"):
            new(other)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert new(state).id
