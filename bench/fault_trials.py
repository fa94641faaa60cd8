"""Crash and fault campaigns against the fake Vast and RunPod clouds, printed as tables.

    .venv/bin/python bench/fault_trials.py [--kill-trials 50] [--fault-trials 50]
        [--rate 0.2] [--stress-trials 20] [--stress-rate 0.6] [--seed 1]
        [--providers vast,runpod] [--markdown]

Per provider (tests/faults/harness.py does the work; each trial gets a fresh fake cloud
and a fresh deployctl home, and `deployctl` runs as a subprocess):

1. Kill trials: `deployctl up` SIGKILLed at a moment drawn from a seeded RNG (before
   the rent, just after it, while the instance boots, while the model loads), the moment
   found by watching the fake; then ONE `deployctl reap`. Target: no instance left on
   the fake and a journal that agrees with it, in every trial.
2. Fault trials: `deployctl up` while 20 % of all provider API calls fail (500/502/503,
   429, requests held past the client's deadline, dropped connections). Targets: >= 95 %
   of ups ready; every failure exits 1, 3 or 4 with one error line and no traceback;
   no instance leaked (checked after the up, after `down`, and by a last `reap`).
3. Stress trials: the same at 60 %, half of them with a model that never loads (every
   rent must be destroyed again, under faults). No success target: every failure must
   be clean and nothing may leak or be forgotten by the journal.

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.harness import (  # noqa: E402
    KILL_MOMENTS,
    PROVIDERS,
    Trial,
    fault_trial,
    kill_trial,
)


def kill_plan(n: int, seed: int, provider: str) -> list[tuple[str, int]]:
    """n (moment, trial seed) pairs: every moment about as often, in a seeded order."""
    rng = random.Random(f"kill-{seed}-{provider}")
    moments = [KILL_MOMENTS[i % len(KILL_MOMENTS)] for i in range(n)]
    rng.shuffle(moments)
    return [(m, rng.randrange(1 << 30)) for m in moments]


def run(args: argparse.Namespace) -> tuple[list[Trial], list[Trial], list[Trial]]:
    kills: list[Trial] = []
    faults: list[Trial] = []
    stress: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="fault-trials-") as tmp:
        for provider in args.providers:
            for n, (moment, seed) in enumerate(kill_plan(args.kill_trials, args.seed, provider)):
                trial = kill_trial(provider, moment, seed, Path(tmp) / f"k-{provider}-{n}")
                kills.append(trial)
                _progress(trial, n + 1, args.kill_trials)
            for n in range(args.fault_trials):
                seed = args.seed * 100_000 + n
                trial = fault_trial(provider, seed, Path(tmp) / f"f-{provider}-{n}", rate=args.rate)
                faults.append(trial)
                _progress(trial, n + 1, args.fault_trials)
            for n in range(args.stress_trials):
                seed = args.seed * 100_000 + 50_000 + n
                trial = fault_trial(provider, seed, Path(tmp) / f"s-{provider}-{n}",
                                    rate=args.stress_rate, never_ready=n % 2 == 1)  # fmt: skip
                stress.append(trial)
                _progress(trial, n + 1, args.stress_trials)
    return kills, faults, stress


def _progress(trial: Trial, n: int, total: int) -> None:
    mark = "ok" if trial.ok else "PROBLEM: " + "; ".join(trial.problems)
    print(f"  {trial.provider:<6} {trial.kind:<6} {n:>3}/{total} {trial.moment:<17} "
          f"{trial.detail[:60]:<60} {trial.elapsed_s:5.1f} s  {mark}", file=sys.stderr)


class Table:
    def __init__(self, markdown: bool, *headers: str) -> None:
        self.markdown, self.headers, self.rows = markdown, headers, []

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def __str__(self) -> str:
        rows = [list(self.headers), *self.rows]
        if self.markdown:
            lines = ["| " + " | ".join(r) + " |" for r in rows]
            lines.insert(1, "|" + "|".join("---" for _ in self.headers) + "|")
            return "\n".join(lines)
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.headers))]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        return "\n".join(fmt.format(*r) for r in rows)


def kill_table(kills: list[Trial], markdown: bool) -> Table:
    t = Table(markdown, "provider / moment", "trials", "instances rented", "destroyed by reap",
              "left on the fake", "journal disagrees", "stale rent intents", "ok")  # fmt: skip
    groups = [(p, m) for p in PROVIDERS for m in KILL_MOMENTS] + [(p, None) for p in PROVIDERS]
    for provider, moment in [*groups, (None, None)]:
        rows = [k for k in kills if provider in (None, k.provider) and moment in (None, k.moment)]
        if not rows:
            continue
        name = f"{provider} / {moment}" if moment else f"{provider or 'all'} (all moments)"
        left = sum(sum("left on the fake" in p for p in k.problems) for k in rows)
        journal = sum(any("journal" in p or "intent" in p or "bill" in p for p in k.problems)
                      for k in rows)  # fmt: skip
        t.add(name, len(rows), sum(k.instances_created for k in rows),
              sum(k.reaped for k in rows), left, journal, sum(k.stale_intents for k in rows),
              f"{sum(k.ok for k in rows)}/{len(rows)}")  # fmt: skip
    return t


def moment_details(kills: list[Trial], markdown: bool) -> Table:
    t = Table(markdown, "moment", "what the fake / journal showed at the kill", "trials")
    counts = Counter((k.moment, k.detail) for k in kills)
    for (moment, detail), n in sorted(counts.items()):
        t.add(moment, detail, n)
    return t


def fault_table(faults: list[Trial], markdown: bool) -> Table:
    t = Table(markdown, "provider / trials", "trials", "ups ready", "clean failures",
              "unclean failures", "API calls failed (during up)", "instances leaked",
              "downs run again", "up time median / max (s)", "ok")  # fmt: skip
    groups = sorted({(f.provider, f.moment) for f in faults}, key=lambda g: (
        PROVIDERS.index(g[0]), g[1]))  # fmt: skip
    for provider, moment in [*groups, (None, None)]:
        rows = [f for f in faults if provider in (None, f.provider) and moment in (None, f.moment)]
        if not rows:
            continue
        ready = sum(f.up_exit == 0 for f in rows)
        unclean = sum(f.up_exit != 0 and any(_unclean(p) for p in f.problems) for f in rows)
        leaked = sum(any("left on the fake" in p or "last reap" in p or "forgot" in p
                         for p in f.problems) for f in rows)  # fmt: skip
        calls, failed = sum(f.calls_in_up for f in rows), sum(f.faults_in_up for f in rows)
        times = [f.up_s for f in rows]
        t.add(f"{provider} / {moment}" if provider else "all", len(rows),
              f"{ready} ({ready / len(rows):.0%})", len(rows) - ready - unclean, unclean,
              f"{failed}/{calls} ({failed / max(calls, 1):.1%})", leaked,
              sum(f.down_retries for f in rows),
              f"{statistics.median(times):.1f} / {max(times):.1f}",
              f"{sum(f.ok for f in rows)}/{len(rows)}")  # fmt: skip
    return t


def _unclean(problem: str) -> bool:
    return any(word in problem for word in ("not 1/3/4", "traceback", "internal error", "lines"))


def fault_kinds(faults: list[Trial], markdown: bool) -> Table:
    t = Table(markdown, "fault kind", "injected (whole trials: up, down, guards)")
    kinds: Counter = Counter()
    for f in faults:
        kinds.update(f.fault_kinds)
    for kind, n in sorted(kinds.items()):
        t.add(kind, n)
    return t


def failures(faults: list[Trial], markdown: bool) -> Table:
    t = Table(markdown, "provider", "exit", "the one error line", "trials")
    counts = Counter((f.provider, f.up_exit, f.detail) for f in faults if f.up_exit != 0)
    for (provider, code, detail), n in sorted(counts.items(), key=str):
        t.add(provider, code, detail, n)
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kill-trials", type=int, default=50, help="per provider")
    parser.add_argument("--fault-trials", type=int, default=50, help="per provider")
    parser.add_argument("--rate", type=float, default=0.2, help="share of API calls failing")
    parser.add_argument("--stress-trials", type=int, default=20, help="per provider")
    parser.add_argument("--stress-rate", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--markdown", action="store_true", help="tables as Markdown")
    args = parser.parse_args()
    args.providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    started = time.monotonic()
    kills, faults, stress = run(args)
    md = args.markdown
    print(f"fault trials, seed {args.seed}: {len(kills)} kill trials, {len(faults)} trials "
          f"with {args.rate:.0%} of API calls failing, {len(stress)} with "
          f"{args.stress_rate:.0%} ({time.monotonic() - started:.0f} s)\n")
    if kills:
        print("SIGKILL at a random moment, then one `deployctl reap`\n")
        print(kill_table(kills, md), "\n")
        print(moment_details(kills, md), "\n")
    for title, trials in ((f"{args.rate:.0%} of provider API calls failing", faults),
                          (f"stress: {args.stress_rate:.0%} failing", stress)):  # fmt: skip
        if trials:
            print(title + "\n")
            print(fault_table(trials, md), "\n")
            print(fault_kinds(trials, md), "\n")
            if any(f.up_exit != 0 for f in trials):
                print(failures(trials, md), "\n")
    problems = [t for t in kills + faults + stress if not t.ok]
    for t in problems:
        print(f"PROBLEM {t.provider} {t.kind} {t.moment} ({t.detail}): {'; '.join(t.problems)}")
    ready = sum(f.up_exit == 0 for f in faults)
    missed = bool(problems) or (faults and ready < 0.95 * len(faults))
    targets = "every target met" if not missed else "TARGET MISSED"
    print(f"{targets}: kill trials clean {sum(k.ok for k in kills)}/{len(kills)}; "
          f"fault trials ready {ready}/{len(faults)}, clean {sum(f.ok for f in faults)}/"
          f"{len(faults)}; stress trials clean {sum(f.ok for f in stress)}/{len(stress)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
