"""Getting a batch ready for the engine: the manifest, then the batch under its lock.

``load_for_run`` loads the manifest of a ``run`` with the command line's overrides;
``require_db`` and the ``refuse_*`` checks end a run with exit 2 before anything is
written: no database to resume, or a database or output folder that would replace a
file the manifest names, or an output folder that cannot hold videos.

Both steps run once the batch's lock is held (``batchgen.run.lock``): ``open_batch``
syncs the manifest into the database (idempotent) or finds the stored batch;
``ready_batch`` re-enables a canceled batch on a new ``run``, checks every
``--pay-again`` key (exit 2), marks the batch as the one ``resume`` picks and re-queues
what ``retry`` asks for. Two steps, so that the run's summary counts the batch's jobs
even when the second one refuses or fails.
``history`` seeds the poll schedule from the runs of this model that already finished.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from batchgen.clock import Clock, api_duration
from batchgen.engine.schedule import run_class
from batchgen.errors import Problem, UsageError
from batchgen.files import outputs
from batchgen.manifest.loader import LoadedManifest, Overrides, load_manifest
from batchgen.run.options import RunOptions, check_out_dir
from batchgen.store import batches, commands
from batchgen.store import jobs as store
from batchgen.store.schema import Batch
from batchgen.store.target import postgres_url

# the run's own logger: these lines belong to the run (and to its --log-file) as before
log = logging.getLogger("batchgen.run.runner")


def load_for_run(manifest: Path, opts: RunOptions, clock: Clock) -> LoadedManifest:
    """The manifest of a ``run``; the batch stores the rate, concurrency and budget
    the command line gives (``resume`` then keeps them), not its max attempts."""
    overrides = Overrides(
        out_dir=opts.out_dir,
        rate=opts.rate,
        concurrency=opts.concurrency,
        budget_usd=opts.budget_usd,
        max_jobs=opts.max_jobs,
    )
    # one date per run, from the injected clock: a run crossing midnight stays one batch
    day = opts.date or clock.today()
    return load_manifest(manifest, date=day, overrides=overrides)


def require_db(db_path: Path) -> None:
    """``resume`` and ``retry`` need the database ``run`` made: exit 2 without it (on a
    PostgreSQL server too: its schema is not created by them)."""
    url = postgres_url(db_path)
    if url is not None:
        from batchgen.store.pg.db import ensure_schema_sync  # psycopg only when used

        ensure_schema_sync(url, create=False)  # StateError (exit 2): none there
        return
    if not db_path.exists():
        raise UsageError(
            [
                Problem(
                    file=str(db_path),
                    message="no state database here",
                    fix="run `batchgen run MANIFEST` first, or point --db at the database",
                )
            ]
        )


def refuse_folder_in_the_way(out_dir: Path, protected: outputs.Protected) -> None:
    """An output folder that cannot hold videos or would replace a protected file: exit 2."""
    check_out_dir(out_dir)
    in_the_way = outputs.folder_problems(out_dir, protected, "--out")
    if in_the_way:
        raise UsageError(in_the_way)


def refuse_outputs_in_the_way(
    db_path: Path, loaded: LoadedManifest, protected: outputs.Protected
) -> None:
    """A database or output folder that is one of the manifest's files, or an output
    folder that cannot hold videos: exit 2, before anything is written."""
    read = outputs.Protected.of(None, loaded.path, loaded.sources)
    # a PostgreSQL URL is no file: it cannot be one of the manifest's
    in_the_way = [] if postgres_url(db_path) else outputs.db_problems(db_path, read)
    check_out_dir(loaded.out_dir)
    in_the_way += outputs.folder_problems(loaded.out_dir, protected, "--out")
    if in_the_way:
        raise UsageError(in_the_way)


@dataclass(frozen=True, slots=True)
class Requeue:
    """What ``retry`` sends back to the queue (``run`` and ``resume``: nothing)."""

    failed: bool = False
    in_doubt: bool = False
    pay_again: Sequence[str] = ()  # job keys or unique prefixes: a new, paid run each


def open_batch(db: Engine, loaded: LoadedManifest | None, name: str) -> Batch:
    """The batch to run: ``loaded`` synced into it (``run``), or found by ``name``."""
    if loaded is not None:
        synced = batches.sync_batch(db, loaded)
        # after the sync: its pass over the jobs counted them, warnings come free
        for warning in loaded.warnings:
            log.warning("%s", warning)
        log.info("%s", synced.describe(loaded.name))
        return store.get_batch(db, synced.batch_id)
    return batches.find_batch(db, name)


def ready_batch(
    db: Engine, batch: Batch, clock: Clock, requeue: Requeue, *, uncancel: bool
) -> Batch:
    """``batch`` as the engine takes it: re-enabled (``uncancel``: a new ``run``), marked
    as the latest run, with what ``requeue`` asks for back in the queue."""
    batch_id = batch.id
    assert batch_id is not None
    if uncancel and batch.canceled:
        commands.uncancel(db, batch_id, now=clock.now())
        batch = store.get_batch(db, batch_id)
    again = pay_again_ids(db, batch_id, requeue.pay_again)  # exit 2 before any write
    store.touch_batch(db, batch_id, clock.now())  # `resume` picks it
    if requeue.failed or requeue.in_doubt or again:
        done = commands.requeue(
            db,
            batch_id,
            failed=requeue.failed,
            in_doubt=requeue.in_doubt,
            now=clock.now(),
            pay_again=again,
        )
        log.info("re-queued: %s", done)
        if done.get("output_lost"):
            log.warning(
                "%d failed job(s) stay failed: their paid run is gone with its "
                "video; `batchgen retry %s --job KEY --pay-again` pays for a new one",
                done["output_lost"],
                batch.name,
            )
    return batch


def pay_again_ids(db: Engine, batch_id: int, keys: Sequence[str]) -> list[int]:
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


def history(db: Engine, model: str) -> Iterator[tuple[Any, float]]:
    """(run class, seconds the API took) of the finished runs of ``model``."""
    for input_json, created, completed in store.recent_durations(db, model):
        seconds = api_duration(created, completed)
        if seconds is not None:
            yield run_class(model, json.loads(input_json)), seconds


__all__ = [
    "Requeue",
    "history",
    "load_for_run",
    "open_batch",
    "pay_again_ids",
    "ready_batch",
    "refuse_folder_in_the_way",
    "refuse_outputs_in_the_way",
    "require_db",
]
