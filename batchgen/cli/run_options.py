"""The options ``run``, ``resume`` and ``retry`` share, as Typer annotations, the help
text they end with, and ``lenient`` (a bad value becomes a problem the run still reports).
``cli.run`` parses with them.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypedDict, TypeVar

import typer

from batchgen.cli._app import finite_option, parse_rate
from batchgen.errors import Problem, UsageError

if TYPE_CHECKING:
    from batchgen.run.options import RunOptions

T = TypeVar("T")

EXIT_CODES_HELP = (
    "Exit codes: 0 every job succeeded; 1 jobs failed (or canceled / held in doubt); "
    "2 bad usage or manifest; 3 stopped by the account (401, 402, 403, USAGE_EXCEEDED); "
    "4 stopped by the budget; 70 internal error (a bug; paid runs kept on record); "
    "75 interrupted (SIGINT/SIGTERM/SIGHUP), --max-runtime reached, API unreachable, "
    "lock held or a state write failed (resumable)."
)


class InDoubt(enum.StrEnum):
    resubmit = "resubmit"
    hold = "hold"


class OnLost(enum.StrEnum):
    fail = "fail"
    resubmit = "resubmit"


BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="API base URL. Default $RUNBASE_BASE_URL, else https://runbase.net.",
        show_default=False,
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--allow-insecure",
        help="Allow a plain http:// --base-url to a host that is not loopback "
        "(the API key then crosses the network unencrypted).",
    ),
]
KeysFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--keys-file",
        help="More API keys, one a line (mode 600); with $RUNBASE_API_KEY(S): the key pool.",
        show_default=False,
    ),
]
RateOpt = Annotated[
    str | None,
    typer.Option("--rate", help="Request limit of the key, e.g. 20/10s (default: manifest)."),
]
ConcOpt = Annotated[
    int | None, typer.Option("--concurrency", min=1, help="Max runs in flight at once.")
]
BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--budget-usd",
        min=0.0,
        callback=finite_option,
        help="Never spend more than this on the batch (USD).",
    ),
]
RuntimeOpt = Annotated[
    float | None,
    typer.Option(
        "--max-runtime",
        min=0.0,
        callback=finite_option,
        help="Stop submitting this many seconds after the start (a --wait-lock wait "
        "included), record what is in flight, exit 75.",
    ),
]
InDoubtOpt = Annotated[
    InDoubt,
    typer.Option(
        "--in-doubt",
        help="A POST whose answer was lost: resend it with the same idempotency key, "
        "or hold it for `batchgen retry --in-doubt`.",
    ),
]
OnLostOpt = Annotated[
    OnLost,
    typer.Option(
        "--on-lost", help="A run the API no longer knows (404): fail the job or resubmit."
    ),
]
WaitLockOpt = Annotated[
    float,
    typer.Option(
        "--wait-lock",
        min=0.0,
        callback=finite_option,
        help="Seconds to wait for another run using the same state database "
        "(0: exit 75 at once, naming it). SQLite only: on PostgreSQL several workers "
        "share a batch and none waits for another.",
    ),
]
LeaseOpt = Annotated[
    float,
    typer.Option(
        "--lease",
        min=1.0,
        max=3600.0,
        callback=finite_option,
        help="PostgreSQL only: seconds this worker's claims last without its heartbeat "
        "(sent every third of it); a killed worker's jobs go to another once it runs out.",
    ),
]
PostsOpt = Annotated[
    int,
    typer.Option(
        "--posts-in-flight",
        min=1,
        max=1000,
        help="POSTs this process may have in flight at once, at most one per key "
        "(default 1). A process killed with POSTs in flight may pay again for each of "
        "them if the service ignores idempotency keys: 1 bounds that to one run per kill; "
        "more lets many keys reach their rate.",
    ),
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option("--log-file", help="Append a JSON-lines log of every change and request."),
]
SummaryOpt = Annotated[
    Path | None,
    typer.Option("--summary-file", help="Write the final JSON summary here (any exit)."),
]
MetricsOpt = Annotated[
    Path | None,
    typer.Option("--metrics-file", help="Write Prometheus textfile metrics here (*.prom)."),
]
NotifyOpt = Annotated[
    str | None, typer.Option("--notify-url", help="POST a JSON notice here when the run ends.")
]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Also check every finished video's sha256 against its record (not only its "
        "size); a damaged one is fetched again from its paid run.",
    ),
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="Keep an HTML report up to date while running.")
]


def lenient(
    problems: list[Problem], parse: Callable[[str | None], T], text: str | None
) -> T | None:
    """``parse(text)``, or None with its problem kept, so the run still reports exit 2
    through --summary-file, --metrics-file and --notify-url (a broken crontab line)."""
    try:
        return parse(text)
    except UsageError as exc:
        problems.extend(exc.problems)
        return None


class KeyArgs(TypedDict):
    api_key: str | None
    api_keys: list[str]
    options: RunOptions


def key_args(key: str | None, options: RunOptions, keys_file: Path | None) -> KeyArgs:
    """``run_batch``'s keys: $RUNBASE_API_KEY (``key``), $RUNBASE_API_KEYS and
    ``--keys-file`` (the key pool; all checked by ``run_batch``, exit 2)."""
    from batchgen.run.keys import split_keys

    more = split_keys(os.environ.get("RUNBASE_API_KEYS"))
    return KeyArgs(
        api_key=key, api_keys=more, options=dataclasses.replace(options, keys_file=keys_file)
    )


def resume_options(
    base_url: str | None,
    rate: str | None,
    concurrency: int | None,
    budget_usd: float | None,
    max_runtime: float | None,
    on_lost: OnLost,
    wait_lock: float,
    log_file: Path | None,
    summary_file: Path | None,
    metrics_file: Path | None,
    notify_url: str | None,
    report: Path | None,
    in_doubt: InDoubt = InDoubt.resubmit,
    verify: bool = False,
    allow_insecure: bool = False,
    lease: float = 30.0,
    posts_in_flight: int = 1,
) -> RunOptions:
    """The options of ``resume`` and ``retry``, from their command lines."""
    from batchgen.run.options import RunOptions

    problems: list[Problem] = []
    return RunOptions(
        base_url=base_url,
        allow_insecure=allow_insecure,
        rate=lenient(problems, parse_rate, rate),
        concurrency=concurrency,
        budget_usd=budget_usd,
        max_runtime_s=max_runtime,
        in_doubt=in_doubt.value,
        on_lost=on_lost.value,
        wait_lock_s=wait_lock,
        lease_s=lease,
        posts_in_flight=posts_in_flight,
        log_file=log_file,
        summary_file=summary_file,
        metrics_file=metrics_file,
        notify_url=notify_url,
        report_path=report,
        progress="auto",
        handle_signals=True,
        problems=problems,
        verify=verify,
    )
