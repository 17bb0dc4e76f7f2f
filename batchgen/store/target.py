"""Which kind of state database a ``--db`` (or ``$BATCHGEN_DB``) names.

A ``postgresql://`` (or ``postgres://``) value names a PostgreSQL server, never a file.
Taken as a path it would silently create a folder named ``postgresql:`` with a SQLite
file inside, and a second process on the "same" database would be locked out
(issue 12). ``schema.open_db`` opens one through ``store.pg.engine`` (``status`` through
``store.pg.db.reading``); a command that cannot use PostgreSQL yet (the runner: ``run``,
``resume``, ``retry``) refuses such a value here with exit 2 and one clear line, the
password masked (``batchgen.redact``).

The value may arrive as a ``Path``: ``Path("postgresql://u@h/db")`` collapses the ``//``
to ``postgresql:/u@h/db``, so both spellings are recognised and the URL is given back
with its ``//``. Standard library only (``batchgen status`` starts fast).
"""

from __future__ import annotations

from pathlib import Path

from batchgen.errors import Problem, UsageError
from batchgen.redact import mask_url

__all__ = ["postgres_url", "refuse_postgres"]

_SCHEMES = ("postgresql:", "postgres:")


def postgres_url(db: Path | str) -> str | None:
    """The PostgreSQL URL ``db`` names (with its ``//`` restored), or None for a file."""
    text = str(db)
    for scheme in _SCHEMES:
        if text.startswith(scheme + "/"):
            rest = text[len(scheme) :].lstrip("/")
            return f"{scheme}//{rest}"
    return None


def refuse_postgres(db: Path | str) -> None:
    """Exit 2 (``UsageError``) when ``db`` names a PostgreSQL database, for a command
    that cannot use one yet: taking the URL for a file path would misbehave silently."""
    url = postgres_url(db)
    if url is None:
        return
    raise UsageError(
        [
            Problem(
                file=mask_url(url),
                message="PostgreSQL state databases are not supported by this command yet "
                "(nothing was written)",
                fix="use a SQLite file for --db (or $BATCHGEN_DB); see docs/scale.md",
            )
        ]
    )
