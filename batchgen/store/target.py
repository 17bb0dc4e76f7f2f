"""Which kind of state database a ``--db`` (or ``$BATCHGEN_DB``) names.

A ``postgresql://`` (or ``postgres://``) value names a PostgreSQL server, never a file.
Taken as a path it would silently create a folder named ``postgresql:`` with a SQLite
file inside, and a second process on the "same" database would be locked out
(issue 12). ``schema.open_db`` opens one through ``store.pg.engine`` (``status`` through
``store.pg.db.reading``), and the runner's worker its ``PostgresStore``
(``batchgen.run.workers``); every command takes one.

The value may arrive as a ``Path``: ``Path("postgresql://u@h/db")`` collapses the ``//``
to ``postgresql:/u@h/db``, so both spellings are recognised and the URL is given back
with its ``//``. Standard library only (``batchgen status`` starts fast).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["postgres_url"]

_SCHEMES = ("postgresql:", "postgres:")


def postgres_url(db: Path | str) -> str | None:
    """The PostgreSQL URL ``db`` names (with its ``//`` restored), or None for a file."""
    text = str(db)
    for scheme in _SCHEMES:
        if text.startswith(scheme + "/"):
            rest = text[len(scheme) :].lstrip("/")
            return f"{scheme}//{rest}"
    return None
