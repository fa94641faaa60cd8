"""deployctl's command line: click commands only; the work happens in the modules they call.

Heavy imports (pydantic models, rich, providers) happen inside the commands, so that
`deployctl --help` starts fast. Exit codes are mapped once, in `main`.
"""

from __future__ import annotations

import functools
import gc
import importlib
import os
import sys
from types import ModuleType

import click

QUANTS = ("fp16", "bf16", "fp8", "int8", "awq", "gptq", "q4_0", "q4_1", "q4_k_m", "q8_0", "f16")
ENGINES = ("vllm", "tgi", "llamacpp")


class _Finite(click.FloatRange):
    """A float range that also refuses nan (inf is outside every bounded range)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number.", param, ctx)
        return number


POSITIVE = _Finite(min=0, min_open=True, max=1e9)
NON_NEGATIVE = _Finite(min=0, max=1e9)
COUNT = click.IntRange(min=1, max=1_000_000)


def _load(module: str) -> ModuleType:
    """Import a command's module (and with it pydantic, the models, the providers) with
    the cyclic GC paused, then freeze what it loaded: imports build long-lived objects
    only, and the collections they set off cost `up` ~30 ms of its start-up and exit
    (bench/lifecycle_speed.py). Later garbage is collected as usual."""
    gc.disable()
    try:
        return importlib.import_module(f"{__package__}.{module}")
    finally:
        gc.freeze()
        gc.enable()


def _provider_option(f):
    return click.option(
        "--provider",
        "providers",
        multiple=True,
        metavar="NAME",
        help="vast, runpod, skypilot or local (repeat or comma-separate). Default: config.",
    )(f)


def _catalog_option(f):
    return click.option(
        "--catalog",
        "catalog_dir",
        type=click.Path(exists=True),
        help="Read SkyPilot-format price catalog CSVs from DIR instead of live APIs.",
    )(f)


# The flags that override a task field, shared by `plan` and `up`: option -> task field.
_TASK_FLAGS = {
    "quant": "quant", "engine": "engine", "context": "context_tokens",
    "concurrency": "concurrency", "min_tps": "latency.min_decode_tok_s",
    "max_ttft": "latency.max_ttft_s", "max_price": "max_price_per_hour_usd", "spot": "spot",
    "regions": "regions",
}  # fmt: skip


def _task_options(f):
    """Add the task-override flags; the command gets them as one `overrides` dict."""

    @functools.wraps(f)
    def command(**kwargs):
        overrides = {field: kwargs.pop(flag) for flag, field in _TASK_FLAGS.items()}
        overrides["regions"] = list(overrides["regions"]) or None
        return f(overrides=overrides, **kwargs)

    options = [
        click.option("--quant", type=click.Choice(QUANTS), help="Override the quantization."),
        click.option("--engine", type=click.Choice(ENGINES), help="Override the task's engine."),
        click.option("--context", type=COUNT, help="Context length, tokens."),
        click.option("--concurrency", type=COUNT, help="Concurrent requests to plan for."),
        click.option("--min-tps", type=POSITIVE, help="Minimum decode tokens/s per request."),
        click.option("--max-ttft", type=POSITIVE, help="Maximum time to first token, seconds."),
        click.option("--max-price", type=POSITIVE, help="Maximum price per hour, USD."),
        click.option("--spot/--on-demand", "spot", default=None,
                     help="Only spot or only on-demand."),
        click.option("--region", "regions", multiple=True, help="Region (substring)."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deployctl")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a setting for this command (e.g. --set budget.monthly=30).")
def cli(settings) -> None:
    """Put an LLM endpoint on the cheapest GPU that truly serves it, and prove it is gone."""
    pairs = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        pairs[key.strip()] = value
    if pairs or "orchestrator.config" in sys.modules:  # keep `--help` from importing it
        from .config import set_flag_overrides

        set_flag_overrides(pairs)


@cli.command()
@click.option("--gpu", "gpus", multiple=True, metavar="NAME", help="Only these GPUs (any alias).")
@click.option("--min-vram", type=NON_NEGATIVE, help="Minimum VRAM per GPU, GiB.")
@click.option("--max-price", type=POSITIVE, help="Maximum price per hour, USD (whole offer).")
@_provider_option
@click.option("--spot/--on-demand", "spot", default=None, help="Only spot or only on-demand.")
@click.option("--region", "regions", multiple=True, help="Region (substring, e.g. us-east).")
@click.option("--gpu-count", type=COUNT, help="Exactly this many GPUs.")
@click.option("--sort", type=click.Choice(["price", "vram", "price-per-gib"]), default="price")
@click.option("--limit", type=COUNT, default=30, show_default=True)
@_catalog_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def offers(
    gpus,
    min_vram,
    max_price,
    providers,
    spot,
    regions,
    gpu_count,
    sort,
    limit,
    catalog_dir,
    as_json,
) -> None:
    """List GPU offers from every provider at once, cheapest first."""
    commands = _load("commands")

    commands.offers_command(
        gpus=gpus,
        min_vram=min_vram,
        max_price=max_price,
        providers=providers,
        spot=spot,
        regions=regions,
        gpu_count=gpu_count,
        sort=sort,
        limit=limit,
        catalog_dir=catalog_dir,
        as_json=as_json,
    )


@cli.command()
@click.argument("task")
@_task_options
@_provider_option
@_catalog_option
@click.option(
    "--sort",
    type=click.Choice(["price", "cost"]),
    default="price",
    help="price: $/h; cost: $/1M output tokens.",
)
@click.option("--top", type=COUNT, default=8, show_default=True, help="Candidates to show.")
@click.option("--requests-per-month", type=COUNT, default=3000, show_default=True)
@click.option(
    "--gpu-seconds",
    type=POSITIVE,
    default=8.5,
    show_default=True,
    help="GPU-seconds per request, for the per-second bill.",
)
@click.option("--explain", is_flag=True, help="Show every rejected offer and why.")
@click.option("--traffic", metavar="TEXT",
              help='Compare always-on, keep-alive and serverless for this traffic, e.g. '
              '"3000 req/month, 8.5 s" or "100 req/day, 500 tok/req".')
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(
    task,
    overrides,
    providers,
    catalog_dir,
    sort,
    top,
    requests_per_month,
    gpu_seconds,
    explain,
    traffic,
    as_json,
) -> None:
    """Size TASK (a built-in name or a YAML path) and pick the cheapest offer that serves it."""
    commands = _load("commands")

    commands.plan_command(
        task=task,
        overrides=overrides,
        providers=providers,
        catalog_dir=catalog_dir,
        sort=sort,
        top=top,
        requests_per_month=requests_per_month,
        gpu_seconds=gpu_seconds,
        explain=explain,
        as_json=as_json,
        traffic=traffic,
    )


@cli.command()
@click.argument("model")
@click.option("--gpu", required=True, metavar="NAME", help="GPU name (any alias).")
@click.option("--gpu-count", type=COUNT, default=1, show_default=True)
@click.option("--quant", type=click.Choice(QUANTS), help="Default: the task's, else bf16.")
@click.option("--engine", type=click.Choice(ENGINES), help="Default: the task's, else vllm.")
@click.option("--context", type=COUNT, help="Context length, tokens.")
@click.option("--concurrency", type=COUNT, help="Concurrent requests.")
@click.option("--price", type=NON_NEGATIVE, help="Price per hour, USD, for costs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def estimate(model, gpu, gpu_count, quant, engine, context, concurrency, price, as_json) -> None:
    """Size MODEL (task, repo or architecture name) on one GPU configuration; no offers."""
    commands = _load("commands")

    commands.estimate_command(
        model=model,
        gpu=gpu,
        gpu_count=gpu_count,
        quant=quant,
        engine=engine,
        context=context,
        concurrency=concurrency,
        price=price,
        as_json=as_json,
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json) -> None:
    """Model architectures known to the sizer, and the built-in tasks."""
    commands = _load("commands")

    commands.models_command(as_json=as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(as_json) -> None:
    """The GPU table: VRAM, bandwidth, TFLOPS, compute capability, kernels."""
    commands = _load("commands")

    commands.gpus_command(as_json=as_json)


@cli.command()
@click.argument("task")
@_provider_option
@_task_options
@click.option("--keep-alive", metavar="DURATION", help="Idle time before it is destroyed.")
@click.option("--ttl", metavar="DURATION", help="Hard lifetime (e.g. 4h).")
@click.option("--max-attempts", type=COUNT, default=5, show_default=True)
@click.option("--boot-timeout", type=POSITIVE, default=900, show_default=True,
              help="Seconds an instance may take to run.")
@click.option("--ready-timeout", type=POSITIVE, default=1800, show_default=True,
              help="Seconds the model may take to answer.")
@click.option("--override-budget", is_flag=True,
              help="Launch even if the monthly budget refuses it (recorded in the ledger).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--show-key", is_flag=True, help="Include the endpoint key in --json output.")
@click.option("--serverless", is_flag=True,
              help="RunPod Serverless endpoint (workers scale to zero) instead of a pod.")
@click.option("--traffic", metavar="TEXT",
              help='Expected traffic for the serverless budget projection, e.g. '
              '"3000 req/month, 8.5 s" (default: one busy hour).')
def up(task, providers, overrides, keep_alive, ttl, max_attempts, boot_timeout, ready_timeout,
       override_budget, as_json, show_key, serverless, traffic) -> None:
    """Rent the cheapest offer that serves TASK, wait until the model answers, print the
    endpoint and its key. Its guard destroys it when idle or too old. Limits and the
    monthly budget are checked first: a refusal exits 3 and creates nothing."""
    lifecycle_commands = _load("lifecycle_commands")
    from .launcher import LaunchOptions

    lifecycle_commands.up_command(
        task=task,
        overrides={**overrides, "keep_alive": keep_alive, "ttl": ttl},
        providers=providers,
        options=LaunchOptions(
            max_attempts=max_attempts, boot_timeout_s=boot_timeout, ready_timeout_s=ready_timeout
        ),
        as_json=as_json,
        show_key=show_key,
        override_budget=override_budget,
        serverless=serverless,
        traffic=traffic,
    )


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include ended deployments.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(show_all, as_json) -> None:
    """Deployments with provider, GPU, price, age, idle time, state and cost so far."""
    lifecycle_commands = _load("lifecycle_commands")

    lifecycle_commands.status_command(show_all=show_all, as_json=as_json)


@cli.command()
@click.argument("refs", nargs=-1, metavar="[NAME]...")
@click.option("--all", "everything", is_flag=True, help="Every live deployment.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def down(refs, everything, as_json) -> None:
    """Destroy deployments (id, id prefix or task name), verify they are gone, close bills."""
    lifecycle_commands = _load("lifecycle_commands")

    lifecycle_commands.down_command(refs=refs, everything=everything, as_json=as_json)


@cli.command()
@click.argument("ref", metavar="NAME")
@click.option("--tail", type=COUNT, default=200, show_default=True)
def logs(ref, tail) -> None:
    """The last lines of a deployment's guard and engine log."""
    lifecycle_commands = _load("lifecycle_commands")

    lifecycle_commands.logs_command(ref=ref, tail=tail)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be destroyed.")
