"""Files a manifest reads values from: ``.txt`` (one value per line), ``.csv`` and ``.jsonl``.

Every value keeps the line it came from, so a problem with it can name the place.
Blank lines and lines starting with ``#`` are skipped in ``.txt`` and ``.jsonl``.
Only regular files are read (``batchgen.manifest.safefile``: no FIFO, device or folder), line by
line with a limit per line, and no more values or rows than the job limit allows, so
a hostile or mistaken file costs bounded time and memory.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from batchgen.errors import InputError
from batchgen.manifest.safefile import FileRefused, open_regular, too_big

TABLE_SUFFIXES = (".csv", ".jsonl", ".txt")
#: a ``file:`` values file is read whole: at most this many bytes
MAX_VALUES_BYTES = 10 * 1024 * 1024
#: values and rows files are read line by line: no line may be longer
MAX_LINE_BYTES = 256 * 1024
#: a ``rows:`` file is streamed, but its rows are kept: at most this many bytes
MAX_ROWS_BYTES = 256 * 1024 * 1024
#: lines a rows file may have beyond two per allowed row (blank lines, comments)
SPARE_LINES = 100_000


class FileProblem(InputError):
    """A problem in a values file; ``line`` where known, ``fix`` what to do."""

    def __init__(self, message: str, *, line: int | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    values: dict[str, Any]


def _lines(
    path: Path,
    *,
    max_bytes: int | None = None,
    max_lines: int | None = None,
    max_line: int = MAX_LINE_BYTES,
) -> Iterator[tuple[int, str]]:
    """``(line number, text with its line end)`` of every line, streamed: never more
    than ``max_line`` bytes are held at once, and a file over ``max_bytes`` bytes or
    ``max_lines`` lines is refused."""
    try:
        f = open_regular(path, "file")
    except FileRefused as exc:
        raise _refused(exc) from None
    with f:
        if max_bytes is not None and os.fstat(f.fileno()).st_size > max_bytes:
            raise _refused(too_big(path, "file", os.fstat(f.fileno()).st_size, max_bytes))
        number = total = 0
        while raw := _readline(f, path, max_line + 1):
            number += 1
            total += len(raw)
            if max_lines is not None and number > max_lines:  # blank lines count too
                raise FileProblem(
                    f"file {path} has more than {max_lines:,} lines",
                    line=number,
                    fix="remove the blank lines, or split the file",
                )
            if max_bytes is not None and total > max_bytes:  # it grew after the fstat
                raise _refused(too_big(path, "file", total, max_bytes))
            if len(raw) > max_line:
                raise FileProblem(
                    f"file {path}: a line longer than {max_line:,} bytes",
                    line=number,
                    fix="break the line up (is this really a text file?)",
                )
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise FileProblem(
                    f"file {path} is not UTF-8 text", line=number, fix="save it as UTF-8"
                ) from None


def _refused(exc: FileRefused) -> FileProblem:
    return FileProblem(str(exc), fix=exc.fix)


def _readline(f: BinaryIO, path: Path, limit: int) -> bytes:
    try:
        return f.readline(limit)
    except OSError as exc:
        raise FileProblem(f"file {path} cannot be read: {exc.strerror or exc}") from None


def _too_many(path: Path, limit: int) -> FileProblem:
    return FileProblem(
        f"file {path} has more than {limit:,} values, over the job limit of {limit:,}",
        fix=f"split the file, or raise the limit on the command line: --max-jobs {limit * 10}",
    )


def read_lines(path: Path, *, max_values: int | None = None) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank, non-comment line of a ``.txt`` file
    (at most ``MAX_VALUES_BYTES``; more than ``max_values`` lines is a problem)."""
    out: list[tuple[int, str]] = []
    max_lines = None if max_values is None else 2 * max_values + SPARE_LINES
    for number, line in _lines(path, max_bytes=MAX_VALUES_BYTES, max_lines=max_lines):
        text = line.strip()
        if text and not text.startswith("#"):
            if max_values is not None and len(out) >= max_values:
                raise _too_many(path, max_values)
            out.append((number, text))
    return out


def read_rows(path: Path, *, max_rows: int | None = None) -> list[Row]:
    """The rows of a ``.csv`` (header = names), ``.jsonl`` (one object per line) or
    ``.txt`` (one prompt per line) file, streamed line by line (each line at most
    ``MAX_LINE_BYTES``); more than ``max_rows`` rows is a problem."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise FileProblem(
            f"file {path} has an unknown kind ({suffix or 'no suffix'})",
            fix="use .csv (a header row of names), .jsonl (one JSON object per line) "
            "or .txt (one prompt per line)",
        )
    rows: list[Row] = []
    # Blank and comment lines cost time too: a file of a billion empty lines is no
    # table. Rows may spread over several lines (quoted CSV cells) and leave some blank.
    max_lines = None if max_rows is None else 2 * max_rows + SPARE_LINES
    lines = _lines(path, max_bytes=MAX_ROWS_BYTES, max_lines=max_lines)
    if suffix == ".txt":
        found: Iterator[Row] = (
            Row(n, {"prompt": text.strip()})
            for n, text in lines
            if text.strip() and not text.strip().startswith("#")
        )
    elif suffix == ".csv":
        found = _csv_rows(lines)
    else:
        found = _jsonl_rows(lines)
    for row in found:
        if max_rows is not None and len(rows) >= max_rows:
            raise _too_many(path, max_rows)
        rows.append(row)
    return rows


def _csv_rows(lines: Iterator[tuple[int, str]]) -> Iterator[Row]:
    reader = csv.reader(text for _n, text in lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise FileProblem(f"malformed CSV: {exc}", line=reader.line_num) from None
    names = [h.strip() for h in header]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise FileProblem(
            "the header row needs a distinct, non-empty name for every column",
            line=1,
            fix="name each column once, e.g. prompt,subject,style",
        )
    start = reader.line_num + 1
    try:
        for cells in reader:
            line = start
            start = reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(names):
                raise FileProblem(
                    f"row has {len(cells)} cells, the header has {len(names)}",
                    line=line,
                    fix="quote cells that contain commas",
                )
            # Cells are trimmed: "a, b" in a hand-written CSV means "b", not " b".
            yield Row(line, dict(zip(names, (c.strip() for c in cells), strict=True)))
    except csv.Error as exc:
        raise FileProblem(f"malformed CSV: {exc}", line=reader.line_num) from None


def _jsonl_rows(lines: Iterator[tuple[int, str]]) -> Iterator[Row]:
    for number, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FileProblem(
                f"malformed JSON: {exc.msg} (column {exc.colno})",
                line=number,
                fix="write one JSON object per line",
            ) from None
        except (ValueError, RecursionError) as exc:  # a huge number, too deeply nested
            raise FileProblem(
                f"unusable JSON: {str(exc) or 'nested too deeply'}",
                line=number,
                fix="write one flat JSON object per line",
            ) from None
        if not isinstance(value, dict):
            raise FileProblem(
                "each line must be a JSON object", line=number, fix='e.g. {"prompt": "a cat"}'
            )
        yield Row(number, value)
