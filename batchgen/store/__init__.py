"""All SQL lives in this package: the schema (``schema``), and one module per user of it."""

from batchgen.store.schema import (
    SCHEMA_VERSION,
    Batch,
    Event,
    Job,
    Meta,
    default_db_path,
    open_db,
    transition,
)

__all__ = [
    "SCHEMA_VERSION",
    "Batch",
    "Event",
    "Job",
    "Meta",
    "default_db_path",
    "open_db",
    "transition",
]
