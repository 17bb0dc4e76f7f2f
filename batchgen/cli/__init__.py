"""Command line: parses arguments and calls the library. Nothing else lives here."""

from __future__ import annotations

import sys

from batchgen.cli import manifest, report, run, sim  # noqa: F401  (they register commands)
from batchgen.cli._app import app
from batchgen.errors import BatchgenError
from batchgen.textsafe import printable_lines

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except BatchgenError as exc:
        print(f"batchgen: {printable_lines(str(exc))}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
