"""The HTML report of a real demo batch (simulator, engine, downloads), read as HTML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.errors import UsageError
from batchgen.report.page import write_report
from tests.support.reports import (
    Demo,
    demo,
)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    d = demo(tmp_path_factory.mktemp("report"))
    assert d.exit_code == 1  # one job fails for good
    return d


def test_an_unknown_axis_is_a_usage_error_and_writes_nothing(ran: Demo, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        write_report(ran.db, ran.batch_id, tmp_path / "r.html", cols="colour")
    # the axes are what varies on its own: the one 10-s clip's duration is decided by its
    # prompt and aspect ratio (as an include's would be), so it is no axis
    assert "colour" in str(err.value) and str(err.value).endswith("one of: prompt, aspect_ratio")
    assert not (tmp_path / "r.html").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", "report", "demo", "--db", str(ran.db_path),
         "--rows", "style", "--out", str(tmp_path / "r.html")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--rows 'style'" in proc.stderr and "one of: prompt, aspect_ratio\n" in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_an_out_that_cannot_be_a_file_is_a_usage_error(ran: Demo, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    for out, said in ((tmp_path, "is a folder"), (blocked / "r.html", "cannot write there")):
        proc = subprocess.run(
            [sys.executable, "-m", "batchgen", "report", "--db", str(ran.db_path),
             "--out", str(out)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_the_command_writes_beside_the_videos_and_prints_the_path(ran: Demo) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", "report", "--db", str(ran.db_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == (ran.out_dir / "report.html").resolve()
    assert "日本語の狐" in (ran.out_dir / "report.html").read_text(encoding="utf-8")
