"""Money guardrails end to end on the fake Vast cloud (real CLI, guard and billing clock):
the budget override is recorded, the ledger matches the cloud's bill, failed attempts are
billed, and concurrent `up`s cannot both pass `limits.max_deployments`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import config_path
from orchestrator.state import State
from tests.fakes import DEFAULT_VAST_KEY, serve_vast

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TASK = "qwen2.5-7b"


@pytest.fixture
def vast(monkeypatch, tmp_path):
    with serve_vast() as (api, url):
        api.fleet.boot_delay_s = 0.3
        monkeypatch.setenv("VAST_URL", url)
        monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
        monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
        yield api
        assert [i.instance_id for i in api.fleet.live()] == []
    assert api.fleet.runner.stray_pids() == []


def configure(**sections) -> None:
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text(yaml.safe_dump(sections))


def cli_json(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {}), captured.err


def test_override_is_recorded_and_the_ledger_matches_the_clouds_bill(vast, capsys):
    configure(budget={"monthly": 0.01})
    code, _, err = cli_json(capsys, "up", TASK, "--provider", "vast")
    assert code == 3 and vast.fleet.instances == {}
    code, up, err = cli_json(capsys, "up", TASK, "--provider", "vast", "--override-budget",
                             "--show-key", "--ready-timeout", "60")
    assert code == 0, err
    assert "warning: --override-budget: launching above the monthly budget" in err
    with State.open() as state:
        events = state.budget_events(deployment_id=up["deployment_id"])
    assert [e.kind for e in events] == ["projection", "override"]
    assert events[1].budget_usd == pytest.approx(0.01) and events[1].projected_usd > 0.01

    for _ in range(3):
        r = httpx.post(f"{up['endpoint_url']}/chat/completions",
                       headers={"Authorization": f"Bearer {up['key']}"},
                       json={"model": TASK, "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 8}, timeout=30)
        assert r.status_code == 200
    code, _, _ = cli_json(capsys, "down", up["deployment_id"])
    assert code == 0
    iid = up["instance_id"]
    cloud_usd = vast.fleet.cost_usd(iid)  # the fake's billing clock: create -> destroy

    code, cost, _ = cli_json(capsys, "cost")
    (row,) = cost["rows"]
    # 3 of ours; the launcher's one-token readiness completion is never counted
    assert row["key"] == up["deployment_id"] and row["requests"] == 3
    assert row["completion_tokens"] > 0 and row["tokens"] > row["completion_tokens"]
    # ours runs from the rent intent to the verified destroy: never less than the cloud's
    assert row["cost_usd"] >= cloud_usd - 1e-6
    assert row["cost_usd"] == pytest.approx(cloud_usd, abs=up["actual_price_per_hour_usd"] / 360)
    assert row["cold_start_avg_s"] > 0 and row["failed_instances"] == 0
    assert row["usd_per_1000_requests"] == pytest.approx(row["cost_usd"] / 3 * 1000, rel=1e-3)
    assert cost["budget"]["monthly_usd"] == pytest.approx(0.01) and cost["budget"]["ratio"] > 0
    assert [o["deployment_id"] for o in cost["overrides"]] == [up["deployment_id"]]


def test_failed_attempts_instances_are_in_the_ledger(vast, capsys):
    vast.fleet.engine_args = "--never-ready"
    code = main(["up", TASK, "--provider", "vast", "--ready-timeout", "3",
                 "--max-attempts", "2", "--json"])
    assert code == 1
    capsys.readouterr()
    code, cost, _ = cli_json(capsys, "cost")
    (row,) = cost["rows"]
    assert row["failed_instances"] == 2 and row["billed_s"] == 0
    cloud_usd = sum(vast.fleet.cost_usd(iid) for iid in vast.fleet.destroyed)
    assert len(vast.fleet.destroyed) == 2
    assert row["failed_instances_cost_usd"] >= cloud_usd - 1e-6
    assert row["cost_usd"] == pytest.approx(cloud_usd, abs=0.002)


def test_two_ups_at_once_cannot_both_pass_max_deployments(vast, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def up(_: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "up", TASK, "--provider", "vast",
             "--ready-timeout", "60", "--json"],
            env=env, capture_output=True, text=True, timeout=300,
        )

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(up, range(2)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 3], [r.stderr[-400:] for r in results]
    refused = next(r for r in results if r.returncode == 3)
    assert "limits.max_deployments" in refused.stderr
    ok = next(r for r in results if r.returncode == 0)
    dep_id = json.loads(ok.stdout)["deployment_id"]
    assert len(vast.fleet.instances) == 1
    with State.open() as state:
        assert [d.id for d in state.list_deployments()] == [dep_id]
    down = subprocess.run([sys.executable, "-m", "orchestrator.cli", "down", dep_id],
                          env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
