"""Which mode is cheaper: traffic parsing, the published figures, cold starts, break-even."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from orchestrator.cli import main
from orchestrator.errors import BadInputError
from orchestrator.serverless import choose_pool, project_usd
from orchestrator.sizing import bills_for
from orchestrator.traffic import (
    DAYS_PER_MONTH,
    MONTH_S,
    SERVERLESS_PRICES,
    Mode,
    Traffic,
    compare,
    keepalive_billed_s,
    parse_traffic,
    serverless_pool,
    serverless_usd,
)


def test_published_serverless_figure_a6000():
    """3,000 requests x 8.5 s on a per-second A6000 is about $8.67 a month."""
    pool, usd_per_s = serverless_pool("RTXA6000")
    assert pool == "AMPERE_48" and usd_per_s == SERVERLESS_PRICES["AMPERE_48"][0]
    usd = serverless_usd(3000, 8.5, usd_per_s, idle_s=0, cold_start_s=0)
    assert usd == pytest.approx(8.67, abs=0.005)


def test_published_always_on_t4():
    """A 24/7 T4 (HF Endpoints / AWS / Azure, $0.50-0.52/h) is about $360-380 a month."""
    assert 360 <= bills_for(0.50).always_on_month_usd <= 380
    t4 = Mode("always-on", "hf", "T4", 1, "$0.500/h", 8.5, usd_per_h=0.50)
    assert 360 <= t4.monthly(3000)[0] <= 380


@pytest.mark.parametrize(("text", "per_month", "seconds", "tokens"), [
    ("3000 req/month, 8.5 s", 3000, 8.5, None),
    ("3,000 req/month, 8.5s/req", 3000, 8.5, None),
    ("100 req/day, 500 tok/req", 100 * DAYS_PER_MONTH, None, 500),
    ("2 req/h; 12 seconds", 2 * 730, 12.0, None),
])
def test_parse_traffic(text, per_month, seconds, tokens):
    t = parse_traffic(text)
    assert t.requests_per_month == pytest.approx(per_month)
    assert t.gpu_s_per_request == seconds and t.tokens_per_request == tokens


@pytest.mark.parametrize("text", ["", "3000 req/month", "8.5 s", "0 req/day, 1 s",
                                  "lots of traffic", "3000 req/year, 2 s",
                                  "... req/day, 1 s", "9" * 400 + " req/day, 1 s",
                                  "10 req/day, 1.2.3 s"])
def test_parse_traffic_refuses(text):
    with pytest.raises(BadInputError):
        parse_traffic(text)


def test_tokens_become_seconds_with_the_decode_speed():
    t = parse_traffic("100 req/day, 500 tok/req")
    speed = SimpleNamespace(decode_tok_s_single=50.0, ttft_s=0.5)
    assert t.seconds_per_request(speed) == pytest.approx(10.5)
    with pytest.raises(BadInputError):
        t.seconds_per_request(None)


def test_cold_starts_follow_poisson_gaps():
    n = 100 * DAYS_PER_MONTH  # 100 a day
    keep = 900.0
    billed, colds = keepalive_billed_s(n, 8.5, keep, 300.0)
    lam = n / MONTH_S
    assert colds / DAYS_PER_MONTH == pytest.approx(100 * math.exp(-lam * keep))
    expected = n * (8.5 + (1 - math.exp(-lam * keep)) / lam + math.exp(-lam * keep) * 300)
    assert billed == pytest.approx(expected)
    # heavy traffic: never more than 24/7, (almost) never a cold start
    billed, colds = keepalive_billed_s(1e7, 8.5, keep, 300.0)
    assert billed == MONTH_S and colds < 1e-6


def _candidate(provider: str, gpu: str, usd_per_h: float):
    offer = SimpleNamespace(provider=provider, gpu=gpu, gpu_count=1,
                            price_per_hour_usd=usd_per_h)
    return SimpleNamespace(offer=offer, sizing=None)


def test_compare_ranks_modes_and_finds_break_even():
    cands = [_candidate("vast", "RTXA6000", 0.40), _candidate("runpod", "RTXA6000", 0.49),
             _candidate("runpod", "T4", 0.30)]
    report = compare(parse_traffic("3000 req/month, 8.5 s"), cands, keep_alive_s=900)
    rows = report.rows
    assert rows[0]["mode"] == "serverless" and rows[0]["pool"] == "AMPERE_48"
    assert [r["monthly_usd"] for r in rows] == sorted(r["monthly_usd"] for r in rows)
    kinds = {(r["mode"], r["provider"]) for r in rows}
    assert {("always-on", "vast"), ("keep-alive", "vast"), ("always-on", "runpod")} <= kinds
    for r in rows:
        assert r["usd_per_1000_requests"] == pytest.approx(r["monthly_usd"] / 3, abs=0.01)
        if r["mode"] == "always-on":
            assert r["cold_starts_per_day"] == 0
    # the cheapest mode flips from serverless to a pod as traffic grows
    assert report.break_even, report.rows
    flip = report.break_even[0]
    assert flip["below"].startswith("serverless")
    n = flip["requests_per_month"]
    below = compare(Traffic(n * 0.9, 8.5), cands, keep_alive_s=900).rows[0]
    above = compare(Traffic(n * 1.1, 8.5), cands, keep_alive_s=900).rows[0]
    assert below["mode"] == "serverless" and above["mode"] != "serverless"
    json.dumps(report.as_json())  # JSON-ready


def test_serverless_projection_and_pool_choice():
    cands = [_candidate("runpod", "RTXA6000", 0.49), _candidate("runpod", "RTX4090", 0.69),
             _candidate("runpod", "T4", 0.2)]
    assert choose_pool(cands).pool == "ADA_24"  # the cheapest per second that fits
    choice = choose_pool(cands[:1])
    assert choice.pool == "AMPERE_48"
    usd, busy = project_usd(choice.usd_per_s, ttl_s=3600, traffic=None)
    assert busy == 3600 and usd == pytest.approx(0.00034 * 3600)
    usd, busy = project_usd(choice.usd_per_s, ttl_s=0, traffic="3000 req/month, 8.5 s")
    assert usd == pytest.approx(8.67, abs=0.005)


def test_plan_traffic_cli_json(catalog_dir, capsys):
    code = main(["plan", "llama-3.1-8b", "--catalog", str(catalog_dir),
                 "--traffic", "3000 req/month, 8.5 s", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    traffic = json.loads(out)["traffic"]
    assert traffic["requests_per_month"] == 3000
    modes = {r["mode"] for r in traffic["modes"]}
    assert modes == {"always-on", "keep-alive", "serverless"}
    assert traffic["serverless_prices_source"] and traffic["break_even"]
    code = main(["plan", "llama-3.1-8b", "--catalog", str(catalog_dir), "--traffic", "soon"])
    assert code == 2
    code = main(["plan", "llama-3.1-8b", "--catalog", str(catalog_dir),
                 "--traffic", "100 req/day, 500 tok/req"])
    out = capsys.readouterr().out
    assert code == 0 and "Which mode is cheaper" in out and "break-even" in out


def test_serverless_prices_are_runpods_documented_flex_rates():
    """RunPod docs (serverless/pricing.mdx, 'Pricing table (per second)', Flex column):
    every documented pool at its documented price, and nothing undocumented."""
    from orchestrator.traffic import SERVERLESS_PRICES

    documented = {  # GPU names as our table normalises them -> flex $/s
        "H200-SXM": 0.00155, "A100-SXM4-80GB": 0.00076, "H100-SXM": 0.00116,
        "RTXA6000": 0.00034, "A40": 0.00034, "L40": 0.00053, "L40S": 0.00053,
        "RTX6000-Ada": 0.00053, "L4": 0.00019, "RTXA5000": 0.00019, "RTX3090": 0.00019,
        "RTX4090": 0.00031, "RTXA4000": 0.00016, "RTXA4500": 0.00016, "RTX4000-Ada": 0.00016,
    }  # fmt: skip
    ours = {gpu: price for price, gpus in SERVERLESS_PRICES.values() for gpu in gpus}
    for gpu, price in documented.items():
        assert ours[gpu] == price, gpu
    assert set(ours) - set(documented) <= {"A100-PCIE-80GB", "H100-PCIE", "H100-NVL",
                                           "H200-NVL"}  # fmt: skip
