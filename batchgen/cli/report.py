"""Commands: report (the HTML contact sheet) and export (CSV / JSON lines).

Parsing only; the work is in batchgen.report.page and batchgen.report.export. Both only read the
state database and need no API key. Both are imported inside the commands (with the store
and the manifest loader), for start-up (``batchgen.cli``).
"""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from batchgen.cli._app import DbOption, app
from batchgen.errors import CommandError, Problem, UsageError
from batchgen.files.outputs import Protected, check_outputs
from batchgen.redact import redact_text
from batchgen.store.reader import DEFAULT_DB
from batchgen.store.target import postgres_url
from batchgen.textsafe import printable, printable_lines

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from batchgen.report.export import Format
    from batchgen.store.schema import Batch

# The store and the export (SQLAlchemy) are imported inside the commands, so that
# `batchgen status` and `--help` start fast.

SIGPIPE_EXIT = 128 + 13

BatchArg = Annotated[
    str | None, typer.Argument(help="Batch name (default: the most recent).", show_default=False)
]


class Posters(enum.StrEnum):
    file = "file"
    inline = "inline"
    none = "none"


class ExportFormat(enum.StrEnum):
    csv = "csv"
    jsonl = "jsonl"


def _fail(exc: CommandError) -> typer.Exit:
    print(f"batchgen: {printable_lines(redact_text(str(exc)))}", file=sys.stderr)
    return typer.Exit(int(exc.exit_code))


def _check_out(out: Path, example: str) -> None:
    """--out must name a file: a folder there is a usage error (exit 2, nothing written)."""
    if out.is_dir():
        raise UsageError(
            [Problem(f"--out {out}", "is a folder", fix=f"name a file, e.g. --out {out / example}")]
        )


def _protected(db: Path, batch: Batch, out: Path) -> Protected:
    """The database, the batch's manifest, the files that manifest names (loaded
    only when ``out`` exists: a file the manifest reads exists, so only an existing
    ``out`` can be one) and the batch's videos and sidecars in its output folder."""
    file = None if postgres_url(db) else db  # a PostgreSQL database is no file to protect
    folders = [batch.out_dir]
    if not os.path.lexists(out):
        return Protected.of(file, batch.manifest_path, out_dirs=folders)
    from batchgen.manifest.loader import named_files

    named = named_files(batch.manifest_path, batch.run_date)
    return Protected.of(file, batch.manifest_path, named, out_dirs=folders)


def _unwritable(out: Path, exc: OSError) -> UsageError:
    reason = exc.strerror or str(exc)
    return UsageError(
        [Problem(f"--out {out}", f"cannot write there ({reason})", fix="choose a writable path")]
    )


@app.command()
def report(
    batch: BatchArg = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write the HTML file (default: report.html in the batch's "
            "output folder). Videos are linked relative to it.",
            show_default=False,
        ),
    ] = None,
    rows: Annotated[
        str | None,
        typer.Option(
            "--rows",
            help="Axis for the grid's rows (default: the manifest's first varying axis).",
            show_default=False,
        ),
    ] = None,
    cols: Annotated[
        str | None,
        typer.Option(
            "--cols",
            help="Axis for the columns (default: the next varying axis; the rest make one "
            "grid per value).",
            show_default=False,
        ),
    ] = None,
    posters: Annotated[
        Posters,
        typer.Option(
            "--posters",
            help="Poster frames: JPEG files in .posters/ beside the videos, inline in the "
            "HTML, or none.",
        ),
    ] = Posters.file,
    db: DbOption = Path(DEFAULT_DB),
) -> None:
    """Write a self-contained HTML contact sheet of BATCH and print its path.

    A grid of every job (rows and columns = the first two axes that vary, one grid
    per value of the rest), each cell a video that plays on hover with its inputs,
    cost, generation time and sidecar; failed and pending jobs show why. Header:
    totals and two small charts. No network needed to view it; zip the folder to
    share it. An unknown --rows/--cols exits 2 and lists the axes.

    Example: batchgen report nightly-2024-05-01 --cols resolution --out sheet.html
    """
    from batchgen.store.batches import find_batch
    from batchgen.store.schema import open_db

    try:
        engine = open_db(db, readonly=True)
        found = find_batch(engine, batch)
        assert found.id is not None
        target = out if out is not None else Path(found.out_dir) / "report.html"
        _check_out(target, "report.html")
        check_outputs([("--out", target)], _protected(db, found, target))
        try:
            from batchgen.report.page import write_report  # PyAV: only when a report is made

            path = write_report(
                engine, found.id, target, rows=rows, cols=cols, posters=posters.value
            )
        except OSError as exc:
            raise _unwritable(target, exc) from None
    except CommandError as exc:
        raise _fail(exc) from None
    print(path.resolve())


@app.command()
def export(
    batch: BatchArg = None,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="csv or jsonl (one JSON object a line).")
    ] = ExportFormat.csv,
    out: Annotated[
        str,
        typer.Option("--out", help="File to write (atomically), or - for standard output."),
    ] = "-",
    db: DbOption = Path(DEFAULT_DB),
) -> None:
    """Export one row per job of BATCH: inputs, axes, state, run id, attempts, cost,
    timings, output paths, checksums and errors.

    Example: batchgen export nightly-2024-05-01 --format csv --out jobs.csv
    """
    from batchgen.report.export import export_to_file
    from batchgen.store.batches import find_batch
    from batchgen.store.schema import open_db

    try:
        engine = open_db(db, readonly=True)
        found = find_batch(engine, batch)
        assert found.id is not None
        if out == "-":
            n = _to_stdout(engine, found.id, fmt.value)
        else:
            _check_out(Path(out), f"{found.name}.{fmt.value}")
            check_outputs([("--out", out)], _protected(db, found, Path(out)))
            try:
                n = export_to_file(engine, found.id, fmt.value, Path(out))
            except OSError as exc:
                raise _unwritable(Path(out), exc) from None
    except CommandError as exc:
        raise _fail(exc) from None
    where = "standard output" if out == "-" else out
    print(f"batchgen: {n} job(s) of {printable(found.name)} written to {where}", file=sys.stderr)


def _to_stdout(engine: Engine, batch_id: int, fmt: Format) -> int:
    """Write to standard output; a reader that stops early (``| head``) ends the
    command quietly with 141, as SIGPIPE ends any Unix tool."""
    from batchgen.report.export import write_export

    try:
        n = write_export(engine, batch_id, fmt, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit and complain: point it at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(SIGPIPE_EXIT) from None
    return n