@_provider_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reap(dry_run, providers, as_json) -> None:
    """Destroy every deployctl instance the journal does not hold as live, and verify."""
    lifecycle_commands = _load("lifecycle_commands")

    lifecycle_commands.reap_command(dry_run=dry_run, providers=providers, as_json=as_json)


@cli.group()
def config() -> None:
    """Show or change settings ($XDG_CONFIG_HOME/deployctl/config.yaml)."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config_show(as_json) -> None:
    """Every setting with where it comes from (default, file, env, flag); never a secret."""
    money_commands = _load("money_commands")

    money_commands.config_show_command(as_json=as_json)


@config.command("set")
@click.argument("key")
@click.argument("value")
def config_set(key, value) -> None:
    """Validate and store one setting (e.g. budget.monthly 20). credentials.* keys go to
    the private credentials file (mode 0600)."""
    money_commands = _load("money_commands")

    money_commands.config_set_command(key=key, value=value)


@cli.command()
@click.option("--month", metavar="YYYY-MM", help="Default: this month (UTC).")
@click.option("--by", type=click.Choice(["task", "provider", "gpu"]),
              help="Group rows; default: one row per deployment.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows on stdout.")
def cost(month, by, as_json, as_csv) -> None:
    """Spend of a month: cost per 1000 requests and per 1M tokens served, cold start, idle
    waste, and the month against the budget."""
    money_commands = _load("money_commands")

    money_commands.cost_command(month=month, by=by, as_json=as_json, as_csv=as_csv)


@cli.group()
def metrics() -> None:
    """Prometheus metrics of the ledger."""


@metrics.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=9108, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
def metrics_serve(port, host) -> None:
    """Serve /metrics: spend, budget ratio, GPU-seconds, cold starts, requests, tokens."""
    money_commands = _load("money_commands")

    money_commands.metrics_command(host=host, port=port)


@cli.command()
@click.argument("task_a", metavar="A")
@click.argument("task_b", metavar="B")
@click.option("--prompts", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON Lines: {prompt|messages, expected?, match?, max_tokens?, id?}.")
@click.option("--requests", type=COUNT, help="Requests per side. Default: one per prompt.")
@click.option("--concurrency", type=COUNT, default=4, show_default=True)
@click.option("--max-tokens", type=COUNT, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Request order and sampling.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Unmeasured requests per side first.")
@click.option("--same-gpu", is_flag=True, help="Both sides on the same GPU model.")
@_provider_option
@click.option("--a-set", multiple=True, metavar="KEY=VALUE", help="Override task A (quant=awq).")
@click.option("--b-set", multiple=True, metavar="KEY=VALUE", help="Override task B.")
@click.option("--keep-alive", metavar="DURATION", help="Both guards' idle limit (>= 10s).")
@click.option("--ttl", metavar="DURATION", default="1h", show_default=True,
              help="The rig's deadline, and every guard's ttl.")
@click.option("--sequential/--parallel", default=None,
              help="Load one side after the other. Default: sequential on one shared host.")
@click.option("--request-timeout", type=POSITIVE, default=300, show_default=True)
@click.option("--max-attempts", type=COUNT, default=5, show_default=True)
@click.option("--boot-timeout", type=POSITIVE, default=900, show_default=True)
@click.option("--ready-timeout", type=POSITIVE, default=1800, show_default=True)
@click.option("--override-budget", is_flag=True, help="Launch above the monthly budget (logged).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Markdown report.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="JSON report; -: stdout")
@click.option("--fail-on", metavar="RULES", help='e.g. "ttft_p95_ratio>1.2,error_rate>0.01".')
def ab(task_a, task_b, prompts, requests, concurrency, max_tokens, seed, warmup, same_gpu,
       providers, a_set, b_set, keep_alive, ttl, sequential, request_timeout,
       max_attempts, boot_timeout, ready_timeout, override_budget, report_path, json_path,
       fail_on) -> None:
    """Deploy A and B, replay the same prompts against both, report latency, cost and
    quality side by side, and destroy both (verified), whatever happens."""
    abtest = _load("abtest")
    from .launcher import LaunchOptions

    abtest.ab_command(abtest.RigOptions(
        task_a=task_a, task_b=task_b, prompts_path=prompts,
        overrides_a=abtest.parse_sets(a_set, "--a-set"),
        overrides_b=abtest.parse_sets(b_set, "--b-set"),
        requests=requests, concurrency=concurrency, max_tokens=max_tokens, seed=seed,
        warmup=warmup, same_gpu=same_gpu, providers=providers, keep_alive=keep_alive, ttl=ttl,
        sequential=sequential, request_timeout_s=request_timeout,
        launch=LaunchOptions(max_attempts=max_attempts, boot_timeout_s=boot_timeout,
                             ready_timeout_s=ready_timeout),
        override_budget=override_budget, report_path=report_path, json_path=json_path,
        fail_on=fail_on,
    ))  # fmt: skip


@cli.group()
def schedule() -> None:
    """Book sessions: the endpoint answers at the start and is gone at the end."""


@schedule.command("add")
@click.argument("task")
@click.option("--at", metavar="TIME", help='Start, e.g. "2026-12-01 14:00" (wall clock in --tz).')
@click.option("--for", "duration", required=True, metavar="DURATION", help="Window, e.g. 3h.")
@click.option("--tz", metavar="ZONE", help="IANA zone (Europe/Paris). Default: this machine's.")
@click.option("--lead", default="auto", show_default=True, metavar="auto|DURATION",
              help="Launch this long before the start; auto: p90 of measured cold starts.")
@click.option("--repeat", metavar="CRON", help='Repeat, e.g. "0 14 * * 2" (read in --tz).')
@click.option("--grace", metavar="DURATION", help="The guard ends it this long after the end "
              "if no tick does (default 2m).")
@_provider_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schedule_add(task, at, duration, tz, lead, repeat, grace, providers, as_json) -> None:
    """Book TASK for a window; budget and limits are checked now and again at its start."""
    schedule_commands = _load("schedule_commands")

    schedule_commands.add_command(task=task, at=at, duration=duration, tz=tz, lead=lead,
                                  repeat=repeat, grace=grace, providers=providers,
                                  as_json=as_json)


@schedule.command("list")
@click.option("--all", "show_all", is_flag=True, help="Removed schedules and every session.")
@click.option("--show-key", is_flag=True, help="Show running sessions' endpoint keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schedule_list(show_all, show_key, as_json) -> None:
    """Schedules and their sessions (times in each schedule's zone)."""
    schedule_commands = _load("schedule_commands")

    schedule_commands.list_command(show_all=show_all, as_json=as_json, show_key=show_key)


@schedule.command("rm")
@click.argument("ref", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schedule_rm(ref, as_json) -> None:
    """Cancel a schedule's upcoming sessions; a running one still ends at its end."""
    schedule_commands = _load("schedule_commands")

    schedule_commands.rm_command(ref=ref, as_json=as_json)


@schedule.command("tick")
@click.option("--now", hidden=True, help="ISO time to act at (tests).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schedule_tick(now, as_json) -> None:
    """Start what is due, end what is over, report it; idempotent, safe to overlap (cron)."""
    schedule_commands = _load("schedule_commands")

    schedule_commands.tick_command(as_json=as_json, now=now)


@schedule.command("run")
@click.option("--interval", type=POSITIVE, default=30, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per tick that acted.")
def schedule_run(interval, as_json) -> None:
    """Tick in the foreground every --interval seconds (systemd, tmux) until SIGTERM."""
    schedule_commands = _load("schedule_commands")

    schedule_commands.run_command(interval_s=interval, as_json=as_json)


@schedule.command("export")
@click.option("--cron", "kind", flag_value="cron", help="A crontab line.")
@click.option("--systemd", "kind", flag_value="systemd", help="A systemd user service.")
@click.option("--github-actions", "kind", flag_value="github", help="A GitHub Actions workflow.")
@click.option("--interval", type=POSITIVE, default=30, show_default=True,
              help="Seconds between ticks (systemd).")
def schedule_export(kind, interval) -> None:
    """Print a ready-to-use snippet that keeps ticks coming."""
    if not kind:
        raise click.UsageError("choose one of --cron, --systemd or --github-actions")
    schedule_commands = _load("schedule_commands")

    schedule_commands.export_command(kind=kind, interval_s=interval)


@cli.group()
def agent() -> None:
    """A warm process that makes every later command start ~0.2 s sooner (opt-in)."""


@agent.command("start")
@click.option("--idle", default="30m", show_default=True, metavar="DURATION",
              help="Exit after this long without a command.")
def agent_start(idle) -> None:
    """Start the agent (detached): later `deployctl` commands run in a fork of it, with
    deployctl already imported. It rents nothing and exits when idle."""
    from . import agent as agent_mod
    from .units import parse_duration_s

    try:
        idle_s = parse_duration_s(idle)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--idle") from None
    info = agent_mod.start(idle_s=float(idle_s))
    verb = "started" if info["started"] else "already running"
    click.echo(f"agent {verb} (pid {info['pid']}); it exits after {idle} without a command")


@agent.command("stop")
def agent_stop() -> None:
    """Stop the agent (commands it is running go on to the end)."""
    from . import agent as agent_mod

    pid = agent_mod.stop()
    click.echo(f"agent stopped (pid {pid})" if pid else "no agent is running")


@agent.command("status")
def agent_status() -> None:
    """Whether an agent runs, and how many commands it is running."""
    from . import agent as agent_mod

    info = agent_mod.status()
    if info is None:
        click.echo("no agent is running")
    else:
        click.echo(f"agent running (pid {info['pid']}), {info['children']} command(s) "
                   f"in flight, idle {info['idle_s']:g} s")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes (DESIGN §7), no tracebacks."""
    # pydantic scans every installed package's entry points for plugins on first use
    # (~25 ms of a command that must start fast); deployctl uses none.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        result = cli.main(args=argv, prog_name="deployctl", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        from .errors import DeployctlError, redact

        if isinstance(exc, DeployctlError):
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            return exc.exit_code
        if os.environ.get("DEPLOYCTL_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {redact(str(exc))}", err=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
