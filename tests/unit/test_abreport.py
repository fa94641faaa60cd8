"""A/B reports and `--fail-on` rules: numbers, Markdown, the JSON schema, bad input."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.abreport import (
    Side,
    Summary,
    histogram,
    percentile,
    render_json,
    render_markdown,
    side_metrics,
    stats,
)
from orchestrator.abrules import RATIOS, comparison, evaluate, parse_rules
from orchestrator.cli import main
from orchestrator.errors import BadInputError
from orchestrator.loadgen import RequestResult, RunResult


def _run(ttfts: list[float], *, tokens: int = 10, latency_extra: float = 0.5, errors: int = 0,
         passed: list[bool | None] | None = None) -> RunResult:  # fmt: skip
    results = []
    for i, ttft in enumerate(ttfts):
        p = passed[i] if passed else None
        results.append(RequestResult(f"p{i}", True, i * 0.1, ttft + latency_extra, ttft, tokens,
                                     passed=p))  # fmt: skip
    for i in range(errors):
        results.append(RequestResult(f"e{i}", False, 0.0, 0.01, error="HTTP 500", passed=False))
    run = RunResult(results, planned=len(results))
    run.finish()
    return run


def _side(name: str, run: RunResult | None, price: float = 1.8, **kw) -> Side:
    side = Side(name, "qwen2.5-7b", {"quant": "awq"} if name == "b" else {}, status="ready",
                deployment_id=f"d{name}", provider="vast", gpu="RTX 4090", instance_id="i" + name,
                price_per_hour_usd=price, cold_start_s=60.0, run=run, spent_usd=0.05,
                billed_s=100.0, instances=["i" + name], teardown="destroyed, verified gone")
    for key, value in kw.items():
        setattr(side, key, value)
    return side


def _summary(a: Side, b: Side, rules: str = "", status: str = "completed") -> Summary:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    s = Summary(status, t0, t0 + timedelta(seconds=90), {"requests": 10}, {"a": a, "b": b})
    ma, mb = side_metrics(a), side_metrics(b)
    s.outcomes = evaluate(parse_rules(rules), ma, mb, comparison(ma, mb))
    return s


# ---------------------------------------------------------------------------- numbers


def test_percentile_interpolates_like_numpy():
    values = list(range(1, 11))
    assert percentile(values, 50) == 5.5
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile([3.0], 99) == 3.0
    assert percentile([5, 1, 3], 0) == 1 and percentile([5, 1, 3], 100) == 5
    assert stats([]) is None
    assert stats([1.0, 3.0])["mean"] == 2.0


def test_side_metrics_errors_quality_and_costs():
    run = _run([0.1] * 8, tokens=100, errors=2, passed=[True] * 6 + [False] * 2)
    m = side_metrics(_side("a", run, price=3.6))
    assert m["requests"] == 10 and m["ok_requests"] == 8
    assert m["error_rate"] == pytest.approx(0.2)
    assert m["pass_rate"] == pytest.approx(6 / 10)  # errored requests fail their checks
    assert m["ttft_p50_s"] == pytest.approx(0.1)
    assert m["tpot_p50_s"] == pytest.approx(0.5 / 99)
    wall = run.wall_s  # 0.7 s between first start and last end + 0.6 s
    assert m["output_tok_s"] == pytest.approx(800 / wall)
    run_usd = 3.6 * wall / 3600
    assert m["usd_per_1m_output_tokens"] == pytest.approx(run_usd / 800 * 1e6)
    assert m["usd_per_1000_requests"] == pytest.approx(run_usd / 8 * 1000)


def test_comparison_ratios_and_differences():
    a = side_metrics(_side("a", _run([0.1] * 10, passed=[True] * 10)))
    b = side_metrics(_side("b", _run([0.15] * 10, passed=[True] * 8 + [False] * 2)))
    c = comparison(a, b)
    assert c["ttft_p95_ratio"] == pytest.approx(1.5)
    assert c["quality_drop"] == pytest.approx(0.2)
    assert c["error_rate_increase"] == 0
    assert set(RATIOS) <= set(c)
    zero = dict(a, cold_start_s=0.0)
    assert comparison(zero, dict(b, cold_start_s=0.0))["cold_start_ratio"] == 1.0
    assert math.isinf(comparison(zero, b)["cold_start_ratio"])


# ---------------------------------------------------------------------------- rules


def test_rules_parse_with_percent_and_side_prefix():
    rules = parse_rules(" ttft_p95_ratio>1.2, error_rate>1% ,a.error_rate>=0.5,quality_drop>.05,")
    assert [(r.metric, r.op, r.threshold, r.side) for r in rules] == [
        ("ttft_p95_ratio", ">", 1.2, None),
        ("error_rate", ">", 0.01, "b"),  # a bare per-side metric is B's (the candidate)
        ("error_rate", ">=", 0.5, "a"),
        ("quality_drop", ">", 0.05, None),
    ]
    assert parse_rules(None) == [] and parse_rules("") == []


@pytest.mark.parametrize(
    "text, words",
    [
        ("ttft_p95_ratio=1.2", "is not a rule; write METRIC>NUMBER"),
        ("ttft_p95_ratio>", "is not a rule"),
        ("ttft>1.2", "unknown metric 'ttft'"),
        ("a.ttft_p95_ratio>1", "compares B with A; drop the a. prefix"),
        ("error_rate>>1", "is not a rule"),
    ],
)
def test_bad_rules_are_one_sentence(text, words):
    with pytest.raises(BadInputError) as err:
        parse_rules(text)
    assert words in str(err.value) and err.value.exit_code == 2
    assert str(err.value).startswith("--fail-on: ")


def test_evaluate_trips_names_and_skips_unmeasured():
    a = side_metrics(_side("a", _run([0.1] * 10)))
    b = side_metrics(_side("b", _run([0.13] * 9, errors=1)))
    outcomes = evaluate(parse_rules("ttft_p95_ratio>1.2,error_rate>0.05,a.error_rate>0,"
                                    "quality_drop>0.05,tpot_p50_ratio<2"), a, b)  # fmt: skip
    got = {o.rule.text: (o.tripped, o.value) for o in outcomes}
    assert got["ttft_p95_ratio>1.2"][0] and got["ttft_p95_ratio>1.2"][1] == pytest.approx(1.3)
    assert got["error_rate>0.05"] == (True, pytest.approx(0.1))
    assert got["a.error_rate>0"] == (False, 0.0)
    assert got["quality_drop>0.05"] == (False, None)  # no expected answers: n/a
    assert got["tpot_p50_ratio<2"][0]


# ---------------------------------------------------------------------------- rendering


def test_markdown_reads_as_a_step_summary():
    a = _side("a", _run([0.1, 0.12, 0.2, 0.11], passed=[True, True, False, True]))
    b = _side("b", _run([0.3, 0.35, 0.4, 0.33], passed=[True] * 4, errors=1))
    md = render_markdown(_summary(a, b, "ttft_p95_ratio>1.2,error_rate>0.5"))
    assert md.startswith("## A/B: `qwen2.5-7b` vs `qwen2.5-7b (quant=awq)`")
    assert "❌ **Failed**: `ttft_p95_ratio>1.2` (2.088) tripped." in md
    assert "both sides destroyed and verified gone" in md
    assert "| TTFT p95 | 188.0 ms | 392.5 ms | 2.09x |" in md
    assert "| quality (pass rate) | 3 / 4 = 75.0% | 4 / 5 = 80.0% |" in md
    assert "| `error_rate>0.5` | 0.2 | ✅ ok |" in md
    assert "### End-to-end latency distribution" in md and "```text" in md
    assert "- B: HTTP 500: 1" in md
    lines = md.splitlines()
    table = [ln for ln in lines if ln.startswith("| ")]
    assert all(ln.count("|") == 5 for ln in table[:3])


def test_markdown_says_when_teardown_is_unproven_or_the_rig_was_interrupted():
    a = _side("a", _run([0.1]))
    b = _side("b", None, gone_verified=False, teardown="NOT verified gone: vast 7 (boom)")
    b.status = "cancelled"
    s = _summary(a, b, status="interrupted")
    s.error = "interrupted (SIGTERM)"
    md = render_markdown(s)
    assert "⚠️ **Interrupted**: interrupted (SIGTERM)" in md
    assert "Teardown could not verify every instance gone" in md
    assert "NOT verified gone: vast 7 (boom)" in md


def test_markdown_without_deployments_is_short():
    a, b = Side("a", "x"), Side("b", "y")
    s = _summary(a, b, status="failed")
    s.error = "no offer fits side B (y)"
    md = render_markdown(s)
    assert "⚠️ **Failed**: no offer fits side B (y)" in md and "| where |" not in md


def test_json_document_schema():
    a = _side("a", _run([0.1] * 3, passed=[True] * 3))
    b = _side("b", _run([0.2] * 3, passed=[True, False, True]))
    b.cold_start_s = 30.0
    a.cold_start_s = 0.0  # a ratio against 0: infinite, written as null + a flag
    doc = json.loads(render_json(_summary(a, b, "cold_start_ratio>2,quality_drop>0.1")))
    assert doc["schema_version"] == 1 and doc["kind"] == "ab" and doc["status"] == "completed"
    assert set(doc) == {"schema_version", "kind", "status", "error", "started_at", "ended_at",
                        "wall_s", "config", "sides", "comparison", "rules", "tripped",
                        "teardown"}  # fmt: skip
    side = doc["sides"]["b"]
    assert set(side) == {"task", "overrides", "label", "status", "error", "deployment_id",
                         "provider", "gpu", "gpu_count", "instance_id", "model",
                         "price_per_hour_usd", "cold_start_s", "phase_s", "load", "cost",
                         "teardown"}  # fmt: skip
    load = side["load"]
    assert set(load["ttft_s"]) == {"n", "mean", "min", "p50", "p95", "p99", "max"}
    third = pytest.approx(2 / 3, abs=1e-5)
    assert load["quality"] == {"checked": 3, "passed": 2, "pass_rate": third,
                               "failed_prompts": ["p1"]}  # fmt: skip
    assert set(side["cost"]) == {"spent_usd", "billed_s", "usd_per_1m_output_tokens",
                                 "usd_per_1000_requests"}  # fmt: skip
    assert side["teardown"] == {"instances": ["ib"], "verified_gone": True,
                                "detail": "destroyed, verified gone"}  # fmt: skip
    (inf_rule, quality_rule) = doc["rules"]
    assert inf_rule["value"] is None and inf_rule["value_is_infinite"] and inf_rule["tripped"]
    assert quality_rule["value"] == pytest.approx(1 / 3, abs=1e-5) and quality_rule["tripped"]
    assert doc["tripped"] == ["cold_start_ratio>2", "quality_drop>0.1"]
    assert doc["comparison"]["cold_start_ratio"] is None
    assert doc["teardown"] == {"all_verified_gone": True}


def test_histogram_shares_bins_and_counts_everything():
    lines = histogram([0.010, 0.012, 0.050], [0.011, 0.090, 0.091, 0.099], bins=4)
    assert lines[0].split() == ["A", "(n=3)", "B", "(n=4)"]
    rows = lines[1:]
    assert len(rows) == 4 and rows[0].startswith("10-32 ms")
    counts = [[int(t) for t in r.split() if t.isdigit()] for r in rows]
    assert [c[0] for c in counts] == [2, 1, 0, 0] and [c[1] for c in counts] == [1, 0, 0, 3]
    assert histogram([], []) == ["(no successful requests)"]
    assert len(histogram([0.5], [0.5])) == 2  # one bin when every value is equal


# ---------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--fail-on", "ttft_p95_ratio=1.2"], "--fail-on: 'ttft_p95_ratio=1.2' is not a rule"),
        (["--fail-on", "quality_drop>0.05"], "a quality rule needs prompts with an `expected`"),
        (["--a-set", "ttl=5m"], "the rig sets every guard's ttl to its deadline: use --ttl"),
        (["--b-set", "quant"], "'quant' is not KEY=VALUE"),
        (["--keep-alive", "5s"], "a rig needs at least 10 s"),
        (["--ttl", "30s"], "the rig's deadline must be at least 60 s"),
        (["--ttl", "soon"], "is not a duration"),
        (["--b-set", "quant=fp17"], "quant"),
    ],
)
def test_bad_input_exits_2_before_anything_is_rented(tmp_path, capsys, extra, words):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    code = main(["ab", "smollm2-135m", "smollm2-135m", "--prompts", str(prompts), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err and "Traceback" not in err


def test_same_gpu_picks_the_model_cheapest_for_the_pair():
    from types import SimpleNamespace

    from orchestrator.abplan import same_gpu
    from orchestrator.errors import NoOfferFitsError

    def cand(gpu, price):
        return SimpleNamespace(offer=SimpleNamespace(gpu=gpu, price_per_hour_usd=price))

    a = [cand("RTX 4090", 0.3), cand("A100 80GB", 1.2), cand("L40S", 0.8)]
    b = [cand("A100 80GB", 1.1), cand("L40S", 0.9), cand("L40S", 0.7)]
    chosen = same_gpu({"a": a, "b": b})
    assert {c.offer.gpu for c in chosen["a"] + chosen["b"]} == {"L40S"}  # 0.8 + 0.7 < 2.3
    assert len(chosen["b"]) == 2
    with pytest.raises(NoOfferFitsError, match="no GPU model serves both sides"):
        same_gpu({"a": [cand("RTX 4090", 0.3)], "b": [cand("H100", 2.0)]})


def test_side_overrides_are_read_as_yaml():
    from orchestrator.abtest import parse_sets

    got = parse_sets(("context_tokens=1024", "providers=[vast, runpod]", "spot=true",
                      "latency.max_ttft_s=1.5", "keep_alive=20m", "image="), "--a-set")
    assert got == {"context_tokens": 1024, "providers": ["vast", "runpod"], "spot": True,
                   "latency.max_ttft_s": 1.5, "keep_alive": "20m", "image": ""}  # fmt: skip


def test_an_unwritable_report_path_is_bad_input(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    code = main(["ab", "smollm2-135m", "smollm2-135m", "--prompts", str(prompts),
                 "--report", str(tmp_path / "missing" / "ab.md")])  # fmt: skip
    assert code == 2 and "--report: cannot write" in capsys.readouterr().err
