"""`batchgen export`: CSV and JSON lines of a real demo batch, read back with the
standard library's readers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.reports import (
    Demo,
    big_batch,
    check_export_rows,
    demo,
)


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


def test_the_command_writes_to_stdout_or_a_file(ran: Demo, tmp_path: Path) -> None:
    proc = _cli("export", "demo", "--format", "jsonl", "--db", str(ran.db_path))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    check_export_rows(ran, rows)
    assert "10 job(s) of demo" in proc.stderr
    proc = _cli("export", "--db", str(ran.db_path), "--out", str(tmp_path / "a" / "jobs.csv"))
    assert proc.returncode == 0, proc.stderr and proc.stdout == ""
    with open(tmp_path / "a" / "jobs.csv", encoding="utf-8", newline="") as fh:
        check_export_rows(ran, list(csv.DictReader(fh)))
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
