"""The Prometheus exporter scraped over loopback, and the example alert rules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import metrics
from orchestrator import state as state_mod
from orchestrator.config import config_path
from orchestrator.lifecycle import GuardStatus, close_deployment
from orchestrator.state import State

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "examples" / "prometheus" / "deployctl-alerts.yml"


def seed() -> tuple[str, str]:
    """A closed deployment (1 h at 1.20 $/h, 600 requests, 2 GPUs) and a live one."""
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    clock = {"now": start}
    patch = pytest.MonkeyPatch()
    patch.setattr(state_mod, "_now", lambda: clock["now"])

    def at(seconds: float) -> None:
        clock["now"] = start + timedelta(seconds=seconds)

    with State.open() as state:
        done = state.new_deployment("qwen-14b", "{}", 900, 4 * 3600)
        jid = state.journal_intent(done.id, "rent", "vast", offer_key="vast:1")
        state.journal_done(jid, "i1")
        at(90)
        state.update_deployment(done.id, status="ready", ready_at=clock["now"], instance_id="i1",
                                provider="vast", gpu="A10", gpu_count=2, price_per_hour_usd=1.2)
        at(3600)
        jid = state.journal_intent(done.id, "terminate", "vast", instance_id="i1")
        state.journal_done(jid, "i1")
        close_deployment(state, state.get_deployment(done.id), "down",
                         GuardStatus(requests=600, prompt_tokens=300_000,
                                     completion_tokens=300_000, idle_s=900))
        live = state.new_deployment("mistral-7b", "{}", 900, 3600)
        state.update_deployment(live.id, status="ready", ready_at=clock["now"], instance_id="i2",
                                provider="runpod", gpu="RTX 4090", price_per_hour_usd=0.4)
    patch.undo()
    return done.id, live.id


def scrape(url: str) -> dict[str, list]:
    text = httpx.get(url, timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}, text


def value(families, name: str, **labels) -> float:
    for samples in families.values():
        for sample in samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def test_metrics_endpoint_scraped_over_loopback(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DEPLOYCTL_BUDGET_MONTHLY", "20")
    monkeypatch.setenv("DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS", "2")
    done, live = seed()
    server, _ = metrics.serve("127.0.0.1", 0)
    try:
        port = server.server_address[1]
        families, text = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    # closed: rent at t=0 -> verified gone at t=1 h, 1.20 $/h x 2 GPUs; live (no journal
    # rows here): from its creation at t=1 h until now (t=2 h), 0.40 $/h x 1 GPU
    spend = value(families, "deployctl_month_spend_usd")
    assert spend == pytest.approx(1.2 + 0.4 * 1.0, abs=0.01)
    assert value(families, "deployctl_budget_month_usd") == 20
    assert value(families, "deployctl_budget_ratio") == pytest.approx(spend / 20)
    assert value(families, "deployctl_active_deployments") == 1
    assert value(families, "deployctl_month_requests") == 600
    assert value(families, "deployctl_month_tokens", kind="completion") == 300_000
    assert value(families, "deployctl_month_gpu_seconds") == pytest.approx(3 * 3600, rel=0.01)
    assert value(families, "deployctl_month_cold_start_seconds_count") == 2  # 90 s and 0 s
    assert value(families, "deployctl_month_cold_start_seconds_sum") == pytest.approx(90, abs=1)
    assert value(families, "deployctl_month_cost_per_1000_requests_usd") == pytest.approx(
        spend / 600 * 1000)
    assert value(families, "deployctl_month_cost_per_1m_tokens_usd") == pytest.approx(
        spend / 600_000 * 1e6)
    assert value(families, "deployctl_deployment_ttl_seconds", deployment=live) == 3600
    assert value(families, "deployctl_deployment_age_seconds", deployment=live) >= 3590
    assert done not in text  # only live deployments carry labels


def test_metrics_serve_command_on_a_free_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEPLOYCTL_STATE_DIR": str(tmp_path / "st")}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "metrics", "serve",
                             "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                families, _ = scrape(f"http://127.0.0.1:{port}/metrics")
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "metrics serve did not start"
                time.sleep(0.1)
        assert value(families, "deployctl_month_spend_usd") == 0
        assert value(families, "deployctl_active_deployments") == 0
        assert "deployctl_budget_ratio" not in families  # no budget set
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_busy_port_is_bad_input(tmp_path, monkeypatch):
    import socket

    from orchestrator.errors import BadInputError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(BadInputError, match=r"--port: cannot listen on 127\.0\.0\.1"):
            metrics.serve("127.0.0.1", s.getsockname()[1])


def test_a_broken_config_does_not_hide_the_spend(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    config_path().parent.mkdir(parents=True)
    config_path().write_text("budget: [")
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry()).decode()
    assert "deployctl_month_spend_usd 0.0" in text


def test_example_alert_rules_parse_and_use_exported_metrics(monkeypatch, tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"DeployctlCostPer1MTokensHigh", "DeployctlBudget80Percent", "DeployctlGpuIdleLong",
            "DeployctlDeploymentOlderThanTtl"} <= names
    for rule in rules:
        assert rule["expr"] and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    # every metric a rule uses is one the exporter or the guard really exposes
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DEPLOYCTL_BUDGET_MONTHLY", "20")
    monkeypatch.setenv("DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS", "2")
    seed()
    from prometheus_client import generate_latest

    exported = generate_latest(metrics.registry()).decode()
    guard_src = (ROOT / "orchestrator" / "guard.py").read_text()
    for rule in rules:
        for metric in re.findall(r"\bdeployctl_[a-z0-9_]+", rule["expr"]):
            if metric.startswith("deployctl_guard_"):
                assert f'("{metric.removeprefix("deployctl_guard_")}"' in guard_src, metric
            else:
                assert f"\n{metric}" in exported or f"\n{metric}{{" in exported, metric
    scrape_doc = yaml.safe_load((RULES.parent / "scrape-config.yml").read_text())
    assert {j["job_name"] for j in scrape_doc["scrape_configs"]} == {"deployctl",
                                                                     "deployctl-guard"}
