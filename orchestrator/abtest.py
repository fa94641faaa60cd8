"""A/B rigs: deploy two configurations at once, replay one prompt set against both,
report latency, cost and quality side by side, and always tear both down.

    deployctl ab mistral-7b qwen-14b --prompts prompts.jsonl --fail-on "ttft_p95_ratio>1.2"

The order of a rig:
1. inputs: the prompts, the rules, both tasks (with `--a-set`/`--b-set` overrides); each
   guard's ttl is the rig's deadline (`--ttl`), a backstop should this process die;
2. plans for both (`--same-gpu`: both on the GPU model that is cheapest for the pair);
   the money guardrails admit both together (two live deployments, both projections
   against the budget) before anything is rented;
3. both deploy at the same time through the launcher, one thread each with its own State
   connection; a side that fails cancels the other;
4. once both answer: warm-up requests (not measured), then the same seeded request order
   at the same concurrency against each side (in parallel on separate machines, one after
   the other when both share this host); a keeper sends a one-token request to any side
   idle for a third of its keep-alive, so that no guard ends it mid-rig;
5. teardown, whatever happened (success, failure, Ctrl-C, SIGTERM): each ready side goes
   through `lifecycle.down` (destroy, verify gone, close the bill), then every instance
   either side ever created is looked up again at its provider; the report says so.
Cancelling a side that is still deploying: its providers are wrapped so that their next
call raises `RigCancelled` (a BaseException), which the launcher unwinds like Ctrl-C:
it destroys what it created and verifies it is gone.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .abcontrol import Cancellable, Keeper, RigCancelled, signals_ignored
from .abreport import Side, Summary, side_metrics
from .abrules import comparison, evaluate, parse_rules
from .errors import BadInputError, DeployctlError
from .launcher import Launcher, LaunchOptions, UpResult, destroy_and_verify
from .loadgen import Prompt, RunResult, Target, load_prompts, request_order, run_load
from .threads import Worker, join_threads

__all__ = ["Rig", "RigOptions", "ab_command", "parse_sets"]

MIN_KEEP_ALIVE_S = 10  # the keeper pings at a third of it
MIN_TTL_S = 60
FORBIDDEN_SIDE_KEYS = {"ttl": "the rig sets every guard's ttl to its deadline: use --ttl"}


@dataclass
class RigOptions:
    task_a: str
    task_b: str
    prompts_path: str
    overrides_a: dict[str, Any] = field(default_factory=dict)
    overrides_b: dict[str, Any] = field(default_factory=dict)
    requests: int | None = None  # default: one pass over the prompts
    concurrency: int = 4
    max_tokens: int = 128
    seed: int = 0
    warmup: int = 2
    same_gpu: bool = False
    providers: tuple[str, ...] = ()
    keep_alive: str | None = None  # both sides, unless a side sets keep_alive itself
    ttl: str = "1h"  # the rig's deadline, and every guard's ttl
    sequential: bool | None = None  # None: sequential when both sides share this host
    request_timeout_s: float = 300.0
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    override_budget: bool = False
    report_path: str | None = None
    json_path: str | None = None  # "-": stdout
    fail_on: str | None = None


def parse_sets(items: tuple[str, ...] | list[str], flag: str) -> dict[str, Any]:
    """`key=value` pairs (values read as YAML: 1024, true, [vast], 20m) into overrides."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise BadInputError(flag, f"{item!r} is not KEY=VALUE (e.g. {flag} quant=awq)")
        if key in FORBIDDEN_SIDE_KEYS:
            raise BadInputError(flag, f"{key}: {FORBIDDEN_SIDE_KEYS[key]}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key] = value
    return out


# ---------------------------------------------------------------------------- helpers


class _Narrator:
    """Progress of both sides on stderr, one line per phase, with the rig's clock."""

    def __init__(self) -> None:
        from .render import console

        self.err = console(stderr=True)
        self.started = time.monotonic()

    def __call__(self, side: str, phase: str, detail: str = "") -> None:
        t = time.monotonic() - self.started
        self.err.print(f"{side} → [bold]{phase}[/] {detail} [dim](+{t:.1f} s)[/]", soft_wrap=True)

    def for_side(self, side: str):
        return lambda phase, detail: self(side, phase, detail)


def _sigterm_to_exit(signum: int, frame: Any) -> None:
    raise SystemExit(143)  # unwinds through the rig, which tears both sides down


# ---------------------------------------------------------------------------- the rig


class Rig:
    def __init__(self, opts: RigOptions) -> None:
        from .units import parse_duration_s

        self.opts = opts
        for flag, path in (("--report", opts.report_path), ("--json", opts.json_path)):
            if path and path != "-" and not Path(path).expanduser().resolve().parent.is_dir():
                raise BadInputError(flag, f"cannot write {path!r}: its directory does not exist")
        self.rules = parse_rules(opts.fail_on)
        self.prompts: list[Prompt] = load_prompts(opts.prompts_path)
        if any(r.needs_expected for r in self.rules) and not any(
            p.expected for p in self.prompts
        ):
            raise BadInputError(
                "--fail-on", "a quality rule needs prompts with an `expected` answer, and "
                f"{opts.prompts_path} has none"
            )  # fmt: skip
        try:
            self.ttl_s = parse_duration_s(opts.ttl)
            keep_alive_s = parse_duration_s(opts.keep_alive) if opts.keep_alive else None
        except (ValueError, OverflowError) as exc:
            raise BadInputError("--ttl/--keep-alive", str(exc)) from None
        if self.ttl_s < MIN_TTL_S:
            raise BadInputError("--ttl", f"the rig's deadline must be at least {MIN_TTL_S} s")
        self.requests = opts.requests or len(self.prompts)
        self.order = request_order(len(self.prompts), self.requests, opts.seed)
        self.sides = {
            "a": Side("a", opts.task_a, dict(opts.overrides_a)),
            "b": Side("b", opts.task_b, dict(opts.overrides_b)),
        }
        self.specs = {}
        from .taskfile import load_task

        for name, side in self.sides.items():
            base = {"keep_alive": keep_alive_s} if keep_alive_s is not None else {}
            spec = load_task(side.task, {**base, **side.overrides, "ttl": self.ttl_s})
            if 0 < spec.keep_alive_s < MIN_KEEP_ALIVE_S:
                raise BadInputError(
                    "keep_alive", f"side {name.upper()} has keep_alive {spec.keep_alive_s} s; "
                    f"a rig needs at least {MIN_KEEP_ALIVE_S} s (it pings idle sides at a third)"
                )  # fmt: skip
            self.specs[name] = spec
        self.cancel = threading.Event()
        self.results: dict[str, UpResult] = {}
        self.created: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
        self.say = _Narrator()
        self.keeper = Keeper()
        self.started_at = datetime.now(timezone.utc)
        self.deadline = time.monotonic() + self.ttl_s
        self.margin_s = min(300.0, max(20.0, self.ttl_s * 0.1))  # kept for teardown
        self.load_order = "sequential" if opts.sequential else "parallel"
        self.threads: list[Worker] = []

    # -- planning ---------------------------------------------------------------------
    def plan(self, config) -> dict[str, list]:
        from .abplan import plan_sides, same_gpu

        candidates = plan_sides(self.specs, self.sides, self.opts.providers, config, self.say)
        if self.opts.same_gpu:
            candidates = same_gpu(candidates)
        if self.opts.sequential is None:
            local = any(c[0].offer.provider == "local" for c in candidates.values())
            self.load_order = "sequential" if local else "parallel"
        return candidates

    # -- deploying ----------------------------------------------------------------------
    def _deploy(self, name: str, candidates: list, gate) -> None:
        from providers import get_provider

        side, spec = self.sides[name], self.specs[name]
        side.status = "deploying"
        providers = {
            c.offer.provider: Cancellable(
                get_provider(c.offer.provider), self.cancel, side, self.created[name]
            )
            for c in candidates
        }
        launcher_opts = _capped(self.opts.launch, self.deadline - self.margin_s)
        progress = self.say.for_side(name.upper())
        try:
            # Admitted again under the launch lock (released once the deployment row
            # exists), like `up`: the other side's deployment is counted by then.
            with gate.locked_state() as state:
                gate.admission = gate.admit(state, candidates)
                launcher = Launcher(state, providers, options=launcher_opts, progress=progress)
                result = launcher.up(spec, gate.admission.candidates)
        except RigCancelled:
            side.status, side.error = "cancelled", "cancelled before it was ready"
            return
        except BaseException as exc:
            side.status = "failed"
            side.error = str(exc) if isinstance(exc, DeployctlError) else repr(exc)
            self.cancel.set()  # no comparison without both sides: stop the other
            return
        dep = result.deployment
        self.results[name] = result
        side.status = "ready"
        side.deployment_id, side.provider, side.gpu = dep.id, dep.provider, dep.gpu
        side.gpu_count, side.instance_id = dep.gpu_count, dep.instance_id
        side.model = dep.model_name
        side.price_per_hour_usd = result.actual_price_per_hour_usd
        side.phase_s = dict(result.phase_s)
        if dep.ready_at:
            side.cold_start_s = (dep.ready_at - dep.created_at).total_seconds()
        if spec.keep_alive_s:  # 0: no idle limit, only the ttl
            self.keeper.watch(name, self._target(name), spec.keep_alive_s)

    def _target(self, name: str) -> Target:
        result = self.results[name]
        dep = result.deployment
        return Target(dep.endpoint_url or "", result.key, dep.model_name or "")

    def deploy(self, candidates: dict[str, list], gates: dict[str, Any]) -> None:
        self.keeper.start()
        for name in ("a", "b"):
            args = (name, candidates[name], gates[name])
            t = Worker(self._deploy, *args, name=f"ab-{name}")
            self.threads.append(t)
            t.start()
        if not join_threads(self.threads, deadline=self.deadline - self.margin_s):
            self.cancel.set()
            raise DeployctlError("the rig's deadline came before both sides were ready")
        failed = [s for s in self.sides.values() if s.status != "ready"]
        if failed:
            first = next((s for s in failed if s.status == "failed"), failed[0])
            raise DeployctlError(
                f"side {first.name.upper()} ({first.label}) did not become ready: {first.error}"
            )

    # -- measuring ----------------------------------------------------------------------
    def _exercise(self, name: str) -> None:
        side, target = self.sides[name], self._target(name)
        opts = self.opts
        common = dict(max_tokens=opts.max_tokens, seed=opts.seed,
                      timeout_s=opts.request_timeout_s, stop=self.cancel,
                      deadline=self.deadline - self.margin_s,
                      on_result=lambda _r: self.keeper.touch(name))  # fmt: skip
        if opts.warmup:
            self.say(name.upper(), "warming up", f"{opts.warmup} requests")
            warm = request_order(len(self.prompts), opts.warmup, opts.seed + 1)
            run_load(target, self.prompts, warm, concurrency=min(opts.concurrency, opts.warmup),
                     **common)  # fmt: skip
        self.say(name.upper(), "measuring",
                 f"{len(self.order)} requests, concurrency {opts.concurrency}")  # fmt: skip
        side.run = RunResult(planned=len(self.order))
        run_load(target, self.prompts, self.order, concurrency=opts.concurrency, into=side.run,
                 **common)  # fmt: skip
        m = side_metrics(side)
        self.say(name.upper(), "measured", f"{m['ok_requests']}/{m['requests']} ok")

    def measure(self) -> None:
        if self.load_order == "parallel":
            threads = [Worker(self._exercise, n, name=f"ab-load-{n}") for n in ("a", "b")]
        else:
            threads = [Worker(lambda: (self._exercise("a"), self._exercise("b")), name="ab-load")]
        for t in threads:
            t.start()
        join_threads(threads)

    # -- teardown -----------------------------------------------------------------------
    def teardown(self, reason: str) -> None:
        """End both sides and prove every instance gone; never raises."""
        from .abplan import failed_side_cost
        from .state import State

        self.cancel.set()
        self.keeper.stop.set()
        for side in self.sides.values():  # freeze what was measured
            if side.run is not None:
                side.run = side.run.snapshot()
        join_threads(self.threads)  # deploying sides clean up after themselves
        downs = [Worker(self._down, n, reason, name=f"ab-down-{n}") for n in self.results]
        for t in downs:
            t.start()
        join_threads(downs)
        for name, side in self.sides.items():
            if name not in self.results and side.deployment_id:
                try:
                    with State.open() as state:
                        failed_side_cost(state, side)
                except Exception as exc:  # the cost is a detail; the verification is not
                    side.error = f"{side.error}; its cost is unknown ({exc})"
            self._verify(name)
        for side in self.sides.values():
            self.say(side.name.upper(), "teardown", side.teardown)

    def _down(self, name: str, reason: str) -> None:
        from .lifecycle import down
        from .state import State

        side = self.sides[name]
        try:
            with State.open() as state:
                dep = state.get_deployment(self.results[name].deployment.id)
                if dep is None:
                    raise DeployctlError("the deployment vanished from the state database")
                dep = down(state, dep, reason=reason)
                bill = state.bill(dep.id)
            side.spent_usd = dep.cost_usd
            side.billed_s = bill.billed_s if bill else None
            side.teardown = "destroyed, verified gone"
        except Exception as exc:  # reported, and _verify tries once more
            side.teardown = f"down failed: {exc}"
            side.gone_verified = False

    def _verify(self, name: str) -> None:
        """Every instance this side ever created: gone at its provider, or destroyed now."""
        from providers import get_provider

        from .launcher import LABEL_PREFIX
        from .state import State

        side = self.sides[name]
        left, retried = [], []
        for provider_name, iid in self.created[name]:
            try:
                provider = get_provider(provider_name)
                inst = provider.get(iid)
                listed = any(i.instance_id == iid for i in provider.list_instances(LABEL_PREFIX))
                if (inst is None or inst.state.value == "gone") and not listed:
                    continue
                with State.open() as state:
                    destroy_and_verify(state, provider, side.deployment_id or "ab", iid)
                retried.append(iid)
            except Exception as exc:
                left.append(f"{provider_name} {iid} ({exc})")
        if left:
            side.gone_verified = False
            side.teardown = f"NOT verified gone: {'; '.join(left)}"
            return
        side.gone_verified = True
        if retried:
            side.teardown += f"; destroyed {', '.join(retried)} again, verified gone"
        elif side.teardown.startswith("down failed"):
            side.teardown += "; its instances are verified gone"
        elif self.created[name] and name not in self.results:
            side.teardown = "destroyed by the launcher, verified gone"

    # -- the whole rig ------------------------------------------------------------------
    def run(self) -> Summary:
        from .config import load_config

        status, error, raised = "completed", None, None
        try:
            from .abplan import admit_both

            config = load_config()
            candidates = self.plan(config)
            candidates = {n: c[: self.opts.launch.max_attempts] for n, c in candidates.items()}
            gates = admit_both(self, config, candidates)
            self.deploy(candidates, gates)
            self.measure()
        except (KeyboardInterrupt, SystemExit) as exc:
            status, raised = "interrupted", exc
            how = "SIGTERM" if isinstance(exc, SystemExit) else "Ctrl-C"
            error = f"interrupted ({how})"
        except DeployctlError as exc:
            status, error, raised = "failed", exc.message, exc
        except Exception as exc:  # a bug: still tear down, report, then surface it
            status, error, raised = "failed", f"{type(exc).__name__}: {exc}", exc
        finally:
            with signals_ignored():
                self.teardown("ab rig " + ("finished" if status == "completed" else status))
        summary = Summary(status, self.started_at, datetime.now(timezone.utc), self.config(),
                          self.sides, error=error)  # fmt: skip
        if status == "completed":
            a, b = (side_metrics(self.sides[n]) for n in ("a", "b"))
            silent = [n.upper() for n, m in (("a", a), ("b", b)) if not m["ok_requests"]]
            if silent:
                summary.status = "failed"
                summary.error = f"side {' and '.join(silent)} answered no request"
                raised = DeployctlError(summary.error)
            summary.outcomes = evaluate(self.rules, a, b, comparison(a, b))
        self.summary, self.raised = summary, raised
        return summary

    def config(self) -> dict[str, Any]:
        o = self.opts
        return {
            "prompts_file": str(o.prompts_path),
            "prompts": len(self.prompts),
            "prompts_with_expected": sum(p.expected is not None for p in self.prompts),
            "requests": self.requests,
            "concurrency": o.concurrency,
            "max_tokens": o.max_tokens,
            "seed": o.seed,
            "warmup": o.warmup,
            "same_gpu": o.same_gpu,
            "load_order": self.load_order,
            "ttl_s": self.ttl_s,
            "keep_alive_s": {n: s.keep_alive_s for n, s in self.specs.items()},
            "request_timeout_s": o.request_timeout_s,
            "providers": list(o.providers),
            "fail_on": o.fail_on,
        }


def _capped(options: LaunchOptions, until: float) -> LaunchOptions:
    left = max(until - time.monotonic(), 1.0)
    return LaunchOptions(
        max_attempts=options.max_attempts,
        boot_timeout_s=min(options.boot_timeout_s, left),
        ready_timeout_s=min(options.ready_timeout_s, left),
        poll_s=options.poll_s,
        verify_timeout_s=options.verify_timeout_s,
        hf_token=options.hf_token,
    )


# ---------------------------------------------------------------------------- command


def ab_command(opts: RigOptions) -> None:
    from .abreport import render_json, render_markdown

    rig = Rig(opts)  # bad input fails here, before anything is searched or rented
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_to_exit) if main else None
    try:
        summary = rig.run()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    markdown = render_markdown(summary)
    if opts.report_path:
        Path(opts.report_path).write_text(markdown, encoding="utf-8")
    if opts.json_path:
        doc = render_json(summary)
        if opts.json_path == "-":
            sys.stdout.write(doc)
        else:
            Path(opts.json_path).write_text(doc, encoding="utf-8")
    if opts.json_path != "-":
        sys.stdout.write(markdown)
    sys.stdout.flush()
    if not summary.all_gone:
        raise DeployctlError(
            "the rig could not verify that every instance is gone",
            hint="run `deployctl reap` and check the provider's console",
        )
    if rig.raised is not None:
        raise rig.raised
    if summary.tripped:
        tripped = [f"{o.rule.text} tripped (value {_v(o.value)})" for o in summary.tripped]
        raise DeployctlError("--fail-on: " + ", ".join(tripped))


def _v(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "∞" if value == float("inf") else f"{value:.4g}"
