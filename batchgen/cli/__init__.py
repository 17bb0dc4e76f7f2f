"""Command line: parses arguments and calls the library. Nothing else lives here.

The command modules import the library a command calls inside that command's
function, not at their top: ``batchgen --help``, ``--version`` and ``status`` then start
without SQLAlchemy, pydantic, aiohttp or PyAV (tests/integration/test_cli_startup.py
holds this). Start-up is the only reason for an import inside a function in batchgen;
none of them dodges an import circle (``lint-imports`` would fail on one).
"""

from __future__ import annotations

import logging
import sys

from typer.core import TyperCommand

from batchgen.cli import db, manifest, report, run, sim  # noqa: F401  (they register commands)
from batchgen.cli._app import Command, app, used_db
from batchgen.errors import CommandError, ExitCode
from batchgen.redact import redact_text
from batchgen.store.failures import state_failure
from batchgen.textsafe import printable_lines

__all__ = ["app", "main"]

for _info in app.registered_commands:  # plain usage lines and choice errors everywhere
    if _info.cls is None or _info.cls is TyperCommand:
        _info.cls = Command


def main() -> None:
    try:
        app()
    except CommandError as exc:
        print(f"batchgen: {printable_lines(redact_text(str(exc)))}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
    except Exception as exc:  # never a traceback on the terminal (it is there with -v)
        # a state database that cannot be used is the database's: exit 2 (or 75)
        failure = state_failure(exc, used_db[0] if used_db else None)
        code = ExitCode.SOFTWARE if failure is None else failure.exit_code
        text = " ".join(str(failure or f"internal error ({type(exc).__name__}: {exc})").split())
        logging.getLogger("batchgen").debug("the command failed", exc_info=exc)
        hint = "" if failure is not None else " (run with -v for the details)"
        print(f"batchgen: {printable_lines(redact_text(text))}{hint}", file=sys.stderr)
        sys.exit(int(code))
