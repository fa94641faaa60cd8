"""Scheduled sessions with a controllable clock: `now` is passed in, launches are faked.

The starter and ender stand in for the launcher and `down`; everything else (the tables,
claims, lead, repeats, guardrails at add) is the real code on a real state database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from orchestrator import schedule as sched
from orchestrator import schedule_store as store
from orchestrator import state as state_mod
from orchestrator.errors import BadInputError, DeployctlError, GuardrailRefusedError
from orchestrator.models import Offer
from orchestrator.schedule_time import (
    NO_HISTORY_LEAD_S,
    TICK_SLACK_S,
    auto_lead_s,
    next_window,
    parse_at,
    window_ttl_s,
)
from orchestrator.state import State

UTC = timezone.utc
T = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)  # 14:00 in Paris (CET)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


class FakeLaunches:
    """Starter/ender for `tick`: a READY deployment row per start, ended on `end`."""

    def __init__(self, delay_s: float = 0.0, fail: list[Exception] | None = None) -> None:
        self.delay_s = delay_s
        self.fail = list(fail or [])
        self.started: list[tuple[int, datetime, int]] = []  # (session, now, ttl)
        self.ended: list[str] = []
        self._lock = threading.Lock()

    def start(self, state, schedule, session, now):
        if self.fail:
            raise self.fail.pop(0)
        time.sleep(self.delay_s)
        ttl = window_ttl_s(schedule, session, now)
        dep = state.new_deployment(schedule.task_name, "{}", ttl, ttl)
        dep = state.update_deployment(dep.id, status="ready", ready_at=now,
                                      endpoint_url="http://127.0.0.1:9")
        with self._lock:
            self.started.append((session.id, now, ttl))
        return dep

    def end(self, state, dep, reason):
        state.mark_ended(dep.id, reason)
        self.ended.append(dep.id)


@pytest.fixture
def state(tmp_path):
    with State.open(tmp_path / "state.db") as s:
        yield s


def offer(price: float = 0.5) -> Offer:
    return Offer(provider="vast", offer_id="1", gpu="RTX 4090", gpu_count=1, vram_gib=24,
                 price_per_hour_usd=price)


def book(state, *, at=T, duration="30m", lead="5m", repeat=None, tz="Europe/Paris",
         grace="2m", now=T - timedelta(days=1), price=None) -> sched.Added:
    local = at.astimezone(sched.zone(tz)).strftime("%Y-%m-%d %H:%M")
    return sched.add(state, task="smollm2-135m", at=local, duration=duration, tz=tz, lead=lead,
                     repeat=repeat, grace=grace, now=now,
                     price_probe=lambda spec, names: offer(price) if price else None)


def tick(state, launches: FakeLaunches, now: datetime) -> sched.TickReport:
    return sched.tick(state, now=now, starter=launches.start, ender=launches.end)


def kinds(report: sched.TickReport) -> list[str]:
    return [a.kind for a in report.actions]


def sessions(state) -> list[store.Session]:
    return store.list_sessions(state)


# -- time ----------------------------------------------------------------------------------


def test_wall_clock_in_a_zone_and_the_dst_edges():
    assert parse_at("2026-12-01 14:00", "Europe/Paris") == T
    assert parse_at("2026-07-01 14:00", "Europe/Paris") == datetime(2026, 7, 1, 12, tzinfo=UTC)
    assert parse_at("2026-12-01T14:00+01:00", "UTC") == T  # an explicit offset wins
    with pytest.raises(BadInputError, match="does not exist"):
        parse_at("2026-03-29 02:30", "Europe/Paris")  # the clocks jump 02:00 -> 03:00
    # 02:30 happens twice on 2026-10-25: the first (still summer time, UTC+2)
    assert parse_at("2026-10-25 02:30", "Europe/Paris") == datetime(2026, 10, 25, 0, 30,
                                                                    tzinfo=UTC)
    with pytest.raises(BadInputError, match="--at"):
        parse_at("next tuesday", "UTC")


def test_weekly_repeat_keeps_local_time_across_the_spring_change(state):
    first = parse_at("2026-03-24 14:00", "Europe/Paris")  # CET: 13:00 UTC
    added = book(state, at=first, repeat="0 14 * * 2", now=first - minutes(60))
    nxt = next_window(added.schedule, first, first + minutes(30))
    assert nxt[0] == datetime(2026, 3, 31, 12, 0, tzinfo=UTC)  # CEST: 12:00 UTC = 14:00
    assert nxt[1] - nxt[0] == minutes(30)


def test_daily_repeat_at_a_wall_time_the_autumn_fold_repeats_starts_once(state):
    first = parse_at("2026-10-24 02:30", "Europe/Paris")
    added = book(state, at=first, repeat="30 2 * * *", now=first - minutes(60))
    second = next_window(added.schedule, first, first + minutes(30))[0]
    third = next_window(added.schedule, second, second + minutes(30))[0]
    assert second == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert third == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # the 26th: not 02:30 CET
    # on the 25th, an hour after the first 02:30


def test_occurrences_slept_through_are_skipped(state):
    added = book(state, repeat="0 14 * * *", now=T - minutes(60))
    nxt = next_window(added.schedule, T, T + timedelta(days=3, hours=5))
    assert nxt[0] == T + timedelta(days=4)  # days 1-3 are over; their windows are gone


# -- lead ----------------------------------------------------------------------------------


def _measured(state, task: str, gpu: str, cold_s: float) -> None:
    dep = state.new_deployment(task, "{}", 60, 60)
    state.update_deployment(dep.id, gpu=gpu)
    state.close_bill(dep.id, 1.0, 100, cold_start_s=cold_s)


def test_auto_lead_is_p90_of_measured_cold_starts_per_gpu_else_ten_minutes(state):
    assert auto_lead_s(state, "qwen-14b")[0] == NO_HISTORY_LEAD_S == 600
    for cold in range(100, 1100, 100):  # 100..1000 s on an A100
        _measured(state, "qwen-14b", "A100", cold)
    _measured(state, "qwen-14b", "RTX 4090", 50)
    _measured(state, "other-task", "A100", 5000)
    lead, why = auto_lead_s(state, "qwen-14b", "A100")
    assert lead == 900 + TICK_SLACK_S and "on A100" in why
    assert auto_lead_s(state, "qwen-14b", "RTX 4090")[0] == 50 + TICK_SLACK_S
    assert auto_lead_s(state, "qwen-14b", "H100")[0] == 900 + TICK_SLACK_S  # task-wide: 11 runs


# -- tick ----------------------------------------------------------------------------------


def test_start_after_lead_end_at_window_close_idempotent(state):
    book(state)  # 14:00-14:30 Paris, lead 5 min, grace 2 min
    fake = FakeLaunches()
    early = tick(state, fake, T - minutes(6))
    assert early.actions == [] and early.next_start_at == T - minutes(5)
    report = tick(state, fake, T - minutes(5))
    assert kinds(report) == ["started"]
    ((_, _, ttl),) = fake.started
    assert ttl == (5 + 30 + 2) * 60  # lead + window + grace: the guard ends it on time
    dep = state.get_deployment(report.actions[0].deployment_id)
    assert dep.ttl_s == dep.keep_alive_s == ttl  # no idling out before the end
    for now in (T - minutes(4), T + minutes(10), T + minutes(29)):
        assert tick(state, fake, now).actions == []
    assert kinds(tick(state, fake, T + minutes(30))) == ["ended"]
    assert fake.ended == [dep.id]
    assert tick(state, fake, T + minutes(31)).actions == []  # idempotent
    (s,) = sessions(state)
    assert s.status == "ended" and s.deployment_id == dep.id


def test_late_tick_starts_an_open_window_with_a_shorter_ttl_and_ends_it_on_time(state):
    book(state)
    fake = FakeLaunches()
    report = tick(state, fake, T + minutes(20))  # the machine slept through the lead
    assert kinds(report) == ["started"] and "late" in report.actions[0].detail
    assert fake.started[0][2] == (10 + 2) * 60
    assert kinds(tick(state, fake, T + minutes(45))) == ["ended"]  # late, but still ended


def test_a_window_that_passed_is_missed_not_started(state):
    book(state)
    fake = FakeLaunches()
    report = tick(state, fake, T + minutes(30))
    assert kinds(report) == ["missed"] and fake.started == []
    assert sessions(state)[0].status == "missed"
    assert tick(state, fake, T + minutes(31)).actions == []


def test_repeat_creates_the_next_occurrence_after_end_and_after_miss(state):
    book(state, repeat="0 14 * * *")
    fake = FakeLaunches()
    tick(state, fake, T)
    tick(state, fake, T + minutes(30))
    s1, s2 = sessions(state)
    assert (s1.status, s2.status) == ("ended", "upcoming")
    assert (s2.starts_at, s2.ends_at) == (T + timedelta(days=1), T + timedelta(days=1, minutes=30))
    # asleep for two days: day 2 is missed once, and day 3 comes next
    report = tick(state, fake, T + timedelta(days=2, minutes=40))
    assert kinds(report) == ["missed"]
    assert [x.starts_at for x in sessions(state) if x.status == "upcoming"] == [
        T + timedelta(days=3)]
    assert len(fake.started) == 1


def test_repeat_through_ticks_is_dst_safe(state):
    first = parse_at("2026-03-24 14:00", "Europe/Paris")
    book(state, at=first, repeat="0 14 * * 2", now=first - minutes(60))
    fake = FakeLaunches()
    tick(state, fake, first)
    tick(state, fake, first + minutes(30))
    upcoming = [x for x in sessions(state) if x.status == "upcoming"]
    assert [x.starts_at for x in upcoming] == [datetime(2026, 3, 31, 12, 0, tzinfo=UTC)]


def test_two_ticks_at_once_start_one_deployment(tmp_path):
    path = tmp_path / "state.db"
    with State.open(path) as s:
        book(s)
    fake = FakeLaunches(delay_s=0.3)
    barrier = threading.Barrier(6)
    reports = []

    def one():
        with State.open(path) as mine:  # each tick its own connection, like a process
            barrier.wait()
            reports.append(tick(mine, fake, T))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k for r in reports for k in kinds(r)) == ["started"]
    assert len(fake.started) == 1
    with State.open(path) as s:
        assert len(s.list_deployments()) == 1
        assert sessions(s)[0].status == "running"


def test_two_tick_processes_at_once_claim_one_session(tmp_path):
    """The claim is a conditional UPDATE in BEGIN IMMEDIATE: across processes too."""
    path = tmp_path / "state.db"
    with State.open(path) as s:
        book(s)
    code = (
        "import sys; from datetime import datetime; from orchestrator.state import State;"
        "from orchestrator import schedule_store as st;"
        "s = State.open(sys.argv[1]); sys.stdout.write('|');"
        "sys.stdout.flush(); sys.stdin.read(1);"
        "print(st.transition(s, 1, 'upcoming', 'starting', claimed_at=datetime.now(), "
        "**st.claimer()))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
             for _ in range(4)]
    for p in procs:
        assert p.stdout.read(1) == "|"  # opened and ready
    for p in procs:
        p.stdin.write("x")
        p.stdin.flush()
    results = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert sorted(results) == ["False", "False", "False", "True"]


def test_refused_at_start_is_retried_then_missed(state):
    book(state)
    fake = FakeLaunches(fail=[GuardrailRefusedError("budget: over"),
                              GuardrailRefusedError("budget: over")])
    assert kinds(tick(state, fake, T)) == ["refused"]
    assert sessions(state)[0].status == "upcoming"
    assert kinds(tick(state, fake, T + minutes(1))) == ["refused"]
    report = tick(state, fake, T + minutes(30))
    assert kinds(report) == ["missed"] and "refused" in report.actions[0].detail


def test_failed_launches_are_retried_then_failed_and_followed(state):
    book(state, repeat="0 14 * * *")
    boom = [DeployctlError("no offer became ready") for _ in range(3)]
    fake = FakeLaunches(fail=boom)
    assert kinds(tick(state, fake, T)) == ["retry"]
    assert kinds(tick(state, fake, T + minutes(1))) == ["retry"]
    assert kinds(tick(state, fake, T + minutes(2))) == ["failed"]
    first, nxt = sessions(state)
    assert first.status == "failed" and first.tries == 3 and "no offer" in first.note
    assert nxt.status == "upcoming" and nxt.starts_at == T + timedelta(days=1)


def test_a_tick_that_died_while_starting_is_recovered(state):
    book(state)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    assert store.transition(state, 1, "upcoming", "starting", claimed_at=T,
                            claimed_pid=int(dead), claimed_host=store._HOST, tries=1)
    half_made = state.new_deployment("smollm2-135m", "{}", 60, 60)  # status planning
    store.set_deployment(state, 1, half_made.id)
    fake = FakeLaunches()
    report = tick(state, fake, T + minutes(1))
    assert kinds(report) == ["recovered", "started"]  # given back, then started again
    assert fake.ended == [half_made.id]  # what the dead tick left is ended, not leaked
    # ... and one whose deployment became ready before its tick died is adopted
    book(state, at=T + timedelta(days=2))
    later = T + timedelta(days=2)
    dep = state.new_deployment("smollm2-135m", "{}", 60, 60)
    state.update_deployment(dep.id, status="ready", ready_at=later)
    sid = sessions(state)[-1].id
    store.transition(state, sid, "upcoming", "starting", claimed_at=later,
                     claimed_pid=int(dead), claimed_host=store._HOST)
    store.set_deployment(state, sid, dep.id)
    assert kinds(tick(state, fake, later + minutes(1))) == ["ended", "recovered"]  # 1st, 2nd
    assert sessions(state)[-1].status == "running" and len(fake.started) == 1


def test_a_deployment_that_ended_early_fails_its_session(state):
    book(state)
    fake = FakeLaunches()
    dep_id = tick(state, fake, T).actions[0].deployment_id
    state.mark_ended(dep_id, "instance gone (preempted, or ended by its guard)")
    report = tick(state, fake, T + minutes(5))
    assert kinds(report) == ["failed"] and "preempted" in report.actions[0].detail


# -- add: budget and limits ----------------------------------------------------------------------


def test_add_refuses_a_window_the_budget_cannot_hold(state, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_BUDGET_MONTHLY", "2")
    with pytest.raises(GuardrailRefusedError, match="budget") as info:  # 3h10m at $1/h > $2
        book(state, duration="3h", lead="8m", price=1.0)
    assert info.value.exit_code == 3
    assert store.list_schedules(state) == []  # nothing booked
    added = book(state, duration="1h", lead="8m", price=1.0)
    assert added.projected_cost_usd == pytest.approx(1.0 * 70 / 60)
    # a second 1h10m window in the same month no longer fits with the first
    with pytest.raises(GuardrailRefusedError, match="other bookings"):
        book(state, at=T + timedelta(days=3), duration="1h", lead="8m", price=1.0)


def test_add_refuses_a_repeat_whose_month_the_budget_cannot_hold(state, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_BUDGET_MONTHLY", "5")
    with pytest.raises(GuardrailRefusedError, match="windows this month"):
        book(state, duration="1h", price=1.0, repeat="0 14 * * *")  # 31 windows in December


def test_add_reports_a_clash_with_max_deployments(state, monkeypatch):
    book(state)
    with pytest.raises(GuardrailRefusedError, match="max_deployments"):
        book(state, at=T + minutes(20))
    book(state, at=T + minutes(40))  # after the first one's grace: no clash
    monkeypatch.setenv("DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS", "2")
    book(state, at=T + minutes(20))
    # a live deployment that may still run then: reported as a warning, not refused
    monkeypatch.setenv("DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS", "1")
    with monkeypatch.context() as clock:  # made at T (the booking's `now`), not today
        clock.setattr(state_mod, "_now", lambda: T)
        state.new_deployment("other", "{}", 900, 0)  # no ttl: it may run for ever
    added = book(state, at=T + timedelta(days=5), now=T)
    assert any("clash" in w for w in added.warnings)


def test_add_refuses_a_window_longer_than_max_ttl(state):
    with pytest.raises(GuardrailRefusedError, match="max_ttl"):
        book(state, duration="12h")


def test_add_validates_its_input(state):
    with pytest.raises(BadInputError, match="--repeat"):
        book(state, repeat="every tuesday")
    with pytest.raises(BadInputError, match="--tz"):
        book(state, tz="Europe/Atlantis")
    with pytest.raises(BadInputError, match="ended"):
        book(state, now=T + timedelta(hours=1))
    with pytest.raises(BadInputError, match="--for"):
        book(state, duration="soon")


def test_rm_cancels_upcoming_sessions_and_no_repeat_follows(state):
    added = book(state, repeat="0 14 * * *")
    fake = FakeLaunches()
    tick(state, fake, T)
    deleted, running = store.remove_schedule(state, added.schedule.id, T)
    assert deleted == 0 and [x.status for x in running] == ["running"]
    assert kinds(tick(state, fake, T + minutes(30))) == ["ended"]  # still ends on time
    assert [x.status for x in sessions(state)] == ["ended"]  # and nothing follows


# -- CLI ------------------------------------------------------------------------------------


def test_cli_add_list_tick_rm_json_and_status_rows(tmp_path, monkeypatch, capsys):
    import json

    from orchestrator.cli import main
    from orchestrator.schedule_commands import session_rows

    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "cli-state"))
    code = main(["schedule", "add", "smollm2-135m", "--at", "2099-12-01 14:00", "--for", "3h",
                 "--tz", "Europe/Paris", "--lead", "10m", "--provider", "local", "--json"])
    added = json.loads(capsys.readouterr().out)
    assert code == 0 and added["session"]["starts_at"] == "2099-12-01T13:00:00+00:00"
    assert added["session"]["starts_local"] == "2099-12-01 14:00 CET"
    assert main(["schedule", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["schedules"]
    assert listed["sessions"][0]["status"] == "upcoming" and listed["lead_s"] == 600
    with State.open() as s:
        assert [r["status"] for r in session_rows(s)] == ["upcoming"]
    assert main(["status", "--json"]) == 0  # upcoming sessions are part of `status`
    assert [r["starts_local"] for r in json.loads(capsys.readouterr().out)["sessions"]] == [
        "2099-12-01 14:00 CET"]
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "scheduled sessions" in text and "upcoming" in text
    # a tick after the window: missed (no launch), reported in JSON, exit 0
    assert main(["schedule", "tick", "--now", "2099-12-01T17:00:00+00:00", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [a["kind"] for a in report["actions"]] == ["missed"]
    assert main(["schedule", "rm", listed["id"][:4]]) == 0
    assert main(["schedule", "rm", "nope"]) == 2
    assert main(["schedule", "export"]) == 2


@pytest.mark.parametrize("kind", ["cron", "systemd", "github-actions"])
def test_export_snippets(tmp_path, monkeypatch, capsys, kind):
    from orchestrator.cli import main

    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "cli-state"))
    assert main(["schedule", "add", "smollm2-135m", "--at", "2099-01-05 09:00", "--for", "1h",
                 "--tz", "UTC", "--provider", "local", "--repeat", "0 9 * * 1"]) == 0
    capsys.readouterr()
    assert main(["schedule", "export", f"--{kind}"]) == 0
    text = capsys.readouterr().out
    if kind == "cron":
        (line,) = [x for x in text.splitlines() if x and not x.startswith("#") and "=" not in
                   x.split()[0]]
        assert line.startswith("* * * * * ") and "schedule tick" in line
        assert f"DEPLOYCTL_STATE_DIR={tmp_path / 'cli-state'}" in text
    elif kind == "systemd":
        assert "ExecStart=" in text and "schedule run --interval 30" in text
        assert "KillSignal=SIGTERM" in text and "[Install]" in text
    else:
        doc = yaml.safe_load(text)  # YAML 1.1 reads the key `on` as True; GitHub does not
        assert doc[True]["schedule"] == [{"cron": "*/5 * * * *"}]
        steps = doc["jobs"]["tick"]["steps"]
        seed = next(s for s in steps if s.get("name", "").startswith("Seed"))["run"]
        assert "schedule add smollm2-135m --at '2099-01-05 09:00' --tz UTC" in seed
        assert "--repeat '0 9 * * 1'" in seed
        assert any(s.get("run") == "deployctl schedule tick" for s in steps)

