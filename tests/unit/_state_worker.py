"""Helper for test_state: one process hammering the state database.

Usage: python _state_worker.py ITERATIONS  (the data dir comes from DEPLOYCTL_STATE_DIR).
Prints "ready" once imported, waits for a line on stdin so that every worker opens the
database at the same moment, then prints one JSON line with its timings.
"""

from __future__ import annotations

import json
import sys
import time

from orchestrator.models import DeploymentStatus
from orchestrator.state import State


def main() -> None:
    iterations = int(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    began = time.perf_counter()
    slowest = 0.0
    with State.open() as state:
        for i in range(iterations):
            t0 = time.perf_counter()
            dep = state.new_deployment("worker", "{}", 60, 600, labels={"i": str(i)})
            state.update_deployment(dep.id, status=DeploymentStatus.LAUNCHING, provider="fake")
            jid = state.journal_intent(dep.id, "rent", "fake", offer_key="fake:1")
            state.journal_done(jid, instance_id=f"i-{dep.id}")
            tid = state.journal_intent(dep.id, "terminate", "fake", instance_id=f"i-{dep.id}")
            state.journal_done(tid)
            state.mark_ended(dep.id, "down")
            state.close_bill(dep.id, price_per_hour_usd=3.6, billed_s=10)
            slowest = max(slowest, time.perf_counter() - t0)
    elapsed = time.perf_counter() - began
    print(json.dumps({"elapsed_s": elapsed, "slowest_iteration_s": slowest}), flush=True)


if __name__ == "__main__":
    main()
