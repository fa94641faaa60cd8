"""The CLI's fan-out against both loopback fake clouds at once, with injected delays."""

from __future__ import annotations

import json
import time

from orchestrator.cli import main
from tests.fakes import DEFAULT_RUNPOD_KEY, DEFAULT_VAST_KEY, serve_runpod, serve_vast


def _env(monkeypatch, vast_url: str, runpod_url: str) -> None:
    monkeypatch.setenv("VAST_URL", vast_url)
    monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_url)
    monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_RUNPOD_KEY)


def test_delays_overlap_total_is_the_slowest(monkeypatch, capsys):
    with serve_vast() as (vast, vast_url), serve_runpod() as (runpod, runpod_url):
        _env(monkeypatch, vast_url, runpod_url)
        vast.latency_s = 1.0  # one search per rental type: 2 x 1.0 s inside the adapter
        runpod.latency_s = 1.5
        started = time.monotonic()
        code = main(["offers", "--provider", "vast,runpod", "--json", "--limit", "500"])
        elapsed = time.monotonic() - started
        doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {o["provider"] for o in doc["offers"]} == {"vast", "runpod"}
    # Sequential would be >= 2.0 (vast) + 1.5 (runpod) = 3.5 s; concurrent is ~2 s.
    assert elapsed < 3.2


def test_slow_provider_times_out_others_still_answer(monkeypatch, capsys):
    with serve_vast() as (_vast, vast_url), serve_runpod() as (runpod, runpod_url):
        _env(monkeypatch, vast_url, runpod_url)
        monkeypatch.setenv("DEPLOYCTL_OFFER_DEADLINE_S", "1")
        runpod.latency_s = 3.0
        started = time.monotonic()
        code = main(["offers", "--provider", "vast,runpod", "--json", "--limit", "500"])
        elapsed = time.monotonic() - started
        doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {o["provider"] for o in doc["offers"]} == {"vast"}
    status = {p["name"]: p["status"] for p in doc["providers"]}
    assert status == {"vast": "ok", "runpod": "timeout"}
    assert elapsed < 2.5


def test_failing_provider_is_a_warning_in_plan(monkeypatch, capsys):
    with serve_vast() as (_vast, vast_url), serve_runpod() as (runpod, runpod_url):
        _env(monkeypatch, vast_url, runpod_url)
        runpod.fail_next(50, status=500)
        code = main(["plan", "qwen-14b", "--provider", "vast,runpod", "--json"])
        doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["chosen"]["offer"]["provider"] == "vast"
    assert doc["chosen"]["offer"]["source"] == "live"
    assert any(w.startswith("runpod: failed") for w in doc["warnings"])
