"""Commands: manifest (to be written)."""

from batchgen.cli._app import app  # noqa: F401
