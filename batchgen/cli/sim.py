"""Command: sim (a local Runbase server).

The simulator (aiohttp, PyAV) is imported inside the command, for start-up (``batchgen.cli``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batchgen.cli._app import app, parse_rate
from batchgen.errors import UsageError

if TYPE_CHECKING:
    from batchgen.sim import SimConfig

# batchgen.sim (aiohttp, PyAV) is imported when the command runs: other commands start fast.

_FAULTS = "Faults"
_MONEY = "Money"


def _fraction(name: str, help: str) -> Any:
    return typer.Option(name, min=0.0, max=1.0, help=help, rich_help_panel=_FAULTS)


@app.command(
    "sim",
    help=(
        "Run a local server that behaves like the Runbase runs API (runs, money, rate "
        "limit, lifecycle, faults, real MP4 outputs). The first line printed is the base "
        "URL. Stop it with Ctrl-C or SIGTERM. Counters: GET /_sim/stats; see docs/sim.md.\n\n"
        "Example:\n\n\b\n"
        "  batchgen sim --port 0 --time-scale 0.01 --fail-rate 0.1 &\n"
        "  export RUNBASE_BASE_URL=http://127.0.0.1:PORT  # the line it printed\n"
        "  export RUNBASE_API_KEY=sk-sim-0000000000000000\n"
        "  batchgen run manifests/example.yaml"
    ),
)
def sim(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port; 0 picks a free one.")
    ] = 8787,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            metavar="sk-...",
            help="An accepted API key (repeatable; each has its own balance, window and "
            "runs). Default: the built-in key sk-sim-0000000000000000.",
        ),
    ] = None,
    balance_usd: Annotated[
        float,
        typer.Option(
            "--balance-usd", min=0.0, help="Prepaid balance of each key.", rich_help_panel=_MONEY
        ),
    ] = 1000.0,
    spend_limit_usd: Annotated[
        float | None,
        typer.Option(
            "--spend-limit-usd",
            min=0.0,
            help="Lifetime spend cap of each key (403).",
            rich_help_panel=_MONEY,
        ),
    ] = None,
    usage_quota: Annotated[
        int | None,
        typer.Option(
            "--usage-quota",
            min=0,
            help="Runs each key may create (then 429 USAGE_EXCEEDED).",
            rich_help_panel=_MONEY,
        ),
    ] = None,
    price: Annotated[
        list[str] | None,
        typer.Option(
            "--price",
            metavar="RES/DUR=USD",
            help="Price of one run of that resolution and duration, e.g. 1080p/5=0.60 "
            "(repeatable). Default: the model's price table (1080p/5: 0.484).",
            rich_help_panel=_MONEY,
        ),
    ] = None,
    rate: Annotated[
        str,
        typer.Option(
            "--rate", help="Requests per key in any window, POST and GET together, e.g. 20/10s."
        ),
    ] = "20/10s",
    time_scale: Annotated[
        float,
        typer.Option(
            "--time-scale",
            min=0.0,
            help="Multiplies queue and generation times (0.01: a 41 s run takes 0.4 s).",
        ),
    ] = 1.0,
    fail_rate: Annotated[
        float, _fraction("--fail-rate", "Fraction of runs that end failed (and refunded).")
    ] = 0.0,
    error_rate: Annotated[
        float, _fraction("--error-rate", "Fraction of API requests answered 500.")
    ] = 0.0,
    drop_rate: Annotated[
        float,
        _fraction(
            "--drop-rate",
            "Fraction of API requests whose connection is closed without an answer "
            "(half of the POSTs after the run was created and charged).",
        ),
    ] = 0.0,
    slow_rate: Annotated[
        float, _fraction("--slow-rate", "Fraction of run-creating POSTs answered 0.3 s late.")
    ] = 0.0,
    slow_poll_rate: Annotated[
        float,
        _fraction("--slow-poll-rate", "Fraction of GETs of a run answered 0.3 s late."),
    ] = 0.0,
    cut_rate: Annotated[
        float, _fraction("--cut-rate", "Fraction of file downloads cut off mid-file.")
    ] = 0.0,
    url_ttl: Annotated[
        float,
        typer.Option(
            "--url-ttl",
            min=0.0,
            help="Seconds before output URLs answer 403.",
            rich_help_panel=_FAULTS,
        ),
    ] = 86400.0,
    stale_first_url: Annotated[
        bool,
        typer.Option(
            "--stale-first-url",
            help="The first URLs of each run are already expired.",
            rich_help_panel=_FAULTS,
        ),
    ] = False,
    ignore_idempotency: Annotated[
        bool,
        typer.Option(
            "--ignore-idempotency",
            help="Ignore Idempotency-Key (every POST creates and charges a run).",
            rich_help_panel=_FAULTS,
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random draw.")] = 0,
    tiny_videos: Annotated[
        bool,
        typer.Option(
            "--tiny-videos",
            help="Serve 64x36-ish clips (the asked aspect ratio) instead of the asked "
            "resolution: fast, for tests. The decoder check then notes the size.",
        ),
    ] = False,
) -> None:
    from batchgen.sim import SimConfig

    parsed_rate = parse_rate(rate)
    assert parsed_rate is not None
    try:
        config = SimConfig(
            host=host,
            port=port,
            keys=list(key or []),
            balance_usd=balance_usd,
            spend_limit_usd=spend_limit_usd,
            usage_quota=usage_quota,
            prices_usd=_prices(price or []),
            rate=parsed_rate,
            time_scale=time_scale,
            fail_rate=fail_rate,
            error_rate=error_rate,
            drop_rate=drop_rate,
            slow_rate=slow_rate,
            slow_poll_rate=slow_poll_rate,
            cut_rate=cut_rate,
            url_ttl_s=url_ttl,
            stale_first_url=stale_first_url,
            ignore_idempotency=ignore_idempotency,
            seed=seed,
            tiny_videos=tiny_videos,
        )
    except ValueError as exc:
        raise UsageError(_as_options(str(exc))) from None
    asyncio.run(_serve(config))


def _prices(given: list[str]) -> dict[str, float]:
    out = {}
    for text in given:
        kind, _, usd = text.partition("=")
        try:
            out[kind.strip()] = float(usd)
        except ValueError:
            raise UsageError(f"--price {text!r}: expected RES/DUR=USD, e.g. 1080p/5=0.60") from None
    return out


def _as_options(message: str) -> str:
    """SimConfig's problems name its fields; on the command line, name the options."""
    from batchgen.sim import SimConfig

    fields = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(SimConfig)}
    fields["url_ttl_s"] = "--url-ttl"
    fields["keys"] = "--key"
    fields["prices_usd"] = "--price"
    return re.sub(r"\b[a-z_]+\b", lambda m: fields.get(m.group(), m.group()), message)


async def _serve(config: SimConfig) -> None:
    from batchgen.sim import Simulator

    simulator = Simulator(config)
    try:
        await simulator.start()
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        _print_base_url(simulator.base_url)
        keys = f"{len(config.keys)} keys" if config.keys else "the built-in key"
        print(
            f"batchgen sim: listening on {simulator.base_url} ({keys}, rate "
            f"{config.rate[0]}/{config.rate[1]:g}s, time scale {config.time_scale:g}); "
            "stats at /_sim/stats; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await simulator.close()
    print("batchgen sim: stopped", file=sys.stderr, flush=True)


def _print_base_url(base_url: str) -> None:
    try:
        print(base_url, flush=True)
    except BrokenPipeError:
        # nobody reads stdout: say so instead of serving a URL no one knows
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise UsageError("stdout is closed: nothing can read the base URL") from None
