"""Export in-process from real batches."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from batchgen.report.export import FIELDS, export_to_file, write_export
from batchgen.store import jobs as store
from batchgen.store.schema import open_db
from tests.support.reports import Demo, check_export_rows, demo


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return demo(tmp_path_factory.mktemp("export"))


def test_jsonl_round_trips_with_native_types(ran: Demo, tmp_path: Path) -> None:
    n = export_to_file(ran.db, ran.batch_id, "jsonl", tmp_path / "jobs.jsonl")
    lines = (tmp_path / "jobs.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert n == 10 and list(rows[0]) == list(FIELDS)
    check_export_rows(ran, rows)
    ok = [r for r in rows if r["state"] == "succeeded"]
    assert len(ok) == 9 and sum(r["cost_micro_usd"] for r in rows) == 4_840_000
    for r in ok:
        (path,) = r["output_paths"]
        sidecar = json.loads((ran.out_dir / (path + ".json")).read_text(encoding="utf-8"))
        assert r["checksums"] == [sidecar["sha256"]] and r["run_id"] == sidecar["run_id"]
        assert (
            r["attempts"] == 1 and r["generation_s"] >= 0 and r["submitted_at"].endswith("+00:00")
        )
        assert r["input"]["prompt"] == r["prompt"] == r["axes"]["prompt"]
    tenth = next(r for r in rows if r["input"]["duration"] == "10")
    assert tenth["cost_usd"] == 0.968 and tenth["axes"] == {
        "prompt": "a red fox in fresh snow",
        "aspect_ratio": "1:1",
    }


def test_csv_round_trips_through_dictreader(ran: Demo, tmp_path: Path) -> None:
    out = tmp_path / "jobs.csv"
    assert export_to_file(ran.db, ran.batch_id, "csv", out) == 10
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    check_export_rows(ran, rows)
    header = list(rows[0])
    assert header[: len(FIELDS)] == list(FIELDS)
    assert header[len(FIELDS) :] == [
        "input.prompt",
        "input.aspect_ratio",
        "input.duration",
        "axis.prompt",
        "axis.aspect_ratio",
    ]
    jsonl = io.StringIO()
    write_export(ran.db, ran.batch_id, "jsonl", jsonl)
    native = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    for row, rec in zip(rows, native, strict=True):
        assert json.loads(row["input"]) == rec["input"] and row["input.prompt"] == rec["prompt"]
        assert json.loads(row["output_paths"]) == rec["output_paths"]
        assert json.loads(row["checksums"]) == rec["checksums"]
        assert int(row["cost_micro_usd"]) == rec["cost_micro_usd"]
        assert row["run_id"] == (rec["run_id"] or "") and row["listed"] == "true"
        assert row["media_note"] == "" and rec["media_note"] is None


def test_reading_takes_no_write_lock_from_the_engine(ran: Demo) -> None:
    # The live report reads through the run's own read-write engine (whose transactions
    # begin IMMEDIATE): the rows must stream without one, or the engine's commits wait.
    from batchgen.report.export import iter_records

    reader, writer = open_db(ran.db_path), open_db(ran.db_path)
    seen = 0
    for _rec in iter_records(reader, ran.batch_id):
        seen += 1
        if seen == 1:
            store.touch_batch(writer, ran.batch_id, ran.batch.updated_at)  # commits at once
    assert seen == 10
