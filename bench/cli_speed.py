"""Wall time of whole `deployctl` processes, printed as a table (medians of N runs).

    .venv/bin/python bench/cli_speed.py [--runs 10] [--offers 10000]

1. `deployctl --help` cold start (target: median < 0.3 s).
2. `deployctl plan qwen-14b --catalog DIR --json` over >= 10,000 catalog offers (target:
   median < 0.5 s for the whole process), next to SkyPilot's own catalog query on the same
   data (`sky.catalog.list_accelerators`, also a whole process), as a ratio.

The 10,000-offer catalog is the snapshot in tests/fixtures/catalog, with rows repeated
under extra region names until the planner sees at least --offers offers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "fixtures" / "catalog"
VENV_BIN = Path(sys.executable).parent
DEPLOYCTL = str(VENV_BIN / "deployctl")


def wall(cmd: list[str], env: dict[str, str] | None = None, runs: int = 10) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if proc.returncode not in (0, 4):
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return times


# SkyPilot 0.14's own reader fails on the snapshot's gcp (host-VM rows filtered out),
# primeintellect (JSON GpuInfo) and shadeform (no MemoryInfo) files, so the comparison
# uses the clouds both tools can read.
CLOUDS = ("aws", "azure", "lambda", "runpod", "vast", "cudo", "nebius", "hyperbolic")


def build_catalog(target_offers: int, dest: Path) -> int:
    """Copy the snapshot's CLOUDS, then repeat rows under new region names until the
    planner sees >= target on-demand offers."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.catalog import read_catalog_dir

    for cloud in CLOUDS:
        shutil.copy(SNAPSHOT / f"{cloud}.csv", dest / f"{cloud}.csv")
    copies = 0

    def on_demand() -> int:
        return sum(not o.spot for o in read_catalog_dir(dest).offers)

    while (count := on_demand()) < target_offers:
        copies += 1
        for name in ("aws.csv", "runpod.csv", "lambda.csv", "azure.csv"):
            src = SNAPSHOT / name
            with src.open(newline="") as fh:
                rows = list(csv.reader(fh))
            header, body = rows[0], rows[1:]
            region = header.index("Region")
            with (dest / name).open("a", newline="") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                for row in body:
                    if len(row) > region:
                        row = list(row)
                        row[region] = f"{row[region]}-copy{copies}"
                        writer.writerow(row)
    return count


def sky_env(catalog: Path, home: Path) -> dict[str, str]:
    """A HOME whose ~/.sky/catalogs/<schema>/<cloud>/vms.csv holds the same data."""
    from providers.skypilot import _installed_schema_version

    version = _installed_schema_version() or "v8"
    for f in catalog.glob("*.csv"):
        if f.stem == "accelerators":
            target = home / ".sky" / "catalogs" / version / "common"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target / "accelerators.csv")
            continue
        target = home / ".sky" / "catalogs" / version / f.stem
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target / "vms.csv")
    return {**os.environ, "HOME": str(home)}


SKY_QUERY = (
    "import sky.catalog as c; r = c.list_accelerators(gpus_only=True, all_regions=True, "
    f"clouds={list(CLOUDS)!r}, require_price=True); "
    "print(sum(len(v) for v in r.values()))"
)


def row(label: str, times: list[float], target: str = "") -> str:
    return (
        f"{label:<58}{statistics.median(times):>9.3f}{min(times):>9.3f}{max(times):>9.3f}  {target}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--offers", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog"
        catalog.mkdir()
        offers = build_catalog(args.offers, catalog)
        env = {**os.environ, "HOME": str(Path(tmp) / "home")}
        help_t = wall([DEPLOYCTL, "--help"], env, args.runs)
        plan_cmd = [
            DEPLOYCTL,
            "plan",
            "qwen-14b",
            "--catalog",
            str(catalog),
            "--json",
            "--provider",
            "vast,runpod,skypilot",
        ]
        plan_t = wall(plan_cmd, env, args.runs)
        out = subprocess.run(plan_cmd, env=env, capture_output=True, text=True).stdout
        considered = json.loads(out)["offers_considered"]
        print(f"{'command (whole process, seconds)':<58}{'median':>9}{'min':>9}{'max':>9}")
        print(row("deployctl --help", help_t, "target median < 0.3 s"))
        print(
            row(
                f"deployctl plan qwen-14b --catalog ({considered} offers)",
                plan_t,
                "target median < 0.5 s",
            )
        )
        sky_python = VENV_BIN / "python"
        try:
            sky_t = wall(
                [str(sky_python), "-c", SKY_QUERY],
                sky_env(catalog, Path(tmp) / "skyhome"),
                max(3, args.runs // 2),
            )
        except SystemExit as exc:
            print(f"SkyPilot catalog query could not run: {exc}")
            return
        print(row("SkyPilot list_accelerators, same catalog", sky_t))
        ratio = statistics.median(sky_t) / statistics.median(plan_t)
        print(
            f"\nSkyPilot's listing / deployctl's plan = {ratio:.1f}x (the plan reads, sizes and "
            f"scores {considered} on-demand offers of the {offers} in the catalog; SkyPilot "
            "only lists them). The plan's median includes its first, uncached catalog read."
        )


if __name__ == "__main__":
    main()
