"""All SQL lives in this package: the schema (``schema``), and one module per user of it.

Import the module you need (``from batchgen.store.schema import open_db``): this package
re-exports nothing, so importing a light module (``reader`` and ``status`` use the
standard library alone, and ``batchgen status`` starts fast) never brings SQLAlchemy
with it.
"""
