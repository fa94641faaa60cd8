"""The guard's own teardown: the launcher is SIGKILLed and nobody runs `reap`; the guard
destroys its instance at keep-alive or at ttl, with the instance-scoped credential."""

from __future__ import annotations

import signal

import pytest

from tests.faults.harness import Cloud, wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("provider", ["vast", "runpod"])
@pytest.mark.parametrize(
    ("limit", "flags"),
    [("keep-alive", ("--keep-alive", "2s")), ("ttl", ("--ttl", "5s", "--keep-alive", "1h"))],
)
def test_guard_destroys_its_instance_when_the_launcher_died(provider, limit, flags, tmp_path):
    with Cloud(provider, tmp_path) as cloud:
        cloud.fleet.engine_args = "--startup-delay-s 1"  # the launcher dies while it loads
        proc = cloud.start(*cloud.up_args(*flags))
        running = lambda: any(i.status == "running" for i in cloud.fleet.live())  # noqa: E731
        wait_until(lambda: running() or proc.poll() is not None, 60, "an instance running")
        assert running(), f"up ended first: {cloud.finish(proc).stderr}"
        (iid,) = cloud.live_ids()
        proc.send_signal(signal.SIGKILL)
        assert cloud.finish(proc).code is None  # killed before it could report READY

        wait_until(lambda: iid in cloud.fleet.destroyed, 30, f"the guard's {limit} teardown")
        assert cloud.fleet.destroyed[iid].destroyed_by == "scoped"  # its own scoped key
        assert cloud.live_ids() == []
        assert not any(r.argv[0] == "reap" for r in cloud.runs)
        log = (cloud.runner.get(iid).workdir / "guard.log").read_text()
        assert ("idle" if limit == "keep-alive" else "ttl") in log

        # the journal learns it at the next look, and closes the bill
        (row,) = cloud.cli("status", "--all", "--json").json()["deployments"]
        assert row["status"] in ("ended", "failed")
        with cloud.state() as state:
            assert state.list_deployments(live_only=True) == []
            assert state.live_instances() == []


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_guard_teardown_retries_through_provider_api_faults(provider, tmp_path):
    with Cloud(provider, tmp_path) as cloud:
        proc = cloud.start(*cloud.up_args("--ttl", "4s", "--keep-alive", "1h"))
        running = lambda: any(i.status == "running" for i in cloud.fleet.live())  # noqa: E731
        wait_until(lambda: running() or proc.poll() is not None, 60, "an instance running")
        (iid,) = cloud.live_ids()
        proc.send_signal(signal.SIGKILL)
        cloud.finish(proc)
        teardowns = []

        def intercept(request) -> str | None:  # only the guard's own calls fail
            if request.method == "DELETE" or b"podTerminate" in request.body:
                teardowns.append(request)
                if len(teardowns) == 1:
                    return "drop"  # the first: connection closed, no answer
                if len(teardowns) == 2:
                    cloud.api.fail_next(1, status=503)  # the second: a server error
            return None

        cloud.api.intercept = intercept

        wait_until(lambda: iid in cloud.fleet.destroyed, 45, "the guard's ttl teardown")
        assert cloud.fleet.destroyed[iid].destroyed_by == "scoped"
        guard_log = cloud.runner.get(iid).workdir / "guard.log"
        # the fake records the DELETE before the guard has read the answer and logged it
        wait_until(lambda: "attempt 3: ok" in guard_log.read_text(), 10, "the guard's log")
        log = guard_log.read_text()
        assert "attempt 1: failed" in log and "attempt 2: failed" in log


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_status_destroys_what_its_guard_could_not_end_past_ttl_and_backstop(provider, tmp_path):
    """The guard's own teardown never gets through (its scoped key is refused, say): the
    next `status` after ttl + limits.ttl_backstop destroys the instance with the account
    key, and not before."""
    with Cloud(provider, tmp_path) as cloud:
        cloud.env["DEPLOYCTL_LIMITS_TTL_BACKSTOP"] = "4s"
        guard_calls = []

        def intercept(request) -> str | None:  # every teardown call the guard makes fails
            teardown = request.method == "DELETE" or b"podTerminate" in request.body
            if teardown and cloud.api.api_key not in str(request.headers) + str(request.query):
                guard_calls.append(request)
                return "drop"
            return None

        cloud.api.intercept = intercept
        up = cloud.cli(*cloud.up_args("--ttl", "3s", "--keep-alive", "1h"))
        assert up.code == 0, up.stderr
        dep_id, iid = up.json()["deployment_id"], up.json()["instance_id"]
        wait_until(lambda: guard_calls, 30, "the guard's teardown at its ttl")

        early = cloud.cli("status", "--json")  # past the ttl, within the backstop
        assert [r["status"] for r in early.json()["deployments"]] == ["ready"], early.stdout
        assert cloud.live_ids() == [iid]

        wait_until(lambda: cloud.cli("status", "--json").json()["deployments"] == [], 30,
                   "status's backstop")  # fmt: skip
        assert cloud.fleet.destroyed[iid].destroyed_by == "account"
        assert cloud.live_ids() == []
        (row,) = cloud.cli("status", "--all", "--json").json()["deployments"]
        assert row["id"] == dep_id and "its guard did not end it" in row["end_reason"]
        with cloud.state() as state:
            assert state.bill(dep_id) is not None and state.live_instances() == []
