"""The Typer application and the options every command shares."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from batchgen.errors import UsageError
from batchgen.ratelimit import rate_from_text
from batchgen.store.reader import DEFAULT_DB
from batchgen.textsafe import printable_lines

app = typer.Typer(
    name="batchgen",
    help=(
        "Turn a YAML manifest into paid video generations on the Runbase runs API, "
        "and bring every video home.\n\n"
        "Example: batchgen plan manifests/example.yaml && batchgen run manifests/example.yaml"
    ),
    no_args_is_help=True,
    add_completion=False,
    # Locals in tracebacks could hold the API key: never show them.
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        envvar="BATCHGEN_DB",
        help=f"State database (SQLite). Default ./{DEFAULT_DB}, or $BATCHGEN_DB.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON object on stdout.")
]


def is_terminal() -> bool:
    """Colour, progress bars and prompts only for a person at a terminal."""
    return sys.stderr.isatty() and os.environ.get("TERM", "dumb") != "dumb"


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
    quiet: Annotated[int, typer.Option("-q", "--quiet", count=True, help="Fewer logs.")] = 0,
) -> None:
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(
        level=max(logging.DEBUG, min(logging.CRITICAL, level)),
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        # the terminal's handler (basicConfig's), not a test harness's or a file's
        if type(handler) is logging.StreamHandler and not isinstance(
            handler.formatter, _PrintableFormatter
        ):
            handler.setFormatter(_PrintableFormatter(handler.formatter))


class _PrintableFormatter(logging.Formatter):
    """Log lines with every control character escaped (batchgen.textsafe): a logged
    batch name, prompt or API message cannot drive the terminal."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return printable_lines(self.inner.format(record))


def parse_rate(text: str | None) -> tuple[int, float] | None:
    """``20/10s``, ``20/10``, ``2/1s`` -> (requests, seconds)."""
    if text is None:
        return None
    rate = rate_from_text(text)
    if rate is None:
        raise UsageError(f"--rate {text!r}: expected REQUESTS/SECONDS, e.g. 20/10s")
    return rate


def parse_date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--date {text!r}: expected YYYY-MM-DD") from None
