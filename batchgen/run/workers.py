"""What changes when the state database is PostgreSQL: a worker among others.

On SQLite the batch lock makes a run the batch's only process. A ``postgresql://``
``--db`` (or ``$BATCHGEN_DB``) names a server several workers share, on one host or
several: each runs ``batchgen run``/``resume``/``retry`` on the same batch, and the
store's claims keep them off each other's jobs (``batchgen.store.pg.store``). Here:

- ``protected_files``: a URL is never a file, so never one the outputs must not
  replace (nor is ``<db>.lock``, ``-wal`` … beside it);
- ``open_job_store``: the worker's ``PostgresStore`` (its id, its heartbeat, the budget
  refused in the intent's transaction: every worker's one budget, exit 4);
- ``shared_work``: the engine's settings for a shared batch: every third of a lease
  it looks for the jobs of a worker that is gone (their leases ran out) and takes them
  over, polling their paid runs with their key; it does not end while another
  worker's jobs are unfinished (``batchgen.engine.takeover``); it claims small pages
  of queued jobs, so that a worker joining later finds work and a killed one strands
  few jobs until its lease runs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from batchgen.files import outputs
from batchgen.run.options import RunOptions
from batchgen.runbase.shared_window import key_fingerprint
from batchgen.store.interface import JobStore
from batchgen.store.sqlite_store import SqliteStore
from batchgen.store.target import postgres_url

__all__ = ["open_job_store", "protected_files", "shared_work", "worker_id"]


def protected_files(
    db_path: Path,
    manifest: Path | str | None = None,
    sources: Sequence[Path] = (),
    out_dirs: Sequence[Path | str | None] = (),
) -> outputs.Protected:
    """The files no output may replace (``out_dirs``: the batch's output folders, whose
    videos and sidecars are protected); a PostgreSQL URL is none of them."""
    db = None if postgres_url(db_path) is not None else db_path
    return outputs.Protected.of(db, manifest, sources, out_dirs)


async def open_job_store(
    db: Engine,
    url: str | None,
    opts: RunOptions,
    keys: Sequence[str],
    budget_micro_usd: int | None,
) -> JobStore:
    """The engine's store: SQLite's on ``db``, or for ``url`` this worker's
    ``PostgresStore`` (``worker_id``: its id)."""
    if url is None:
        return SqliteStore(db)
    from batchgen.store.pg.store import PostgresStore  # psycopg only when used

    store = await PostgresStore.open(
        url,
        lease_seconds=opts.lease_s,
        key_fingerprint=key_fingerprint(keys[0]),
        budget_micro_usd=budget_micro_usd,
    )
    return store


def worker_id(store: JobStore) -> str:
    """A ``PostgresStore``'s worker id (``host:pid:nonce``, as in the ``worker`` table);
    "" for SQLite, where the batch lock makes the process the batch's only one."""
    owner = getattr(store, "owner", "")
    return owner if isinstance(owner, str) else ""


def shared_work(opts: RunOptions, concurrency: int, keys: int = 1) -> dict[str, Any]:
    """``EngineConfig`` settings of a worker on a shared batch (module docstring)."""
    # Every third of a lease: a gone worker's jobs wait for its lease to run out anyway
    # (taken over at most a third of a lease after that), and each look is two claim
    # writes. The end of the batch does not wait for it: an idle worker counts the
    # others' jobs on its own cadence (``engine.takeover.Lookout``).
    # A page of queued jobs is leased to this worker: others skip it. A key submits
    # about one job a second, so ten per key is some ten seconds of this worker's work;
    # twice --concurrency alone (200 by default) let the first worker to start claim
    # a whole small batch, and the others sent nothing.
    return {
        "takeover_every_s": max(0.1, opts.lease_s / 3),
        "page_size": max(10, min(2 * concurrency, 10 * keys)),
    }
