"""Commands: run, resume, retry, cancel. Parsing only; the work is in batchgen.run.runner.

The runner and the store are imported inside each command, for start-up (``batchgen.cli``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from batchgen.cli._app import DbOption, JsonOption, app, parse_date
from batchgen.cli.run_options import (
    EXIT_CODES_HELP,
    BaseUrlOpt,
    BudgetOpt,
    ConcOpt,
    InDoubt,
    InDoubtOpt,
    InsecureOpt,
    KeysFileOpt,
    LeaseOpt,
    LogFileOpt,
    MetricsOpt,
    NotifyOpt,
    OnLost,
    OnLostOpt,
    PostsOpt,
    RateOpt,
    ReportOpt,
    RuntimeOpt,
    SummaryOpt,
    VerifyOpt,
    WaitLockOpt,
    key_args,
    lenient,
    resume_options,
)
from batchgen.errors import ExitCode, Problem, UsageError
from batchgen.redact import redact_text
from batchgen.store.reader import DEFAULT_DB
from batchgen.textsafe import printable, printable_json, printable_lines

if TYPE_CHECKING:
    from batchgen.events import RunSummary

# batchgen.run.runner (aiohttp, PyAV, the engine) is imported inside the commands that run
# a batch, and the store (SQLAlchemy) inside `cancel`, so that `batchgen status`,
# `plan` and `--help` start fast.


def _key() -> str | None:
    # run_batch checks it first thing (exit 2, nothing written), and still tells the
    # summary file / notification why it stopped.
    return os.environ.get("RUNBASE_API_KEY")


def _finish(summary: RunSummary, as_json: bool) -> None:
    if as_json:
        print(printable_json(json.dumps(summary.to_json(), indent=2, sort_keys=True)))
    if summary.exit_code == ExitCode.USAGE:
        print(f"batchgen: {printable_lines(redact_text(summary.reason))}", file=sys.stderr)
    elif not as_json and not summary.out_dir:  # never reached its batch (database locked)
        print(
            printable(
                # no batch name when it failed before finding its batch
                f"batchgen: {summary.batch + ': ' if summary.batch else ''}"
                f"{redact_text(summary.reason)}; exit {summary.exit_code}"
            ),
            file=sys.stderr,
        )
    elif not as_json:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items()))
        where = f"outputs in {summary.out_dir}; " if summary.out_dir else ""
        if summary.repaired:
            where = f"{summary.repaired} missing or damaged video(s) fetched again; {where}"
        print(
            printable(
                f"batchgen: {summary.batch + ': ' if summary.batch else ''}"
                f"{redact_text(summary.reason)} ({counts or 'no jobs'}); "
                f"spent ${summary.spend_micro_usd / 1e6:.2f}; in doubt {summary.in_doubt}; "
                f"{where}exit {summary.exit_code}"
            ),
            file=sys.stderr,
        )
        if summary.maybe_paid_twice:
            print(f"batchgen: {maybe_paid_line(summary)}", file=sys.stderr)
    raise typer.Exit(summary.exit_code)


def maybe_paid_line(summary: RunSummary) -> str:
    """The jobs whose lost POST answers may have charged a second run, and how much."""
    jobs = summary.maybe_paid_twice
    names = ", ".join(f"#{j['idx']} {j['key'][:12]}" for j in jobs[:5])
    more = f" and {len(jobs) - 5} more" if len(jobs) > 5 else ""
    return (
        f"may have been paid twice (POST answers lost): {len(jobs)} job(s), up to "
        f"${summary.possible_micro_usd / 1e6:.2f} more than spent: {names}{more}"
    )


@app.command(epilog=EXIT_CODES_HELP)
def run(
    manifest: Annotated[Path, typer.Argument(help="The YAML manifest.", show_default=False)],
    db: DbOption = Path(DEFAULT_DB),
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: the manifest's).")
    ] = None,
    base_url: BaseUrlOpt = None,
    allow_insecure: InsecureOpt = False,
    keys_file: KeysFileOpt = None,
    rate: RateOpt = None,
    concurrency: ConcOpt = None,
    budget_usd: BudgetOpt = None,
    max_runtime: RuntimeOpt = None,
    in_doubt: InDoubtOpt = InDoubt.resubmit,
    on_lost: OnLostOpt = OnLost.fail,
    date: Annotated[
        str | None,
        typer.Option("--date", help="Evaluate date templates for this day (YYYY-MM-DD)."),
    ] = None,
    max_jobs: Annotated[
        int | None,
        typer.Option(
            "--max-jobs", min=1, help="Refuse a matrix larger than this (default 100,000)."
        ),
    ] = None,
    wait_lock: WaitLockOpt = 0.0,
    lease: LeaseOpt = 30.0,
    posts_in_flight: PostsOpt = 1,
    log_file: LogFileOpt = None,
    summary_file: SummaryOpt = None,
    metrics_file: MetricsOpt = None,
    notify_url: NotifyOpt = None,
    report: ReportOpt = None,
    verify: VerifyOpt = False,
    json_out: JsonOption = False,
) -> None:
    """Expand MANIFEST into jobs (idempotently) and take them all to done.

    Safe to stop at any moment (Ctrl-C, kill -9, reboot): run it again, or
    `batchgen resume`, and it continues where it stopped without paying twice.
    The API key is read from $RUNBASE_API_KEY only, and never stored.

    Example: RUNBASE_API_KEY=sk-... batchgen run manifests/example.yaml --budget-usd 20
    """
    from batchgen.run.runner import run_batch

    key = _key()
    options = resume_options(
        base_url, rate, concurrency, budget_usd, max_runtime, on_lost, wait_lock,
        log_file, summary_file, metrics_file, notify_url, report, in_doubt,
        verify=verify, allow_insecure=allow_insecure, lease=lease,
        posts_in_flight=posts_in_flight,
    )  # fmt: skip
    # `run` only: the manifest's output folder, date and size
    day = lenient(options.problems, parse_date, date)
    options = dataclasses.replace(options, out_dir=out, date=day, max_jobs=max_jobs)
    _finish(run_batch(db, manifest=manifest, **key_args(key, options, keys_file)), json_out)


@app.command(epilog=EXIT_CODES_HELP)
def resume(
    batch: Annotated[
        str | None, typer.Argument(help="Batch name (default: the most recent).")
    ] = None,
    db: DbOption = Path(DEFAULT_DB),
    base_url: BaseUrlOpt = None,
    allow_insecure: InsecureOpt = False,
    keys_file: KeysFileOpt = None,
    rate: RateOpt = None,
    concurrency: ConcOpt = None,
    budget_usd: BudgetOpt = None,
    max_runtime: RuntimeOpt = None,
    in_doubt: InDoubtOpt = InDoubt.resubmit,
    on_lost: OnLostOpt = OnLost.fail,
    wait_lock: WaitLockOpt = 0.0,
    lease: LeaseOpt = 30.0,
    posts_in_flight: PostsOpt = 1,
    log_file: LogFileOpt = None,
    summary_file: SummaryOpt = None,
    metrics_file: MetricsOpt = None,
    notify_url: NotifyOpt = None,
    report: ReportOpt = None,
    verify: VerifyOpt = False,
    json_out: JsonOption = False,
) -> None:
    """Continue a batch from the state database alone (no manifest needed).

    Example: batchgen resume nightly-2024-05-01
    """
    from batchgen.run.runner import run_batch

    key = _key()
    options = resume_options(
        base_url, rate, concurrency, budget_usd, max_runtime, on_lost, wait_lock,
        log_file, summary_file, metrics_file, notify_url, report, in_doubt,
        allow_insecure=allow_insecure, verify=verify, lease=lease,
        posts_in_flight=posts_in_flight,
    )  # fmt: skip
    _finish(run_batch(db, batch=batch, **key_args(key, options, keys_file)), json_out)


@app.command(epilog=EXIT_CODES_HELP)
def retry(
    batch: Annotated[str, typer.Argument(help="Batch name.", show_default=False)],
    failed: Annotated[bool, typer.Option("--failed", help="Re-queue the failed jobs.")] = False,
    in_doubt: Annotated[
        bool,
        typer.Option("--in-doubt", help="Resend held in-doubt jobs (same idempotency key)."),
    ] = False,
    job: Annotated[
        list[str] | None,
        typer.Option(
            "--job", help="With --pay-again: a job key or unique prefix (may be repeated)."
        ),
    ] = None,
    pay_again: Annotated[
        bool,
        typer.Option(
            "--pay-again", help="Submit the --job jobs again although their run was paid."
        ),
    ] = False,
    db: DbOption = Path(DEFAULT_DB),
    base_url: BaseUrlOpt = None,
    allow_insecure: InsecureOpt = False,
    keys_file: KeysFileOpt = None,
    rate: RateOpt = None,
    concurrency: ConcOpt = None,
    budget_usd: BudgetOpt = None,
    max_runtime: RuntimeOpt = None,
    on_lost: OnLostOpt = OnLost.fail,
    wait_lock: WaitLockOpt = 0.0,
    lease: LeaseOpt = 30.0,
    posts_in_flight: PostsOpt = 1,
    log_file: LogFileOpt = None,
    summary_file: SummaryOpt = None,
    metrics_file: MetricsOpt = None,
    notify_url: NotifyOpt = None,
    report: ReportOpt = None,
    verify: VerifyOpt = False,
    json_out: JsonOption = False,
) -> None:
    """Re-queue failed and/or held in-doubt jobs of BATCH, then continue it.

    With neither flag, both. A failed job whose run was paid but whose files could
    not be fetched is fetched again, not paid again; one whose paid run is gone
    (output_lost) is left alone: `--job KEY --pay-again` submits it again (a new
    charge, counted).

    Example: batchgen retry nightly-2024-05-01 --failed
    """
    from batchgen.run.runner import run_batch

    if bool(job) != pay_again:
        raise UsageError(
            [
                Problem(
                    file="--pay-again" if pay_again else "--job",
                    message="--job and --pay-again go together",
                    fix="batchgen retry BATCH --job KEY --pay-again",
                )
            ]
        )
    key = _key()
    if not failed and not in_doubt and not job:
        failed = in_doubt = True
    options = resume_options(
        base_url, rate, concurrency, budget_usd, max_runtime, on_lost, wait_lock,
        log_file, summary_file, metrics_file, notify_url, report,
        verify=verify, allow_insecure=allow_insecure, lease=lease,
        posts_in_flight=posts_in_flight,
    )  # fmt: skip
    summary = run_batch(
        db,
        batch=batch,
        **key_args(key, options, keys_file),
        retry_failed=failed,
        retry_in_doubt=in_doubt,
        pay_again=job or [],
    )
    _finish(summary, json_out)


@app.command()
def cancel(
    batch: Annotated[str, typer.Argument(help="Batch name.", show_default=False)],
    abandon: Annotated[
        bool,
        typer.Option(
            "--abandon",
            help="Also give up runs already paid for and in-doubt jobs (never fetched).",
        ),
    ] = False,
    db: DbOption = Path(DEFAULT_DB),
    json_out: JsonOption = False,
) -> None:
    """Stop submitting new runs of BATCH; queued jobs become canceled.

    A `batchgen run` working on the batch notices within seconds. Runs already paid
    for are still polled and downloaded (by that run, or by `batchgen resume`)
    unless --abandon. A later `batchgen run MANIFEST` re-enables the batch.
    Needs no API key.

    Example: batchgen cancel nightly-2024-05-01
    """
    from batchgen.store.target import postgres_url

    if postgres_url(db) is None and not db.exists():
        raise UsageError(
            [Problem(file=str(db), message="no state database here", fix="point --db at it")]
        )
    from batchgen.store import commands
    from batchgen.store import jobs as store
    from batchgen.store.batches import find_batch
    from batchgen.store.schema import open_db

    engine = open_db(db, create=False)
    found = find_batch(engine, batch)
    assert found.id is not None
    done = commands.cancel(engine, found.id, abandon=abandon, now=time.time())
    counts = {k: v for k, v in store.counts(engine, found.id).items() if v}
    if json_out:
        print(json.dumps({"batch": found.name, "canceled": done, "counts": counts}, indent=2))
        return
    print(
        f"batchgen: {printable(found.name)}: canceled {sum(done.values())} job(s); now "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        file=sys.stderr,
    )
    if not abandon and (counts.get("running") or counts.get("downloading")):
        print(
            "batchgen: paid runs are still fetched by the running `batchgen run`, "
            f"or run `batchgen resume {printable(found.name)}`",
            file=sys.stderr,
        )
