"""``run_batch``: the library entry point behind ``batchgen run``, ``resume`` and ``retry``.

The order of one run, and why:

1. Check the API key (before anything is written or sent).
2. Load the manifest (``run``) or find the batch (``resume``/``retry``).
3. Take the batch's lock (``batchgen.run.lock``): two processes driving one batch could
   each submit the same job.
4. Sync the manifest into the database (idempotent), re-enable a canceled batch on a
   new ``run``, re-queue on ``retry``.
5. Recover (jobs left ``submitting`` become ``in_doubt``), seed the poll schedule
   from runs that already finished, and hand over to ``RunEngine``.
6. Whatever happened, build the ``RunSummary`` and call ``finished`` on every
   observer (log, summary file, metrics, notification, live report).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import Engine

from batchgen.amounts import MAX_BUDGET_USD, amount_problem
from batchgen.clock import Clock, SystemClock
from batchgen.engine.budget import Budget
from batchgen.engine.collect import make_collect
from batchgen.engine.dispatcher import EngineConfig, RunEngine
from batchgen.engine.schedule import DurationModel, api_duration, run_class
from batchgen.errors import BatchgenError, ExitCode, Problem, StateWriteError, UsageError
from batchgen.events import Observer, RunSummary
from batchgen.files import on_disk, outputs
from batchgen.manifest import images
from batchgen.manifest.loader import DEFAULT_SETTINGS, Overrides, load_manifest, named_files
from batchgen.observe.progress import RequestTally, Snapshot, make_progress
from batchgen.observe.watch import build_observers
from batchgen.redact import redact_text
from batchgen.report.page import LiveReport, report_path_problems
from batchgen.retry import RetryPolicy
from batchgen.run.failures import Guarded, one_line, record_traceback, unexpected
from batchgen.run.lock import abatch_lock
from batchgen.run.options import (
    DEFAULT_BASE_URL,
    RunOptions,
    base_url_from,
    batch_settings,
    check_api_key,
    check_base_url,
    check_out_dir,
    number_problems,
)
from batchgen.run.signals import interrupt_on_signals
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.ratelimit import DEFAULT_RATE, RequestLimiter, settings_rate
from batchgen.runbase.shared_window import SharedWindow
from batchgen.store import batches, ledger
from batchgen.store import jobs as store
from batchgen.store.schema import Batch, open_db

log = logging.getLogger(__name__)


def run_batch(
    db_path: Path,
    *,
    api_key: str | None,
    manifest: Path | None = None,
    batch: str | None = None,
    options: RunOptions | None = None,
    observers: Sequence[Observer] = (),
    retry_failed: bool = False,
    retry_in_doubt: bool = False,
    clock: Clock | None = None,
    pay_again: Sequence[str] = (),
) -> RunSummary:
    """Run (``manifest``) or resume (``batch``, None = most recent) a batch to its end.

    Returns the summary; its ``exit_code`` is what the CLI exits with (2 for a
    missing or malformed key, found before anything is written or sent). Every
    observer gets ``finished(summary)`` whatever happened. ``pay_again``: job keys (or
    unique prefixes) submitted again although they hold a paid run (a new charge).
    """
    return asyncio.run(
        arun_batch(
            db_path,
            api_key=api_key,
            manifest=manifest,
            batch=batch,
            options=options,
            observers=observers,
            retry_failed=retry_failed,
            retry_in_doubt=retry_in_doubt,
            clock=clock,
            pay_again=pay_again,
        )
    )


async def arun_batch(
    db_path: Path,
    *,
    api_key: str | None,
    manifest: Path | None = None,
    batch: str | None = None,
    options: RunOptions | None = None,
    observers: Sequence[Observer] = (),
    retry_failed: bool = False,
    retry_in_doubt: bool = False,
    clock: Clock | None = None,
    pay_again: Sequence[str] = (),
) -> RunSummary:
    opts = options or RunOptions()
    clk: Clock = clock or SystemClock()
    tally = RequestTally()
    # an output naming the database or the manifest is exit 2, and is never written
    opts, clashes = outputs.safe_options(opts, outputs.Protected.of(db_path, manifest))
    # a bad --log-file/--notify-url/... is exit 2, reported by the observers that are fine
    problems: list[Problem] = [
        *opts.problems,
        *clashes,
        *number_problems(opts),
        *report_path_problems(opts.report_path),
    ]
    all_obs: list[Observer] = [*observers, *_unattended_observers(opts, problems)]
    run = _Run(db_path, api_key or "", opts, clk, tally, all_obs)
    started = clk.now()
    # one signal path from start to exit: a signal while the summary, metrics or
    # notification are written (systemctl stop) must not change the exit code they report
    with interrupt_on_signals(run, enabled=opts.handle_signals):
        code, reason = await _outcome(
            run, problems, started, manifest, batch, retry_failed, retry_in_doubt, pay_again
        )
        summary = run.summary(code, reason, started)
        run.finishing = True
        await _finish(run.observers, summary)
    return summary


async def _outcome(
    run: _Run,
    problems: list[Problem],
    started: float,
    manifest: Path | None,
    batch: str | None,
    retry_failed: bool,
    retry_in_doubt: bool,
    pay_again: Sequence[str],
) -> tuple[ExitCode, str]:
    """The exit code and reason of the run, whatever it raised."""
    opts, clk = run.opts, run.clock
    try:
        if problems:
            raise UsageError(problems)
        run.key = check_api_key(run.key or None)
        check_base_url(opts)
        return await run.execute(manifest, batch, retry_failed, retry_in_doubt, pay_again=pay_again)
    except StateWriteError as exc:
        record_traceback(run.observers, exc, clk.now())
        return exc.exit_code, one_line(str(exc))
    except BatchgenError as exc:
        return exc.exit_code, redact_text(str(exc))
    except Exception as exc:  # an error batchgen does not know: 70 (or the database's)
        record_traceback(run.observers, exc, clk.now())
        code, reason = unexpected(exc, run.db_path)
        return code, redact_text(reason)
    except BaseException as exc:  # KeyboardInterrupt, cancelled: report, then let it go on
        summary = run.summary(ExitCode.INTERRUPTED, f"stopped: {type(exc).__name__}", started)
        await _finish(run.observers, summary)
        raise


def _unattended_observers(opts: RunOptions, problems: list[Problem]) -> list[Observer]:
    if not (opts.log_file or opts.summary_file or opts.metrics_file or opts.notify_url):
        return []
    return list(
        build_observers(
            log_file=opts.log_file,
            summary_file=opts.summary_file,
            metrics_file=opts.metrics_file,
            notify_url=opts.notify_url,
            problems=problems,
        )
    )


async def _finish(observers: Sequence[Observer], summary: RunSummary) -> None:
    for obs in observers:
        try:
            obs.finished(summary)
        except Exception as exc:
            log.error("observer %r failed at the end: %s", obs, one_line(str(exc)))
            log.debug("observer failure", exc_info=exc)
        aclose = getattr(obs, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as exc:
                log.error("observer %r failed to close: %s", obs, one_line(str(exc)))
                log.debug("observer failure", exc_info=exc)


class _Run:
    """One invocation: what it opened, so the summary can be built on any exit path."""

    def __init__(
        self,
        db_path: Path,
        key: str,
        opts: RunOptions,
        clock: Clock,
        tally: RequestTally,
        observers: list[Observer],
    ) -> None:
        self.db_path = db_path
        self.key = key
        self.opts = opts
        self.clock = clock
        self.tally = tally
        self.observers = observers
        self.db: Engine | None = None
        self.batch: Batch | None = None
        self.batch_name = ""
        self.engine: RunEngine | None = None
        self.out_dir = ""
        #: the files no output may replace (set once the manifest or batch is known)
        self.protected = outputs.Protected.of(db_path)
        #: succeeded jobs whose files were missing or damaged, sent back to downloading
        self.repairs: list[int] = []
        #: set by a signal: stops a wait for the lock (the engine is told directly)
        self.stop_event = asyncio.Event()
        self.interrupted: str | None = None
        self.finishing = False  # the run is over; the observers are being finished
        #: --max-runtime counts from here: a --wait-lock wait is part of the run's time
        self.began = clock.monotonic()

    def interrupt(self, reason: str, *, hard: bool = False) -> None:
        """SIGINT/SIGTERM: give up waiting for the lock, or wind the engine down."""
        self.interrupted = self.interrupted or reason
        self.stop_event.set()
        if self.engine is not None:
            self.engine.stop("interrupted", reason, hard=hard)

    async def execute(
        self,
        manifest: Path | None,
        batch: str | None,
        retry_failed: bool,
        retry_in_doubt: bool,
        *,
        pay_again: Sequence[str] = (),
    ) -> tuple[ExitCode, str]:
        loaded = None
        if manifest is not None:
            overrides = Overrides(
                out_dir=self.opts.out_dir,
                rate=self.opts.rate,
                concurrency=self.opts.concurrency,
                budget_usd=self.opts.budget_usd,
                max_jobs=self.opts.max_jobs,
            )
            # one date per run, from the injected clock: a run crossing midnight stays one batch
            day = self.opts.date or self.clock.today()
            loaded = load_manifest(manifest, date=day, overrides=overrides)
            self.batch_name = loaded.name
            self.protected = outputs.Protected.of(self.db_path, loaded.path, loaded.sources)
            self._refuse_clashes()
            read = outputs.Protected.of(None, loaded.path, loaded.sources)
            in_the_way = outputs.db_problems(self.db_path, read)
            check_out_dir(loaded.out_dir)
            in_the_way += outputs.folder_problems(loaded.out_dir, self.protected, "--out")
            if in_the_way:
                raise UsageError(in_the_way)
        if loaded is None and not self.db_path.exists():
            raise UsageError(
                [
                    Problem(
                        file=str(self.db_path),
                        message="no state database here",
                        fix="run `batchgen run MANIFEST` first, or point --db at the database",
                    )
                ]
            )
        self.db = db = open_db(self.db_path)
        if loaded is None:
            found = find_batch(db, batch)
            self.batch_name = found.name
            # the files the manifest names exist: only an existing output can be one of them
            named = (
                named_files(found.manifest_path, found.run_date)
                if outputs.any_exists(self.opts)
                else ()
            )
            self.protected = outputs.Protected.of(self.db_path, found.manifest_path, named)
            self._refuse_clashes()
        # waits without blocking the loop, so a signal during --wait-lock ends it cleanly
        async with abatch_lock(
            self.db_path, self.batch_name, wait_s=self.opts.wait_lock_s, stop=self.stop_event
        ):
            if loaded is not None:
                synced = batches.sync_batch(db, loaded)
                # after the sync: its pass over the jobs counted them, warnings come free
                for warning in loaded.warnings:
                    log.warning("%s", warning)
                log.info("%s", synced.describe(loaded.name))
                self.batch = store.get_batch(db, synced.batch_id)
                if self.batch.canceled:
                    store.uncancel(db, synced.batch_id, now=self.clock.now())
                    self.batch = store.get_batch(db, synced.batch_id)
            else:
                self.batch = find_batch(db, self.batch_name)
            assert self.batch.id is not None
            again = _pay_again_ids(db, self.batch.id, pay_again)  # exit 2 before any write
            store.touch_batch(db, self.batch.id, self.clock.now())  # `resume` picks it
            if retry_failed or retry_in_doubt or again:
                done = store.requeue(
                    db,
                    self.batch.id,
                    failed=retry_failed,
                    in_doubt=retry_in_doubt,
                    now=self.clock.now(),
                    pay_again=again,
                )
                log.info("re-queued: %s", done)
                if done.get("output_lost"):
                    log.warning(
                        "%d failed job(s) stay failed: their paid run is gone with its "
                        "video; `batchgen retry %s --job KEY --pay-again` pays for a new one",
                        done["output_lost"],
                        self.batch_name,
                    )
            return await self._engine_run(self.batch)

    def _refuse_clashes(self) -> None:
        """Outputs that would replace a file the manifest names: exit 2, never written."""
        self.opts, problems = outputs.safe_options(self.opts, self.protected)
        if problems:
            outputs.drop_writers(self.observers, self.protected)
            raise UsageError(problems)

    async def _engine_run(self, batch: Batch) -> tuple[ExitCode, str]:
        assert self.db is not None and batch.id is not None
        opts = self.opts
        settings = batch_settings(batch)
        rate = opts.rate or settings_rate(settings.get("rate")) or DEFAULT_RATE
        concurrency = opts.concurrency or int(
            settings.get("concurrency") or DEFAULT_SETTINGS["concurrency"]
        )
        max_attempts = opts.max_attempts or int(
            settings.get("max_attempts") or DEFAULT_SETTINGS["max_attempts"]
        )
        budget_usd = opts.budget_usd if opts.budget_usd is not None else settings.get("budget_usd")
        # a batch stored before non-finite budgets were refused: say so, never overflow
        stored = amount_problem("--budget-usd", budget_usd, maximum=MAX_BUDGET_USD, example="25")
        if stored is not None:
            raise UsageError(
                f"batch {batch.name} was stored with budget_usd {budget_usd}: {stored}"
            )
        out_dir = Path(opts.out_dir or batch.out_dir)
        self.out_dir = str(out_dir)
        check_out_dir(out_dir)
        in_the_way = outputs.folder_problems(out_dir, self.protected, "--out")
        if in_the_way:
            raise UsageError(in_the_way)
        # "done" means every video is on disk as recorded
        self.repairs = await on_disk.send_back_damaged(
            self.db, batch, out_dir, verify=opts.verify, now=self.clock.now(),
            observers=self.observers, stop=self.stop_event.is_set,
        )  # fmt: skip

        # the key's window lives in a file every process of this user shares (restarts too)
        shared = SharedWindow.for_key(self.key, opts.state_dir)
        limiter = RequestLimiter(
            rate[0], rate[1], clock=self.clock, margin_s=opts.limiter_margin_s, shared=shared
        )
        retry = opts.retry_policy or RetryPolicy(max_attempts=max_attempts)
        durations = DurationModel(opts.poll_policy)
        durations.seed(_history(self.db, batch.model))
        # the batch's whole life, every invocation: charges - refunds + possible charges
        money = ledger.totals(self.db, batch.id)
        budget = Budget(
            None if budget_usd is None else round(float(budget_usd) * 1_000_000),
            spent_micro_usd=money.spent,
            possible_micro_usd=money.possible,
        )
        observers = list(self.observers)
        if opts.report_path is not None:
            observers.append(LiveReport(self.db, batch.id, opts.report_path))
            self.observers.append(observers[-1])
        progress = make_progress(opts.progress)
        base_dir = Path(batch.manifest_path).parent if batch.manifest_path else None

        def materialize(input_: dict[str, Any]) -> dict[str, Any]:
            return images.materialize(input_, base_dir)

        started = self.clock.monotonic()

        def tick(engine: RunEngine) -> None:
            if progress is not None:
                progress.update(self._snapshot(engine, started))

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with (
            aiohttp.ClientSession(timeout=timeout) as files,
            RunbaseClient(
                base_url_from(opts),
                self.key,
                limiter=limiter,
                timeout_s=opts.timeout_s,
                observers=[Guarded(o, self._observer_failed) for o in (self.tally, *observers)],
                clock=self.clock,
            ) as client,
        ):
            engine = RunEngine(
                self.db,
                batch,
                client=client,
                limiter=limiter,
                collect=make_collect(files, batch, out_dir=out_dir, clock_now=self.clock.now),
                materialize=materialize,
                config=EngineConfig(
                    concurrency=concurrency,
                    max_attempts=max_attempts,
                    in_doubt=opts.in_doubt,
                    on_lost=opts.on_lost,
                    download_concurrency=opts.download_concurrency,
                ),
                budget=budget,
                durations=durations,
                retry=retry,
                clock=self.clock,
                observers=observers,
                on_tick=tick,
            )
            self.engine = engine
            if opts.max_runtime_s is not None:
                engine.deadline = self.began + opts.max_runtime_s
            if self.interrupted:  # a signal came between the lock and now
                engine.stop("interrupted", self.interrupted)
            try:
                outcome = await engine.run()
            finally:
                if progress is not None:
                    progress.close(self._snapshot(engine, started))
        return outcome.exit_code, outcome.reason

    def _observer_failed(self, exc: BaseException) -> None:
        if self.engine is not None:
            self.engine.fail(exc)

    def _snapshot(self, engine: RunEngine, started: float) -> Snapshot:
        lim = engine.limiter
        counts = engine.counts
        remaining = sum(counts.get(s, 0) for s in ("queued", "in_doubt", "submitting"))
        per_job = self.tally.total / max(1, counts.get("succeeded", 0)) if self.tally.total else 2.2
        limit_per_s = lim.max_requests / lim.window_s
        eta: float | None = 0.0  # nothing left
        if remaining or engine.active:
            eta = remaining * max(2.0, min(per_job, 10.0)) / limit_per_s
        # until the API answers once, neither a rate (of failed connections) nor an eta
        # from it is known
        answered = self.tally.answered > 0
        unanswered = self.tally.total > 0 and not answered
        return Snapshot(
            batch=engine.batch.name,
            counts=dict(counts),
            requests_per_s=None if unanswered else self.tally.per_second(),
            limit_per_s=limit_per_s,
            requests=self.tally.total,
            spend_micro_usd=engine.budget.spent,
            budget_micro_usd=engine.budget.limit,
            elapsed_s=self.clock.monotonic() - started,
            eta_s=eta if answered or not eta else None,
            note=engine.stopping,
        )

    def summary(self, code: ExitCode, reason: str, started: float) -> RunSummary:
        counts: dict[str, int] = {}
        spend = possible = 0
        maybe_twice: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        in_doubt = repaired = 0
        if self.db is not None and self.batch is not None and self.batch.id is not None:
            try:
                counts = {k: v for k, v in store.counts(self.db, self.batch.id).items() if v}
                money = ledger.totals(self.db, self.batch.id)
                spend, possible = money.spent, money.possible
                maybe_twice = [p.to_json() for p in ledger.possible_jobs(self.db, self.batch.id)]
                failures = [
                    {"key": f.key, "idx": f.idx, "error": f.error, "code": f.code}
                    for f in store.failures(self.db, self.batch.id)
                ]
                in_doubt = store.in_doubt_since(self.db, self.batch.id, started)
                repaired = on_disk.repaired(self.db, self.repairs)
            except Exception as exc:
                log.debug("could not read the final counts: %s", one_line(str(exc)))
            if not self.out_dir:
                self.out_dir = self.batch.out_dir
        if self.engine is not None:
            in_doubt = max(in_doubt, len(self.engine.in_doubt_seen))
        finished = self.clock.now()
        return RunSummary(
            batch=self.batch_name,
            exit_code=int(code),
            reason=reason,
            counts=counts,
            in_doubt=in_doubt,
            requests={k: dict(v) for k, v in self.tally.by_route.items()},
            spend_micro_usd=spend,
            wall_s=finished - started,
            out_dir=self.out_dir,
            started_at=started,
            finished_at=finished,
            failures=failures,
            repaired=repaired,
            possible_micro_usd=possible,
            maybe_paid_twice=maybe_twice,
        )


def find_batch(db: Engine, name: str | None) -> Batch:
    """The batch called ``name`` (None: the most recently run one)."""
    return batches.find_batch(db, name)


def _pay_again_ids(db: Engine, batch_id: int, keys: Sequence[str]) -> list[int]:
    """``retry --job KEY --pay-again``: the job ids, or exit 2 naming the key."""
    fix = "give a job key or a longer prefix (batchgen export lists them)"
    try:
        found = batches.find_jobs(db, batch_id, keys) if keys else {}
    except LookupError as exc:
        raise UsageError([Problem(file="--job", message=str(exc), fix=fix)]) from None
    for key, (_, state) in found.items():
        if state not in ("failed", "canceled", "in_doubt"):
            message = (
                f"job {key!r} is {state}: --pay-again submits failed, canceled or in-doubt jobs"
            )
            fix = "leave it out; a running job is polled, a succeeded one is done"
            raise UsageError([Problem(file="--job", message=message, fix=fix)])
    return [job_id for job_id, _ in found.values()]


def _history(db: Engine, model: str) -> Iterator[tuple[Any, float]]:
    for input_json, created, completed in store.recent_durations(db, model):
        seconds = api_duration(created, completed)
        if seconds is not None:
            yield run_class(model, json.loads(input_json)), seconds


# RunOptions and the up-front checks live in run_options.py; they stay importable from
# here, where the CLI, the tests and the docs have always taken them.
__all__ = [
    "DEFAULT_BASE_URL",
    "RunOptions",
    "arun_batch",
    "base_url_from",
    "check_api_key",
    "check_base_url",
    "check_out_dir",
    "run_batch",
]
