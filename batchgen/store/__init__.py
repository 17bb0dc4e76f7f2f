"""All SQL lives in this package: the schema (``schema``), and one module per user of it.

``reader`` and ``status`` use the standard library alone, so ``batchgen status`` starts
fast; the names below come from ``schema`` (SQLAlchemy) only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    # Importing a light submodule (store.reader) must not import SQLAlchemy with it.
    if name in __all__:
        return getattr(importlib.import_module("batchgen.store.schema"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
