"""The README's worked example: the plan's choice next to the usual advice, on the snapshot.

    .venv/bin/python bench/worked_example.py [--catalog tests/fixtures/catalog]

For mistral-7b in int4 (AWQ) and qwen-14b in int4 (AWQ), each with the task's own
context, concurrency and latency need, print the planner's choice and the cheapest
on-demand offer of each GPU the usual advice names (RTX 3090/4090 for a 7B int4; A100
40GB or RTX 6000 Ada for a 14B), with $/h, estimated tok/s and $/1M output tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.catalog import read_catalog_dir  # noqa: E402
from orchestrator.models import OfferQuery  # noqa: E402
from orchestrator.offers import matches  # noqa: E402
from orchestrator.planner import make_plan  # noqa: E402
from orchestrator.taskfile import load_task  # noqa: E402

ADVICE = {
    "mistral-7b": ("7B int4: an RTX 3090 or 4090", ["RTX3090", "RTX4090"]),
    "qwen-14b": (
        "14B: an A100 40GB or an RTX 6000 Ada",
        ["A100-SXM4-40GB", "A100-PCIE-40GB", "RTX6000-Ada"],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", default=str(ROOT / "tests" / "fixtures" / "catalog"))
    args = parser.parse_args()
    catalog = read_catalog_dir(args.catalog)
    offers = [o for o in catalog.offers if matches(o, OfferQuery(spot=False))]
    print(f"catalog prices of {catalog.quoted_at:%Y-%m-%d}, on-demand, {len(offers)} offers\n")
    print(
        "| task | offer | $/h | tok/s per request | tok/s total | $/1M output tokens |"
        " fits |\n|---|---|---|---|---|---|---|"
    )
    for name, (advice, gpus) in ADVICE.items():
        task = load_task(name, {"quant": "awq"})
        plan = make_plan(task, offers)
        rows = []
        if plan.chosen:
            rows.append(("**deployctl's choice**", plan.chosen))
        for gpu in gpus:
            mine = [c for c in plan.candidates if c.offer.gpu == gpu and c.offer.gpu_count == 1]
            if mine:
                best = min(mine, key=lambda c: (not c.feasible, c.offer.price_per_hour_usd))
                rows.append((f"advice ({advice})", best))
        for label, c in rows:
            o, speed, cost = c.offer, c.sizing.speed, c.cost
            where = f"{o.provider}/{o.cloud or ''}{'/' if o.cloud else ''}{o.region}"
            print(
                f"| {name} awq | {label}: {o.gpu} on {where} | {o.price_per_hour_usd:.3f} |"
                f" {speed.decode_tok_s_per_request:.0f} | {speed.aggregate_tok_s:.0f} |"
                f" {cost.usd_per_1m_output_tokens:.3f} | {'yes' if c.feasible else 'no'} |"
            )


if __name__ == "__main__":
    main()
