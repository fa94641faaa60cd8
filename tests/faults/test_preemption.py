"""Preemption: an instance that disappears (or dies and lingers) while serving.

`deployctl status` must notice, end the deployment, close its bill, destroy what still
bills (an exited instance keeps its disk), and never count it as running again: not in a
later `status`, not in the journal's live instances, not to `reap`, not to `down`.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import Cloud

pytestmark = pytest.mark.slow


def _up(cloud: Cloud) -> dict:
    up = cloud.cli(*cloud.up_args())
    assert up.code == 0, up.stderr
    return up.json()


@pytest.mark.parametrize("provider", ["vast", "runpod"])
@pytest.mark.parametrize("how", ["gone", "exited"])
def test_preempted_instance_is_noticed_billed_and_never_running_again(provider, how, tmp_path):
    with Cloud(provider, tmp_path) as cloud:
        doc = _up(cloud)
        dep_id, iid = doc["deployment_id"], doc["instance_id"]
        time.sleep(1.0)  # serve a little: the bill must cover it
        cloud.fleet.preempt(iid, status="exited", gone=how == "gone")

        status = cloud.cli("status", "--json")
        assert status.code == 0, status.stderr
        (row,) = status.json()["deployments"]
        assert row["status"] == "ended" and "instance gone" in row["end_reason"], row
        assert cloud.live_ids() == []  # an exited instance still bills its disk: destroyed
        if how == "exited":
            assert cloud.fleet.destroyed[iid].destroyed_by == "account"

        with cloud.state() as state:
            bill = state.bill(dep_id)
            assert bill is not None and bill.cost_usd > 0
            assert bill.billed_s >= 1.0
            assert state.live_instances() == []
            assert state.list_deployments(live_only=True) == []

        # never counted as running again, however often anyone looks
        assert cloud.cli("status", "--json").json()["deployments"] == []
        (row,) = cloud.cli("status", "--all", "--json").json()["deployments"]
        assert (row["id"], row["status"]) == (dep_id, "ended")
        reap = cloud.cli("reap", "--json").json()
        assert reap["orphans"] == [] and reap["ended"] == [] and reap["failed"] == []
        down = cloud.cli("down", dep_id, "--json")
        assert down.code == 0 and down.json()["ended"][0]["note"] == "already ended"
        with cloud.state() as state:
            assert state.bill(dep_id) == bill  # closed once, never reopened or billed twice


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_status_says_nothing_wrong_while_the_provider_api_is_down(provider, tmp_path):
    """A provider that cannot answer is not a preemption: the deployment stays ready."""
    with Cloud(provider, tmp_path) as cloud:
        doc = _up(cloud)
        cloud.api.fail_randomly(1.0, seed=1, kinds=("503",))
        status = cloud.cli("status", "--json")
        assert status.code == 0, status.stderr
        assert status.json()["deployments"][0]["status"] == "ready", status.stdout
        cloud.api.reset_faults()
        assert cloud.live_ids() == [doc["instance_id"]]
        assert cloud.cli("down", doc["deployment_id"]).code == 0
        assert cloud.live_ids() == []
