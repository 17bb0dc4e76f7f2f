"""``run_batch``: the library entry point behind ``batchgen run``, ``resume`` and ``retry``.

The order of one run, and why:

1. Check the API key (before anything is written or sent).
2. Load the manifest (``run``) or find the batch (``resume``/``retry``).
3. Take the batch's lock (``batchgen.run.lock``): two processes driving one SQLite
   batch could each submit the same job. On PostgreSQL several workers drive one
   batch (``batchgen.run.workers``): only step 4 is one at a time.
4. Sync the manifest into the database (idempotent), re-enable a canceled batch on a
   new ``run``, re-queue on ``retry`` (``batchgen.run.prepare``).
5. Resolve the settings (``batchgen.settings``: command line, environment, the batch),
   recover (jobs left ``submitting`` become ``in_doubt``), seed the poll schedule
   from runs that already finished, and hand over to ``RunEngine`` with the
   ``JobStore`` (its writes drained before the summary is read): SQLite's, or this
   worker's ``PostgresStore``, the engine then taking over a gone worker's jobs.
6. Whatever happened, build the ``RunSummary`` and call ``finished`` on every
   observer (log, summary file, metrics, notification, live report;
   ``batchgen.run.summary``); a worker names itself and what it did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence
from contextlib import AsyncExitStack, aclosing, nullcontext
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import Engine

from batchgen.clock import Clock, SystemClock
from batchgen.engine.budget import Budget
from batchgen.engine.collect import make_collect
from batchgen.engine.dispatcher import EngineConfig, RunEngine
from batchgen.engine.schedule import DurationModel
from batchgen.errors import CommandError, ExitCode, Problem, StateWriteError, UsageError
from batchgen.events import Observer, RunSummary
from batchgen.files import on_disk, outputs
from batchgen.manifest import images
from batchgen.manifest.loader import named_files
from batchgen.observe.progress import RequestTally, make_progress
from batchgen.redact import redact_text
from batchgen.report.page import LiveReport, report_path_problems
from batchgen.retry import RetryPolicy
from batchgen.run.failures import Guarded, one_line, record_traceback, unexpected
from batchgen.run.keys import gather_keys, open_pool
from batchgen.run.lock import abatch_lock, pg_step_lock
from batchgen.run.options import (
    RunOptions,
    check_base_url,
    command_line,
)
from batchgen.run.prepare import (
    Requeue,
    history,
    load_for_run,
    open_batch,
    ready_batch,
    refuse_folder_in_the_way,
    refuse_outputs_in_the_way,
    require_db,
)
from batchgen.run.signals import interrupt_on_signals
from batchgen.run.summary import Ended, build_summary, finish, snapshot, unattended_observers
from batchgen.run.workers import open_job_store, protected_files, shared_work, worker_id
from batchgen.settings import StoredBatch, command_line_problems, resolve_settings, stored_settings
from batchgen.store import batches, ledger
from batchgen.store.schema import Batch, open_db
from batchgen.store.target import postgres_url

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
    api_keys: Sequence[str] = (),
) -> RunSummary:
    """Run (``manifest``) or resume (``batch``, None = most recent) a batch to its end.

    Returns the summary; its ``exit_code`` is what the CLI exits with (2 for a
    missing or malformed key, found before anything is written or sent). Every
    observer gets ``finished(summary)`` whatever happened. ``pay_again``: job keys (or
    unique prefixes) submitted again although they hold a paid run (a new charge).
    ``api_keys``: more keys (``$RUNBASE_API_KEYS``), with ``options.keys_file``'s: the
    key pool (``batchgen.run.keys``).
    """
    return asyncio.run(
        arun_batch(
            db_path, api_key=api_key, manifest=manifest, batch=batch, options=options,
            observers=observers, retry_failed=retry_failed, retry_in_doubt=retry_in_doubt,
            clock=clock, pay_again=pay_again, api_keys=api_keys,
        )
    )  # fmt: skip


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
    api_keys: Sequence[str] = (),
) -> RunSummary:
    opts = options or RunOptions()
    clk: Clock = clock or SystemClock()
    tally = RequestTally()
    # an output naming the database or the manifest is exit 2, and is never written
    opts, clashes = outputs.safe_options(opts, protected_files(db_path, manifest))
    # a bad --log-file/--notify-url/... is exit 2, reported by the observers that are fine
    problems: list[Problem] = [
        *opts.problems,
        *clashes,
        *command_line_problems(command_line(opts)),
        *report_path_problems(opts.report_path),
    ]
    all_obs: list[Observer] = [*observers, *unattended_observers(opts, problems)]
    run = _Run(db_path, api_key or "", opts, clk, tally, all_obs)
    run.keys = list(api_keys)
    started = clk.now()
    # one signal path from start to exit: a signal while the summary, metrics or
    # notification are written (systemctl stop) must not change the exit code they report
    with interrupt_on_signals(run, enabled=opts.handle_signals):
        code, reason = await _outcome(
            run, problems, started, manifest, batch, retry_failed, retry_in_doubt, pay_again
        )
        summary = run.summary(code, reason, started)
        run.finishing = True
        await finish(run.observers, summary)
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
        run.keys = gather_keys(run.key or None, run.keys, opts.keys_file)
        run.key = run.keys[0]
        check_base_url(opts)
        return await run.execute(manifest, batch, retry_failed, retry_in_doubt, pay_again=pay_again)
    except StateWriteError as exc:
        record_traceback(run.observers, exc, clk.now())
        return exc.exit_code, one_line(str(exc))
    except CommandError as exc:
        return exc.exit_code, redact_text(str(exc))
    except Exception as exc:  # an error batchgen does not know: 70 (or the database's)
        record_traceback(run.observers, exc, clk.now())
        code, reason = unexpected(exc, run.db_path)
        return code, redact_text(reason)
    except BaseException as exc:  # KeyboardInterrupt, cancelled: report, then let it go on
        summary = run.summary(ExitCode.INTERRUPTED, f"stopped: {type(exc).__name__}", started)
        await finish(run.observers, summary)
        raise


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
        #: the PostgreSQL database ``db_path`` names (never a file), or None: SQLite
        self.pg_url = postgres_url(db_path)
        self.key = key
        #: every key of the run, checked (``run.keys``); the first is ``key``
        self.keys: list[str] = [key] if key else []
        self.opts = opts
        self.clock = clock
        self.tally = tally
        self.observers = observers
        self.db: Engine | None = None
        self.batch: Batch | None = None
        self.batch_name = ""
        self.engine: RunEngine | None = None
        #: on PostgreSQL, this worker's id in the ``worker`` table (host:pid:nonce)
        self.worker = ""
        self.out_dir = ""
        #: the files no output may replace (set once the manifest or batch is known)
        self.protected = protected_files(db_path)
        #: the batch's spend at the start: beyond it, the budget counts this worker's own
        self.spent_before = 0
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
            loaded = load_for_run(manifest, self.opts, self.clock)
            self.batch_name = loaded.name
            read, out = (loaded.path, loaded.sources), (loaded.out_dir,)  # out: its videos
            self.protected = protected_files(self.db_path, *read, out)
            self._refuse_clashes()
            refuse_outputs_in_the_way(self.db_path, loaded, self.protected)
        if loaded is None:
            require_db(self.db_path)
        self.db = db = open_db(self.db_path)
        if loaded is None:
            found = batches.find_batch(db, batch)
            self.batch_name = found.name
            # the files the manifest names exist: only an existing output can be one of them
            exist = outputs.any_exists(self.opts)
            named = named_files(found.manifest_path, found.run_date) if exist else ()
            # the videos go where --out says, those of earlier runs are where the batch says
            folders = (found.out_dir, self.opts.out_dir)
            self.protected = protected_files(self.db_path, found.manifest_path, named, folders)
            self._refuse_clashes()
        requeue = Requeue(failed=retry_failed, in_doubt=retry_in_doubt, pay_again=pay_again)
        # SQLite: the batch lock for the whole run (waiting without blocking the loop, so
        # a signal during --wait-lock ends it cleanly); PostgreSQL: for getting it ready
        pg, stop = self.pg_url is not None, self.stop_event
        whole_run = nullcontext() if pg else abatch_lock(
            self.db_path, self.batch_name, wait_s=self.opts.wait_lock_s, stop=stop)  # fmt: skip
        async with whole_run:
            async with pg_step_lock(db, self.batch_name, stop=stop) if pg else nullcontext():
                self.batch = open_batch(db, loaded, self.batch_name)
                self.batch = ready_batch(
                    db, self.batch, self.clock, requeue, uncancel=loaded is not None
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
        # on `run` the batch holds what the sync just stored: the manifest's limits
        # under the command line's; a batch stored with budget_usd .inf is exit 2
        stored = StoredBatch(batch.name, stored_settings(batch.settings_json))
        settings = resolve_settings(command_line(opts), os.environ, stored)
        rate, budget_usd = settings.rate, settings.budget_usd
        concurrency, max_attempts = settings.concurrency, settings.max_attempts
        out_dir = Path(opts.out_dir or batch.out_dir)
        self.out_dir = str(out_dir)
        refuse_folder_in_the_way(out_dir, self.protected)
        # "done" means every video is on disk as recorded
        self.repairs = await on_disk.send_back_damaged(
            self.db, batch, out_dir, verify=opts.verify, now=self.clock.now(),
            observers=self.observers, stop=self.stop_event.is_set,
        )  # fmt: skip

        retry = opts.retry_policy or RetryPolicy(max_attempts=max_attempts)
        # several keys: a key refused (401) is set aside, the others go on
        retry = dataclasses.replace(retry, key_pool=len(self.keys) > 1)
        durations = DurationModel(opts.poll_policy)
        durations.seed(history(self.db, batch.model))
        # the batch's whole life, every invocation: charges - refunds + possible charges
        money = ledger.totals(self.db, batch.id)
        self.spent_before = money.spent
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
                progress.update(snapshot(engine, self.tally, self.clock, started))

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with (
            # the engine's one way to the database; closed last: drained (every write
            # landed, a worker's claims handed back) before the summary is read
            aclosing(
                await open_job_store(self.db, self.pg_url, opts, self.keys, budget.limit)
            ) as job_store,
            aiohttp.ClientSession(timeout=timeout) as files,
            AsyncExitStack() as clients,
        ):
            self.worker = worker_id(job_store)
            guarded = [Guarded(o, self._observer_failed) for o in (self.tally, *observers)]
            # PostgreSQL: each request also takes its key's slot there (KeySlots: the
            # limit across hosts); the store above made the schema
            pool = await open_pool(clients, self.keys, rate, settings.base_url, opts,
                                   self.clock, guarded, slots_url=self.pg_url)  # fmt: skip
            record = await job_store.batch(batch.id)
            engine = RunEngine(
                job_store,
                record,
                client=pool.first.client,
                limiter=pool.first.limiter,
                keys=pool,
                collect=make_collect(files, record, out_dir=out_dir, clock_now=self.clock.now),
                materialize=materialize,
                config=EngineConfig(
                    concurrency=concurrency,
                    max_attempts=max_attempts,
                    in_doubt=settings.in_doubt,
                    on_lost=settings.on_lost,
                    download_concurrency=opts.download_concurrency,
                    posts_in_flight=opts.posts_in_flight,
                    **(
                        {}
                        if self.pg_url is None
                        else shared_work(opts, concurrency, len(self.keys))
                    ),
                ),
                budget=budget,
                durations=durations,
                retry=retry,
                clock=self.clock,
                observers=observers,
                on_tick=tick,
            )
            self.engine = engine
            if settings.max_runtime_s is not None:
                engine.deadline = self.began + settings.max_runtime_s
            if self.interrupted:  # a signal came between the lock and now
                engine.stop("interrupted", self.interrupted)
            try:
                outcome = await engine.run()
            finally:
                if progress is not None:
                    progress.close(snapshot(engine, self.tally, self.clock, started))
        return outcome.exit_code, outcome.reason

    def _observer_failed(self, exc: BaseException) -> None:
        if self.engine is not None:
            self.engine.fail(exc)

    def summary(self, code: ExitCode, reason: str, started: float) -> RunSummary:
        ended = Ended(
            batch_name=self.batch_name, tally=self.tally, clock=self.clock, db=self.db,
            batch=self.batch, engine=self.engine, out_dir=self.out_dir, repairs=self.repairs,
            worker=self.worker, spent_before=self.spent_before,
        )  # fmt: skip
        return build_summary(ended, code, reason, started)


__all__ = ["arun_batch", "run_batch"]
