"""Eight `deployctl` processes doing up/down at once against the fake Vast cloud share one
state database; afterwards the journal, the deployments and the cloud agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.state import State
from tests.fakes import DEFAULT_VAST_KEY, serve_vast

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
WORKERS = 8


def test_eight_processes_up_and_down_at_once(tmp_path, monkeypatch):
    state_dir = tmp_path / "state"
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(state_dir))
    with serve_vast() as (api, url):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VAST_URL": url,
               "VAST_API_KEY": DEFAULT_VAST_KEY, "DEPLOYCTL_STATE_DIR": str(state_dir),
               "DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS": str(WORKERS)}  # the default limit is 1

        def cycle(_: int) -> tuple[int, int, str]:
            up = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "up", "qwen2.5-7b", "--provider",
                 "vast", "--max-attempts", "12", "--ready-timeout", "120", "--json"],
                env=env, capture_output=True, text=True, timeout=300,
            )
            if up.returncode != 0:
                return up.returncode, -1, up.stderr[-500:]
            dep_id = json.loads(up.stdout)["deployment_id"]
            down = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "down", dep_id, "--json"],
                env=env, capture_output=True, text=True, timeout=300,
            )
            return up.returncode, down.returncode, down.stderr[-500:]

        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(cycle, range(WORKERS)))
        assert all(r[:2] == (0, 0) for r in results), results
        assert api.fleet.live() == []

    with State.open() as state:
        deployments = state.list_deployments()
        assert len(deployments) == WORKERS
        assert {d.status.value for d in deployments} == {"ended"}
        assert state.open_intents() == []
        assert state.live_instances() == []
        rented = [j for j in state.journal() if j.action == "rent" and j.state == "done"]
        terminated = {j.instance_id for j in state.journal()
                      if j.action == "terminate" and j.state == "done"}
        assert len(rented) == WORKERS  # one instance each; lost races were "unavailable"
        assert {j.instance_id for j in rented} <= terminated
        assert len({d.instance_id for d in deployments}) == WORKERS
        for d in deployments:
            assert state.bill(d.id) is not None
