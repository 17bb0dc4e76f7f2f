"""The reads behind ``batchgen status``, with the standard library's sqlite3 alone.

Finding a batch and counting its jobs by state: GROUP BY queries over the covering
index ``ix_job_batch_status``, no job row is read. No SQLAlchemy here, so the command
starts fast; ``batches.batch_counts`` runs the same queries on an engine's connection.
On PostgreSQL the same SQL runs on a psycopg connection (``store.dbapi.qmark``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import StateError
from batchgen.states import JobState
from batchgen.store import ledger
from batchgen.store.dbapi import reading

#: batch names listed in the "no such batch" message
KNOWN_SHOWN = 10


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What ``status`` shows of a batch (the batch row without its settings)."""

    id: int
    name: str
    model: str
    manifest_path: str
    out_dir: str
    canceled: bool


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    code: str | None
    error: str | None
    jobs: int


@dataclass(frozen=True, slots=True)
class FailedJob:
    key: str
    idx: int
    code: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class KeyCounts:
    """One key of a batch run with several: its fingerprint (never the key), the jobs
    bound to it, its runs and spend (the ledger's), and its paid runs not yet done."""

    fingerprint: str
    jobs: int
    runs: int
    spent_micro_usd: int
    unfinished: int


@dataclass(frozen=True, slots=True)
class BatchCounts:
    by_state: dict[str, int]  # every state, listed or not
    unlisted: dict[str, int]  # the unlisted among them, by state (states with any only)
    cost_micro_usd: int  # what the runs cost so far: the ledger's charges - refunds
    estimate_queued_micro_usd: int  # the price of the listed queued jobs
    errors: list[ErrorGroup] = field(default_factory=list)
    failed: list[FailedJob] = field(default_factory=list)
    #: lost POST answers that may have charged a run (the ledger's unsettled possibles)
    possible_micro_usd: int = 0
    maybe_paid_twice: list[ledger.PossibleJob] = field(default_factory=list)
    #: per key fingerprint, when the batch used several keys (empty with one key)
    keys: list[KeyCounts] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


def no_batch_message(name: str | None, known: Sequence[str]) -> str:
    """Why no batch was found: ``known`` holds up to ``KNOWN_SHOWN + 1`` batch names,
    the most recent first."""
    if not known:
        asked = f"no batch named {name!r}: " if name is not None else ""
        return (
            f"{asked}the state database holds no batch yet: run `batchgen run MANIFEST` "
            "first (or pass --db to point at another database)"
        )
    shown = ", ".join(known[:KNOWN_SHOWN]) + (", ..." if len(known) > KNOWN_SHOWN else "")
    return f"no batch named {name!r}; known batches (most recent first): {shown}"


_BATCH_COLUMNS = "SELECT id, name, model, manifest_path, out_dir, canceled FROM batch "
_RECENT_FIRST = "ORDER BY updated_at DESC, id DESC "


def find_batch(conn: Any, name: str | None) -> BatchInfo:
    """The batch called ``name``; None: the most recently run or synced one.

    ``conn``: a sqlite3 connection, or any DB-API one wrapped by ``dbapi.qmark``.
    Raises ``StateError`` (exit 2) naming the batches the database does hold.
    """
    if name is not None:
        row = conn.execute(_BATCH_COLUMNS + "WHERE name = ? LIMIT 1", (name,)).fetchone()
    else:
        row = conn.execute(_BATCH_COLUMNS + _RECENT_FIRST + "LIMIT 1").fetchone()
    if row is not None:
        id_, name_, model, manifest_path, out_dir, canceled = row
        return BatchInfo(
            int(id_), str(name_), str(model), str(manifest_path), str(out_dir), bool(canceled)
        )
    known = [
        str(n)
        for (n,) in conn.execute(
            "SELECT name FROM batch " + _RECENT_FIRST + "LIMIT ?", (KNOWN_SHOWN + 1,)
        )
    ]
    raise StateError(no_batch_message(name, known))


def batch_counts(conn: Any, batch_id: int, *, failures: int = 10) -> BatchCounts:
    """Counts by state, cost, and the first ``failures`` failures and error kinds.

    One read transaction (``dbapi.reading``): the counts and the failures are of the
    same moment. A sqlite3 ``conn`` must be in autocommit mode (``isolation_level=None``)
    with no transaction open, as ``reader.connect_readonly`` and the store's engines
    make them.
    """
    by_state = {st.value: 0 for st in JobState}
    unlisted: dict[str, int] = {}
    cost = estimate = 0
    errors: list[ErrorGroup] = []
    failed: list[FailedJob] = []
    with reading(conn):
        # One pass over the covering index ix_job_batch_status.
        for state, listed, n, priced in conn.execute(
            "SELECT state, listed, count(*), sum(estimate_micro_usd) "
            "FROM job WHERE batch_id = ? GROUP BY state, listed",
            (batch_id,),
        ):
            by_state[str(state)] = by_state.get(str(state), 0) + int(n)
            if not listed:
                unlisted[str(state)] = int(n)
            elif state == JobState.QUEUED.value:
                estimate += int(priced or 0)
        money = ledger.totals(conn, batch_id)
        keys = _key_counts(conn, batch_id)
        cost = money.spent
        maybe = ledger.possible_jobs(conn, batch_id, limit=failures) if money.possible else []
        if by_state[JobState.FAILED.value]:
            errors = [
                ErrorGroup(code, error, int(n))
                for code, error, n in conn.execute(
                    "SELECT error_code, last_error, count(*) AS n FROM job "
                    "WHERE batch_id = ? AND state = 'failed' "
                    "GROUP BY error_code, last_error "
                    "ORDER BY n DESC, coalesce(error_code, ''), coalesce(last_error, '') LIMIT ?",
                    (batch_id, failures),
                )
            ]
            failed = [
                FailedJob(key, int(idx), code, error)
                for key, idx, code, error in conn.execute(
                    "SELECT key, idx, error_code, last_error FROM job "
                    "WHERE batch_id = ? AND state = 'failed' ORDER BY idx, id LIMIT ?",
                    (batch_id, failures),
                )
            ]
    return BatchCounts(
        by_state=by_state,
        unlisted=unlisted,
        cost_micro_usd=cost,
        estimate_queued_micro_usd=estimate,
        errors=errors,
        failed=failed,
        possible_micro_usd=money.possible,
        maybe_paid_twice=maybe,
        keys=keys,
    )


def _key_counts(conn: Any, batch_id: int) -> list[KeyCounts]:
    """Per key fingerprint, when the batch's jobs name more than one (a database older
    than the key pool has no fingerprints: none)."""
    try:
        rows = conn.execute(
            "SELECT key_fingerprint, count(*), "
            "sum(CASE WHEN state IN ('running', 'downloading') THEN 1 ELSE 0 END) "
            "FROM job WHERE batch_id = ? AND key_fingerprint IS NOT NULL "
            "GROUP BY key_fingerprint ORDER BY key_fingerprint",
            (batch_id,),
        ).fetchall()
    except sqlite3.OperationalError:  # schema 3 or older, read in place
        return []
    if len(rows) < 2:
        return []
    money = ledger.by_key(conn, batch_id)
    return [
        KeyCounts(str(fp), int(jobs), *money.get(str(fp), (0, 0)), int(left or 0))
        for fp, jobs, left in rows
    ]
