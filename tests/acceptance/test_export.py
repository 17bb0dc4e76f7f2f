"""`batchgen export`: CSV and JSON lines of a real demo batch, read back with the
standard library's readers."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchgen.report.export import FIELDS, export_to_file, write_export
from batchgen.store import jobs as store
from batchgen.store.schema import open_db
from tests.support.reports import BAD_PROMPT, INJECTION, UNICODE, Demo, big_batch, demo


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return demo(tmp_path_factory.mktemp("export"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def _check_rows(ran: Demo, rows: list[dict[str, Any]]) -> None:
    assert len(rows) == 10
    assert [int(r["idx"]) for r in rows] == list(range(10))
    by_prompt = {r["prompt"]: r for r in rows}
    assert INJECTION in by_prompt and UNICODE in by_prompt
    failed = by_prompt[BAD_PROMPT]
    assert failed["state"] == "failed" and failed["error_code"] == "invalid_input"
    assert "7:3" in failed["error"]
    assert all(r["batch"] == "demo" and r["out_dir"] == str(ran.out_dir) for r in rows)


def test_jsonl_round_trips_with_native_types(ran: Demo, tmp_path: Path) -> None:
    n = export_to_file(ran.db, ran.batch_id, "jsonl", tmp_path / "jobs.jsonl")
    lines = (tmp_path / "jobs.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert n == 10 and list(rows[0]) == list(FIELDS)
    _check_rows(ran, rows)
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
    _check_rows(ran, rows)
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


def test_the_command_writes_to_stdout_or_a_file(ran: Demo, tmp_path: Path) -> None:
    proc = _cli("export", "demo", "--format", "jsonl", "--db", str(ran.db_path))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    _check_rows(ran, rows)
    assert "10 job(s) of demo" in proc.stderr
    proc = _cli("export", "--db", str(ran.db_path), "--out", str(tmp_path / "a" / "jobs.csv"))
    assert proc.returncode == 0, proc.stderr and proc.stdout == ""
    with open(tmp_path / "a" / "jobs.csv", encoding="utf-8", newline="") as fh:
        _check_rows(ran, list(csv.DictReader(fh)))
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["jobs.csv"]  # no temp left


def test_bad_usage_exits_2_and_writes_nothing(ran: Demo, tmp_path: Path) -> None:
    proc = _cli("export", "nope", "--db", str(ran.db_path), "--out", str(tmp_path / "x.csv"))
    assert proc.returncode == 2 and "nope" in proc.stderr
    proc = _cli("export", "--format", "xml", "--db", str(ran.db_path))
    assert proc.returncode == 2 and "xml" in proc.stderr
    proc = _cli("export", "--db", str(tmp_path / "none.db"))
    assert proc.returncode == 2 and "no state database" in proc.stderr
    assert not list(tmp_path.iterdir())
    # --out must name a file we can write: a folder, or a path that cannot be made
    proc = _cli("export", "--db", str(ran.db_path), "--out", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--out {tmp_path}: is a folder" in proc.stderr and "demo.csv" in proc.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    proc = _cli("export", "--db", str(ran.db_path), "--out", str(blocked / "jobs.csv"))
    assert proc.returncode == 2 and "cannot write there" in proc.stderr, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path: Path) -> None:
    big_batch(tmp_path / "s.db", tmp_path / "out", jobs=3000, files=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "export", "--format", "jsonl",
         "--db", str(tmp_path / "s.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # like `| head -1`: one line, then the pipe closes
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr  # as SIGPIPE ends any Unix tool
    assert json.loads(first)["idx"] == 0 and stderr == ""


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
