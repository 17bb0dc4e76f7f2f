"""Writing the spend ledger: the rows a job's transition adds, in its transaction.

Reading it (sums, possible charges) is ``store.ledger``, with the standard library
alone so that ``batchgen status`` starts fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import Session

from batchgen.store.records import LedgerEntry
from batchgen.store.schema import Charge

# LedgerEntry is defined with the store's records (no SQLAlchemy); it is named here too
# until the engine imports it from ``store.records``.
__all__ = ["JobRef", "LedgerEntry", "add_entries", "record"]


class JobRef(Protocol):
    """What a ledger row and a check-and-set read of the caller's copy of a job: a
    ``Job`` row or a ``JobRecord`` (the stored row itself is re-read)."""

    @property
    def id(self) -> int | None: ...
    @property
    def batch_id(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def idem_key(self) -> str | None: ...
    @property
    def state(self) -> str: ...


def add_entries(s: Session, job: JobRef, entries: Sequence[LedgerEntry], at: float) -> None:
    """Add ``entries`` for ``job`` (with its attempt and key as they are now) to ``s``."""
    assert job.id is not None
    for e in entries:
        s.add(
            Charge(
                batch_id=job.batch_id,
                job_id=job.id,
                run_id=e.run_id,
                attempt=job.attempts,
                idem_key=job.idem_key,
                kind=e.kind,
                amount_micro_usd=e.amount_micro_usd,
                at=at,
                detail=e.detail,
                # the key that paid: the job's (a Job row or a JobRecord; older: None)
                key_fingerprint=getattr(job, "key_fingerprint", None),
            )
        )


def record(engine: Engine, job: JobRef, entries: Sequence[LedgerEntry], at: float) -> None:
    """Write ``entries`` on their own: money learnt when the job's move could not be
    made (another process changed the job) is still money spent."""
    with Session(engine) as s:
        add_entries(s, job, entries, at)
        s.commit()
