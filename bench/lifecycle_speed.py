"""Lifecycle timings on the local provider (real llama.cpp engine), printed as tables.

    .venv/bin/python bench/lifecycle_speed.py [--runs 5] [--keep-alive 10]

1. Time to ready: `deployctl up smollm2-135m --provider local` (whole process: plan,
   journal, guard, engine, readiness gate) against starting the same engine by hand and
   polling it until a one-token completion answers (every 25 ms, as deployctl polls, with
   one client made before the clock starts). Target: median ratio <= 1.3.
2. Time from the last real request to the instance being gone, against keep_alive.
   Target: <= keep_alive + 10 s.
Each `up` is ended with `deployctl down` (verified gone) before the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.taskfile import load_task  # noqa: E402
from providers.local import local_gguf  # noqa: E402
from providers.local_process import free_port  # noqa: E402

COLD = "orchestrator.cli"  # always in its own process
WARM = "orchestrator.entry"  # the `deployctl` program: through the agent when one runs


def deployctl(env: dict[str, str], *args: str, module: str = COLD) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"deployctl {' '.join(args)} failed: {proc.stderr[-800:]}")
    return json.loads(proc.stdout)


ONE_TOKEN = {"model": "smollm2-135m", "prompt": "Hello", "max_tokens": 1}
POLL_S = 0.025  # as often as `deployctl up` polls in its first seconds (health.wait_ready)


def by_hand_ready_s() -> float:
    """Start llama-cpp-python's server directly and wait for a one-token completion,
    polling as often as deployctl does, with one client made before the clock starts."""
    port = free_port()
    gguf = local_gguf(load_task("smollm2-135m"))
    with httpx.Client(timeout=30) as client:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
             "smollm2-135m", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    r = client.post(f"http://127.0.0.1:{port}/v1/completions", json=ONE_TOKEN)
                    if r.status_code == 200:
                        return time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                time.sleep(POLL_S)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def up_ready_s(env: dict[str, str], keep_alive_s: int, module: str = COLD) -> tuple[float, dict]:
    started = time.perf_counter()
    up = deployctl(env, "up", "smollm2-135m", "--provider", "local", "--keep-alive",
                   f"{keep_alive_s}s", "--show-key", module=module)
    return time.perf_counter() - started, up


def gone_after_last_request_s(up: dict) -> float:
    r = httpx.post(f"{up['endpoint_url']}/completions", timeout=60,
                   headers={"Authorization": f"Bearer {up['key']}"},
                   json={"model": up["model"], "prompt": "Hi", "max_tokens": 4})
    r.raise_for_status()
    last = time.perf_counter()
    health = up["endpoint_url"].removesuffix("/v1") + "/health"
    while True:
        try:
            httpx.get(health, timeout=1)  # pings: they must not count as activity
        except httpx.HTTPError:
            return time.perf_counter() - last
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep-alive", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DEPLOYCTL_STATE_DIR": tmp, "PYTHONPATH": str(ROOT)}
        hand, ours, warm, gone, startup = [], [], [], [], []
        agent = subprocess.run([sys.executable, "-m", COLD, "agent", "start"], cwd=ROOT,
                               env=env, check=True, capture_output=True, text=True)
        print(agent.stdout.strip())
        try:
            for _ in range(args.runs):
                hand.append(by_hand_ready_s())
                t, up = up_ready_s(env, 600)
                ours.append(t)
                startup.append(t - up["ready_s"])  # before `up` starts its own clock
                deployctl(env, "down", up["deployment_id"])
                t, up = up_ready_s(env, 600, module=WARM)
                warm.append(t)
                deployctl(env, "down", up["deployment_id"])
        finally:
            subprocess.run([sys.executable, "-m", COLD, "agent", "stop"], cwd=ROOT, env=env)
        for _ in range(max(2, args.runs // 2)):
            _, up = up_ready_s(env, args.keep_alive)
            gone.append(gone_after_last_request_s(up))
            deployctl(env, "status", "--all")  # closes the bill of the self-destroyed one
    print(f"{'time to ready (s)':<44}{'median':>8}{'min':>8}{'max':>8}")
    print(f"{'engine started by hand (first token)':<44}{statistics.median(hand):>8.2f}"
          f"{min(hand):>8.2f}{max(hand):>8.2f}")
    print(f"{'deployctl up --provider local (process)':<44}{statistics.median(ours):>8.2f}"
          f"{min(ours):>8.2f}{max(ours):>8.2f}")
    print(f"{'  of which Python start-up and imports':<44}{statistics.median(startup):>8.2f}"
          f"{min(startup):>8.2f}{max(startup):>8.2f}")
    print(f"{'deployctl up, agent running (warm)':<44}{statistics.median(warm):>8.2f}"
          f"{min(warm):>8.2f}{max(warm):>8.2f}")
    ratio = statistics.median(ours) / statistics.median(hand)
    warm_ratio = statistics.median(warm) / statistics.median(hand)
    print(f"ratio up / by hand: {ratio:.2f} cold, {warm_ratio:.2f} with the agent "
          "(target <= 1.3)\n")
    print(f"{'last request -> instance gone (s)':<44}{'median':>8}{'min':>8}{'max':>8}")
    print(f"{f'keep_alive {args.keep_alive} s':<44}{statistics.median(gone):>8.2f}"
          f"{min(gone):>8.2f}{max(gone):>8.2f}")
    print(f"target <= keep_alive + 10 s = {args.keep_alive + 10} s")


if __name__ == "__main__":
    main()
