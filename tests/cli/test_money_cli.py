"""Money guardrails through the CLI: every refusal exits 3 and creates nothing (the fake
cloud saw no rent, the state holds a refusal record only), `config`, `cost`, alerts on a
loopback webhook, and no secret in any output."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from orchestrator import state as state_mod
from orchestrator.cli import main
from orchestrator.config import config_path
from orchestrator.credentials import credentials_path, set_credential
from orchestrator.lifecycle import GuardStatus, close_deployment
from orchestrator.state import State
from tests.fakes import DEFAULT_VAST_KEY, serve_vast
from tests.receiver import webhook_receiver

TASK = "qwen2.5-7b"
HOOK_SECRET = "hook-secret-42"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def configure(**sections) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sections))


@pytest.fixture
def vast(monkeypatch, tmp_path):
    with serve_vast() as (api, url):
        monkeypatch.setenv("VAST_URL", url)
        monkeypatch.setenv("VAST_API_KEY", DEFAULT_VAST_KEY)
        monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
        yield api
        assert api.fleet.live() == []


@pytest.fixture
def receiver():
    with webhook_receiver() as r:
        yield r


def rents(api) -> list:
    return [c for c in api.calls if c.method == "PUT"]


def assert_nothing_created(api) -> None:
    assert rents(api) == [] and api.fleet.instances == {} and api.fleet.destroyed == {}
    with State.open() as state:
        assert state.list_deployments() == []
        assert state.journal() == []


def refusals() -> list:
    with State.open() as state:
        return [e for e in state.budget_events() if e.kind == "refusal"]


def test_budget_refusal_exits_3_with_the_numbers_and_creates_nothing(vast, receiver, capsys):
    configure(budget={"monthly": 0.5, "currency": "EUR", "usd_per_eur": 1.1},
              alerts={"webhook_url": receiver.url, "timeout_s": 1})
    code, out, err = run(capsys, "up", TASK, "--provider", "vast", "--ttl", "4h")
    assert code == 3 and out == ""
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert error.startswith("error: budget: this month's spend 0.00 EUR + ")
    assert "projected for qwen2.5-7b (" in error and "x 4h" in error
    assert "above the monthly budget of 0.50 EUR; nothing was rented" in error
    assert "--override-budget" in err  # the hint
    assert_nothing_created(vast)
    (refusal,) = refusals()
    assert refusal.rule == "budget" and refusal.deployment_id is None
    assert refusal.budget_usd == pytest.approx(0.55) and refusal.projected_usd > 0.55
    (text,) = receiver.texts
    assert text.startswith("deployctl: budget: this month's spend 0.00 EUR")
    # a second refusal this month: recorded, not alerted again
    assert run(capsys, "up", TASK, "--provider", "vast", "--ttl", "4h")[0] == 3
    assert len(refusals()) == 2 and len(receiver.posts) == 1


@pytest.mark.parametrize(
    ("config", "argv", "rule", "searched"),
    [
        ({}, ["--ttl", "24h"], "max_ttl", False),
        ({}, ["--ttl", "0"], "max_ttl", False),
        ({"limits": {"max_price_per_hour": 0.01}}, [], "max_price_per_hour", True),
    ],
)
def test_each_limit_refuses_with_exit_3_and_creates_nothing(vast, capsys, config, argv, rule,
                                                            searched):
    configure(**config)
    code, _, err = run(capsys, "up", TASK, "--provider", "vast", *argv)
    assert code == 3, err
    assert f"error: limits.{rule}: " in err
    assert_nothing_created(vast)
    assert bool(vast.calls) is searched  # ttl is refused before any provider call
    assert [r.rule for r in refusals()] == [rule]


def test_max_deployments_refuses_a_second_live_deployment(vast, capsys):
    with State.open() as state:
        live = state.new_deployment("mistral-7b", "{}", 900, 3600)
        state.update_deployment(live.id, status="ready")
    code, _, err = run(capsys, "up", TASK, "--provider", "vast")
    assert code == 3
    assert f"error: limits.max_deployments: 1 deployment is live ({live.id}) and the limit " \
           "is 1" in err
    assert vast.calls == [] and vast.fleet.instances == {}
    with State.open() as state:
        assert [d.id for d in state.list_deployments()] == [live.id]
        assert state.journal() == []


def test_up_when_no_provider_answers_the_search_exits_1_naming_it(vast, capsys):
    """Every search failing is an operation that failed (exit 1, the provider's error),
    not a task that fits nothing (exit 4); nothing is created."""
    vast.fail_next(50, status=503)
    code, out, err = run(capsys, "up", TASK, "--provider", "vast")
    assert code == 1, err
    assert "error: no provider answered the offer search, so nothing was rented: vast:" in err
    assert "503" in err and "Traceback" not in err and out == ""
    vast.reset_faults()
    assert rents(vast) == [] and vast.fleet.instances == {}


def test_flag_and_env_override_the_config_for_one_command(vast, capsys, monkeypatch):
    configure(limits={"max_ttl": "1h"})
    assert run(capsys, "up", TASK, "--provider", "vast", "--ttl", "2h")[0] == 3
    monkeypatch.setenv("DEPLOYCTL_BUDGET_MONTHLY", "0.01")
    code, _, err = run(capsys, "--set", "limits.max_ttl=3h", "up", TASK, "--provider", "vast",
                       "--ttl", "2h")
    assert code == 3 and "error: budget: " in err  # past the ttl limit, stopped by the budget
    assert_nothing_created(vast)


def test_config_set_and_show(capsys):
    assert run(capsys, "config", "set", "budget.monthly", "20")[0] == 0
    code, _, err = run(capsys, "config", "set", "budget.monthly", "lots")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: budget.monthly: 'lots' is not accepted: Input should be a valid number, unable "
        "to parse string as a number; accepted: an amount >= 0 in budget.currency (e.g. 20), "
        "or none for no budget"]
    code, _, err = run(capsys, "config", "set", "limits.max_deployment", "2")
    assert code == 2 and err.startswith("error: config: 'limits.max_deployment' is not a set")
    code, out, _ = run(capsys, "config", "show", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["settings"]["budget.monthly"] == 20
    assert doc["sources"]["budget.monthly"] == "file" and doc["settings"]["limits.max_ttl"] == "12h"
    code, out, _ = run(capsys, "config", "show")
    assert code == 0 and "budget.monthly" in out and "file" in out


def test_a_loose_credentials_file_is_refused_with_exit_2(capsys):
    set_credential("vast_api_key", "file-key-123456")
    credentials_path().chmod(0o644)
    for argv in (["offers", "--provider", "vast"], ["config", "show"]):
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert "has mode 0644" in err and f"chmod 600 {credentials_path()}" in err
        assert "file-key" not in out + err


def _seed_month(state: State) -> str:
    dep = state.new_deployment("qwen-14b", "{}", 900, 3600)
    jid = state.journal_intent(dep.id, "rent", "vast", offer_key="vast:1")
    state.journal_done(jid, "i1")
    state.update_deployment(dep.id, status="ready", ready_at=datetime.now(timezone.utc),
                            provider="vast", gpu="A10", instance_id="i1", price_per_hour_usd=0.9)
    jid = state.journal_intent(dep.id, "terminate", "vast", instance_id="i1")
    state.journal_done(jid, "i1")
    close_deployment(state, state.get_deployment(dep.id), "down",
                     GuardStatus(requests=10, prompt_tokens=100, completion_tokens=50, idle_s=1))
    return dep.id


def test_cost_json_csv_and_text(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    configure(budget={"monthly": 10})
    with State.open() as state:
        dep_id = _seed_month(state)
        state.add_budget_event("override", rule="budget", deployment_id=dep_id,
                               task_name="qwen-14b", projected_usd=4.0, budget_usd=10.0)
    code, out, _ = run(capsys, "cost", "--json", "--by", "task")
    doc = json.loads(out)
    assert code == 0 and doc["by"] == "task" and doc["month"] == f"{datetime.now():%Y-%m}"
    (row,) = doc["rows"]
    assert row["key"] == "qwen-14b" and row["requests"] == 10 and row["tokens"] == 150
    assert row["usd_per_1000_requests"] == pytest.approx(row["cost_usd"] * 100, rel=1e-3)
    assert doc["budget"]["monthly_usd"] == 10 and doc["budget"]["ratio"] is not None
    assert [o["deployment_id"] for o in doc["overrides"]] == [dep_id]  # recorded in the ledger
    code, out, _ = run(capsys, "cost", "--csv")
    header, line = out.strip().splitlines()
    assert header.startswith("key,deployments,billed_s,gpu_s,cost_usd") and line.startswith(dep_id)
    code, out, _ = run(capsys, "cost")
    assert code == 0 and "of 10.00 USD" in out and "░" in out and "budget overrides: 1" in out
    assert run(capsys, "cost", "--month", "2026-13")[0] == 2
    code, out, _ = run(capsys, "cost", "--month", "2001-01", "--json")
    assert json.loads(out)["rows"] == []


def test_status_warns_and_alerts_about_a_deployment_past_its_ttl(capsys, monkeypatch, tmp_path,
                                                                 receiver):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    configure(alerts={"webhook_url": receiver.url})
    past = datetime.now(timezone.utc) - timedelta(hours=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state_mod, "_now", lambda: past)
        with State.open() as state:
            dep = state.new_deployment("qwen-14b", "{}", 900, 3600)
    code, _, err = run(capsys, "status")
    assert code == 0 and f"warning: deployment {dep.id} (qwen-14b" in err
    assert len(receiver.posts) == 1 and "past its ttl" in receiver.texts[0]
    run(capsys, "status")
    assert len(receiver.posts) == 1  # once


def test_no_secret_in_any_output(vast, capsys, monkeypatch, receiver):
    from orchestrator import metrics

    vast_key, runpod_key, hf = DEFAULT_VAST_KEY, "rp-file-secret-777", "hf_abcdefghijklmnop"
    set_credential("runpod_api_key", runpod_key)
    monkeypatch.setenv("HF_TOKEN", hf)
    configure(budget={"monthly": 0.2}, alerts={"webhook_url": receiver.url})
    with State.open() as state:
        _seed_month(state)  # 0.9 $/h for ~0 s, closed
    outputs = []
    for argv in (["config", "show"], ["config", "show", "--json"], ["cost"],
                 ["cost", "--json"], ["cost", "--csv"], ["status", "--all", "--json"],
                 ["up", TASK, "--provider", "vast"]):
        code, out, err = run(capsys, *argv)
        assert code in (0, 3), (argv, err)
        outputs.append(out + err)
    from prometheus_client import generate_latest

    outputs.append(generate_latest(metrics.registry()).decode())
    outputs.extend(receiver.texts)
    everything = "\n".join(outputs)
    for secret in (vast_key, runpod_key, hf, HOOK_SECRET):
        assert secret not in everything
    assert "https://" not in everything or "hooks" not in everything
    assert "http://127.0.0.1" in everything  # the webhook host is shown, not its path
