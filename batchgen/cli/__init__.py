"""Command line: parses arguments and calls the library. Nothing else lives here."""

from __future__ import annotations

import sys

from typer.core import TyperCommand

from batchgen.cli import manifest, report, run, sim  # noqa: F401  (they register commands)
from batchgen.cli._app import Command, app
from batchgen.errors import BatchgenError
from batchgen.redact import redact_text

__all__ = ["app", "main"]

for _info in app.registered_commands:  # plain usage lines and choice errors everywhere
    if _info.cls is None or _info.cls is TyperCommand:
        _info.cls = Command


def main() -> None:
    try:
        app()
    except BatchgenError as exc:
        print(f"batchgen: {redact_text(str(exc))}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
