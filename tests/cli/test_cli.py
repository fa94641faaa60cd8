"""The CLI end to end, in-process: exit codes, one-sentence errors, JSON shapes."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def test_help_lists_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("offers", "plan", "estimate", "models", "gpus"):
        assert command in out


def test_gpus_json_has_at_least_30(capsys):
    code, doc = run_json(capsys, "gpus")
    assert code == 0 and len(doc["gpus"]) >= 30
    t4 = next(g for g in doc["gpus"] if g["name"] == "T4")
    assert t4["kernels"]["bf16"] is False and t4["compute_capability"] == 7.5


def test_models_lists_tasks(capsys):
    code, doc = run_json(capsys, "models")
    assert code == 0
    assert "qwen-14b" in doc["tasks"] and any(
        m["name"] == "Mixtral-8x7B-Instruct-v0.1" for m in doc["models"]
    )


def test_plan_on_catalog_picks_cheapest_feasible(capsys, catalog_dir):
    code, doc = run_json(capsys, "plan", "qwen-14b", "--catalog", str(catalog_dir))
    assert code == 0
    chosen = doc["chosen"]
    assert chosen["feasible"] and chosen["offer"]["source"] == "catalog"
    assert chosen["offer"]["spot"] is False  # on-demand unless asked
    prices = [c["offer"]["price_per_hour_usd"] for c in doc["candidates"]]
    assert prices == sorted(prices) and prices[0] == chosen["offer"]["price_per_hour_usd"]
    vram = chosen["sizing"]["vram_per_gpu"]
    assert vram["needed_gib"] <= vram["usable_gib"]
    assert chosen["cost"]["usd_per_1m_output_tokens"] > 0
    assert doc["bills"]["always_on_month_usd"] == pytest.approx(
        chosen["offer"]["price_per_hour_usd"] * 730, rel=1e-3
    )
    assert sum(doc["rejected_counts"].values()) > 0
    assert doc["offers_considered"] > 1000


def test_plan_explain_lists_every_rejection(capsys, catalog_dir):
    code, doc = run_json(
        capsys, "plan", "llama-3.1-70b", "--catalog", str(catalog_dir), "--explain"
    )
    assert code == 0
    assert doc["rejected"] and all(r["reasons"] for r in doc["rejected"])


def test_plan_nothing_fits_exits_4_with_nearest_misses(capsys, catalog_dir):
    code, out, err = run(
        capsys, "plan", "qwen-14b", "--catalog", str(catalog_dir), "--max-price", "0.01"
    )
    assert code == 4
    assert "Nearest misses" in out and "raise --max-price" in out
    assert "error: no offer fits qwen-14b" in err
    code, doc = run_json(
        capsys, "plan", "qwen-14b", "--catalog", str(catalog_dir), "--max-price", "0.01"
    )
    assert code == 4 and doc["chosen"] is None and doc["nearest_misses"]


def test_plan_min_tps_rejects_slow_gpus(capsys, catalog_dir):
    code, fast = run_json(
        capsys, "plan", "qwen-14b", "--catalog", str(catalog_dir), "--min-tps", "60"
    )
    assert code == 0
    assert fast["chosen"]["sizing"]["speed"]["decode_tok_s_per_request"] >= 60
    assert fast["rejected_counts"].get("latency: decode", 0) > 0


def test_plan_spot_flag(capsys, catalog_dir):
    code, doc = run_json(capsys, "plan", "mistral-7b", "--catalog", str(catalog_dir), "--spot")
    assert code == 0 and all(c["offer"]["spot"] for c in doc["candidates"])


def test_plan_provider_filter(capsys, catalog_dir):
    code, doc = run_json(
        capsys, "plan", "qwen-14b", "--catalog", str(catalog_dir), "--provider", "runpod"
    )
    assert code == 0 and {c["offer"]["provider"] for c in doc["candidates"]} == {"runpod"}


def test_plan_user_yaml(capsys, catalog_dir, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: mine\nmodel: Qwen/Qwen2.5-7B-Instruct\nquant: awq\n")
    code, doc = run_json(capsys, "plan", str(path), "--catalog", str(catalog_dir))
    assert code == 0 and doc["task"]["name"] == "mine"


def test_offers_filters(capsys, catalog_dir):
    code, doc = run_json(
        capsys,
        "offers",
        "--catalog",
        str(catalog_dir),
        "--gpu",
        "RTX 4090",
        "--max-price",
        "1.0",
        "--limit",
        "50",
    )
    assert code == 0 and doc["offers"]
    assert {o["gpu"] for o in doc["offers"]} == {"RTX4090"}
    assert all(o["price_per_hour_usd"] <= 1.0 for o in doc["offers"])


def test_offers_without_credentials_skip_with_hint(capsys):
    code, doc = run_json(capsys, "offers", "--limit", "5")
    assert code == 0 and doc["offers"] == []
    statuses = {p["name"]: p for p in doc["providers"]}
    assert statuses["vast"]["status"] == "skipped" and "VAST_API_KEY" in statuses["vast"]["message"]
    assert statuses["runpod"]["status"] == "skipped"


def test_estimate_model_on_gpu(capsys):
    code, doc = run_json(
        capsys, "estimate", "qwen-14b", "--gpu", "NVIDIA GeForce RTX 4090", "--price", "0.4"
    )
    assert code == 0
    assert doc["sizing"]["gpu"] == "RTX4090" and doc["quant"] == "awq"
    assert doc["sizing"]["feasible"] and doc["cost"]["usd_per_1m_output_tokens"] > 0


def test_estimate_text_output(capsys):
    code, out, _ = run(
        capsys, "estimate", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "T4", "--quant", "bf16"
    )
    assert code == 0 and "bf16 needs sm80" in out


def test_piped_output_is_plain(capsys):
    code, out, _ = run(capsys, "gpus")
    assert code == 0 and "│" not in out and "━" not in out and "\x1b[" not in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["plan", "no-such-task"], "task: unknown task"),
        (["estimate", "qwen-14b", "--gpu", "Banana 9000"], "gpu: unknown GPU"),
        (["estimate", "Unknown/Model-7B", "--gpu", "T4"], "model: no architecture facts"),
        (["plan", "qwen-14b", "--max-price", "-1"], "--max-price"),
        (["plan", "qwen-14b", "--quant", "q9"], "--quant"),
        (["plan", "qwen-14b", "--provider", "aws"], "provider: unknown provider"),
        (["offers", "--gpu", "Banana"], "gpu: unknown GPU"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert fragment in err
    assert "Traceback" not in err + out


def test_malformed_yaml_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    code, _, err = run(capsys, "plan", str(path))
    assert code == 2 and "not valid YAML" in err and "Traceback" not in err
