"""deployctl's command line: click commands only; the work happens in the modules they call.

Heavy imports (pydantic models, rich, providers) happen inside the commands, so that
`deployctl --help` starts fast. Exit codes are mapped once, in `main`.
"""

from __future__ import annotations

import os
import sys

import click

QUANTS = ("fp16", "bf16", "fp8", "int8", "awq", "gptq", "q4_0", "q4_1", "q4_k_m", "q8_0", "f16")
ENGINES = ("vllm", "tgi", "llamacpp")
POSITIVE = click.FloatRange(min=0, min_open=True)
COUNT = click.IntRange(min=1)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deployctl")
def cli() -> None:
    """Put an LLM endpoint on the cheapest GPU that truly serves it, and prove it is gone."""


@cli.command()
@click.option("--gpu", "gpus", multiple=True, metavar="NAME", help="Only these GPUs (any alias).")
@click.option("--min-vram", type=click.FloatRange(min=0), help="Minimum VRAM per GPU, GiB.")
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
    from . import commands

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
@click.option("--quant", type=click.Choice(QUANTS), help="Override the task's quantization.")
@click.option("--engine", type=click.Choice(ENGINES), help="Override the task's engine.")
@click.option("--context", type=COUNT, help="Context length, tokens.")
@click.option("--concurrency", type=COUNT, help="Concurrent requests to plan for.")
@click.option("--min-tps", type=POSITIVE, help="Minimum decode tokens/s per request.")
@click.option("--max-ttft", type=POSITIVE, help="Maximum time to first token, seconds.")
@click.option("--max-price", type=POSITIVE, help="Maximum price per hour, USD.")
@_provider_option
@click.option("--spot/--on-demand", "spot", default=None, help="Only spot or only on-demand.")
@click.option("--region", "regions", multiple=True, help="Region (substring).")
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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(
    task,
    quant,
    engine,
    context,
    concurrency,
    min_tps,
    max_ttft,
    max_price,
    providers,
    spot,
    regions,
    catalog_dir,
    sort,
    top,
    requests_per_month,
    gpu_seconds,
    explain,
    as_json,
) -> None:
    """Size TASK (a built-in name or a YAML path) and pick the cheapest offer that serves it."""
    from . import commands

    commands.plan_command(
        task=task,
        overrides={
            "quant": quant,
            "engine": engine,
            "context_tokens": context,
            "concurrency": concurrency,
            "latency.min_decode_tok_s": min_tps,
            "latency.max_ttft_s": max_ttft,
            "max_price_per_hour_usd": max_price,
            "spot": spot,
            "regions": list(regions) or None,
        },
        providers=providers,
        catalog_dir=catalog_dir,
        sort=sort,
        top=top,
        requests_per_month=requests_per_month,
        gpu_seconds=gpu_seconds,
        explain=explain,
        as_json=as_json,
    )


@cli.command()
@click.argument("model")
@click.option("--gpu", required=True, metavar="NAME", help="GPU name (any alias).")
@click.option("--gpu-count", type=COUNT, default=1, show_default=True)
@click.option("--quant", type=click.Choice(QUANTS), help="Default: the task's, else bf16.")
@click.option("--engine", type=click.Choice(ENGINES), help="Default: the task's, else vllm.")
@click.option("--context", type=COUNT, help="Context length, tokens.")
@click.option("--concurrency", type=COUNT, help="Concurrent requests.")
@click.option("--price", type=click.FloatRange(min=0), help="Price per hour, USD, for costs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def estimate(model, gpu, gpu_count, quant, engine, context, concurrency, price, as_json) -> None:
    """Size MODEL (task, repo or architecture name) on one GPU configuration; no offers."""
    from . import commands

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
    from . import commands

    commands.models_command(as_json=as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(as_json) -> None:
    """The GPU table: VRAM, bandwidth, TFLOPS, compute capability, kernels."""
    from . import commands

    commands.gpus_command(as_json=as_json)


@cli.command()
@click.argument("task")
@_provider_option
@click.option("--quant", type=click.Choice(QUANTS), help="Override the task's quantization.")
@click.option("--engine", type=click.Choice(ENGINES), help="Override the task's engine.")
@click.option("--context", type=COUNT, help="Context length, tokens.")
@click.option("--concurrency", type=COUNT, help="Concurrent requests to plan for.")
@click.option("--min-tps", type=POSITIVE, help="Minimum decode tokens/s per request.")
@click.option("--max-ttft", type=POSITIVE, help="Maximum time to first token, seconds.")
@click.option("--max-price", type=POSITIVE, help="Maximum price per hour, USD.")
@click.option("--spot/--on-demand", "spot", default=None, help="Only spot or only on-demand.")
@click.option("--region", "regions", multiple=True, help="Region (substring).")
@click.option("--keep-alive", metavar="DURATION", help="Idle time before it is destroyed.")
@click.option("--ttl", metavar="DURATION", help="Hard lifetime (e.g. 4h).")
@click.option("--max-attempts", type=COUNT, default=5, show_default=True)
@click.option("--boot-timeout", type=POSITIVE, default=900, show_default=True,
              help="Seconds an instance may take to run.")
@click.option("--ready-timeout", type=POSITIVE, default=1800, show_default=True,
              help="Seconds the model may take to answer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--show-key", is_flag=True, help="Include the endpoint key in --json output.")
def up(task, providers, quant, engine, context, concurrency, min_tps, max_ttft, max_price, spot,
       regions, keep_alive, ttl, max_attempts, boot_timeout, ready_timeout, as_json,
       show_key) -> None:
    """Rent the cheapest offer that serves TASK, wait until the model answers, print the
    endpoint and its key. Its guard destroys it when idle or too old."""
    from . import lifecycle_commands
    from .launcher import LaunchOptions

    lifecycle_commands.up_command(
        task=task,
        overrides={
            "quant": quant, "engine": engine, "context_tokens": context,
            "concurrency": concurrency, "latency.min_decode_tok_s": min_tps,
            "latency.max_ttft_s": max_ttft, "max_price_per_hour_usd": max_price, "spot": spot,
            "regions": list(regions) or None, "keep_alive": keep_alive, "ttl": ttl,
        },
        providers=providers,
        options=LaunchOptions(
            max_attempts=max_attempts, boot_timeout_s=boot_timeout, ready_timeout_s=ready_timeout
        ),
        as_json=as_json,
        show_key=show_key,
    )


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include ended deployments.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(show_all, as_json) -> None:
    """Deployments with provider, GPU, price, age, idle time, state and cost so far."""
    from . import lifecycle_commands

    lifecycle_commands.status_command(show_all=show_all, as_json=as_json)


@cli.command()
@click.argument("refs", nargs=-1, metavar="[NAME]...")
@click.option("--all", "everything", is_flag=True, help="Every live deployment.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def down(refs, everything, as_json) -> None:
    """Destroy deployments (id, id prefix or task name), verify they are gone, close bills."""
    from . import lifecycle_commands

    lifecycle_commands.down_command(refs=refs, everything=everything, as_json=as_json)


@cli.command()
@click.argument("ref", metavar="NAME")
@click.option("--tail", type=COUNT, default=200, show_default=True)
def logs(ref, tail) -> None:
    """The last lines of a deployment's guard and engine log."""
    from . import lifecycle_commands

    lifecycle_commands.logs_command(ref=ref, tail=tail)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be destroyed.")
@_provider_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reap(dry_run, providers, as_json) -> None:
    """Destroy every deployctl instance the journal does not hold as live, and verify."""
    from . import lifecycle_commands

    lifecycle_commands.reap_command(dry_run=dry_run, providers=providers, as_json=as_json)


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
