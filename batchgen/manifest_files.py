"""Files a manifest reads values from: ``.txt`` (one value per line), ``.csv`` and ``.jsonl``.

Every value keeps the line it came from, so a problem with it can name the place.
Blank lines and lines starting with ``#`` are skipped in ``.txt`` and ``.jsonl``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_SUFFIXES = (".csv", ".jsonl", ".txt")


class FileProblem(ValueError):
    """A problem in a values file; ``line`` where known, ``fix`` what to do."""

    def __init__(self, message: str, *, line: int | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    values: dict[str, Any]


def _text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileProblem(
            f"file {path} does not exist",
            fix="check the path (relative paths start at the manifest's folder)",
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise FileProblem(f"file {path} cannot be read: {exc}", fix="check the path") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FileProblem(
            f"file {path} is not UTF-8 text", line=line, fix="save it as UTF-8"
        ) from None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank, non-comment line of a ``.txt`` file."""
    out = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            out.append((number, text))
    return out


def read_rows(path: Path) -> list[Row]:
    """The rows of a ``.csv`` (header = names), ``.jsonl`` (one object per line) or
    ``.txt`` (one prompt per line) file."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise FileProblem(
            f"file {path} has an unknown kind ({suffix or 'no suffix'})",
            fix="use .csv (a header row of names), .jsonl (one JSON object per line) "
            "or .txt (one prompt per line)",
        )
    if suffix == ".txt":
        return [Row(n, {"prompt": text}) for n, text in read_lines(path)]
    text = _text(path)
    return _csv_rows(text) if suffix == ".csv" else _jsonl_rows(text)


def _csv_rows(text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    names = [h.strip() for h in header]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise FileProblem(
            "the header row needs a distinct, non-empty name for every column",
            line=1,
            fix="name each column once, e.g. prompt,subject,style",
        )
    rows = []
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
            rows.append(Row(line, dict(zip(names, (c.strip() for c in cells), strict=True))))
    except csv.Error as exc:
        raise FileProblem(f"malformed CSV: {exc}", line=reader.line_num) from None
    return rows


def _jsonl_rows(text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
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
        if not isinstance(value, dict):
            raise FileProblem(
                "each line must be a JSON object", line=number, fix='e.g. {"prompt": "a cat"}'
            )
        rows.append(Row(number, value))
    return rows
