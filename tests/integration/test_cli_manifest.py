"""validate, plan and status in-process (typer's CliRunner), on real SQLite files."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import StateError
from batchgen.manifest.loader import load_manifest
from batchgen.store import batches
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest
from tests.support.stored import stored_batch

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"BATCHGEN_DB": None})


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("no network call allowed here")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_validate_prints_the_job_count(tmp_path, no_network):
    result = invoke("validate", str(write_manifest(tmp_path, ["fox", "owl"])))
    assert result.exit_code == 0, result.stderr
    assert "valid, 4 jobs" in result.stdout
    assert "batch sweep" in result.stdout


def test_validate_reports_collapsed_duplicates(tmp_path):
    result = invoke("validate", str(write_manifest(tmp_path, ["fox", "owl", "fox"])))
    assert result.exit_code == 0, result.stderr
    assert "4 jobs, 2 identical combinations collapsed" in result.stdout
    assert "warning:" in result.stderr and "collapsed" in result.stderr
    as_json = json.loads(invoke("validate", str(tmp_path / "sweep.yaml"), "--json").stdout)
    assert (as_json["jobs"], as_json["collapsed"]) == (4, 2)


def test_validate_lists_every_problem_and_exits_2(tmp_path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "name: bad\nout_dir: out\nfilename: '{index}'\n"
        "defaults: {prompt: a fox, resolution: 4k}\n"
        "matrix:\n  aspect_ratio: ['16:9']\n"
        "repeats: 2\n"
    )
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2
    assert "4k" in result.stderr
    assert "repeats" in result.stderr
    assert "2 problems" in result.stderr
    assert str(manifest) in result.stderr
    assert result.stdout == ""


def test_validate_refuses_a_matrix_over_max_jobs(tmp_path):
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron"])
    assert invoke("validate", str(manifest), "--max-jobs", "5").exit_code == 2
    assert invoke("validate", str(manifest), "--max-jobs", "6").exit_code == 0


def test_validate_of_a_missing_file_exits_2(tmp_path):
    result = invoke("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_plan_json_has_the_job_count_and_creates_no_database(tmp_path, no_network):
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron"])
    before = snapshot(tmp_path)
    result = invoke("plan", str(manifest), "--json", "--db", str(tmp_path / "state.db"))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["jobs"] == 6
    assert data["stored"] is None
    assert data["to_submit"]["jobs"] == 6
    assert snapshot(tmp_path) == before  # not even an empty database file


def test_plan_against_a_database_changes_no_byte_of_it(tmp_path, no_network):
    db_path = stored_batch(tmp_path, ["fox", "owl", "heron"])
    write_manifest(tmp_path, ["fox", "owl", "lynx"])
    before = snapshot(tmp_path)
    result = invoke("plan", str(tmp_path / "sweep.yaml"), "--db", str(db_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert snapshot(tmp_path) == before  # same files, bytes and mtimes: no -wal, no -shm
    stored = json.loads(result.stdout)["stored"]
    assert stored == {
        "new": 2,
        "queued": 2,
        "in_progress": 0,
        "done": 1,
        "failed": 1,
        "unlisted": 2,
    }
    human = invoke("plan", str(tmp_path / "sweep.yaml"), "--db", str(db_path))
    assert "new 2, waiting 2" in human.stdout
    assert snapshot(tmp_path) == before


def test_plan_overrides_and_budget_warning(tmp_path):
    manifest = write_manifest(tmp_path, ["fox", "owl"])
    result = invoke(
        "plan", str(manifest), "--budget-usd", "0.5", "--rate", "2/1s", "--concurrency", "3"
    )
    assert result.exit_code == 0, result.stderr
    assert "warning: the estimate" in result.stdout
    assert "at 2/1s with 3 in flight" in result.stdout
    bad = invoke("plan", str(manifest), "--rate", "fast")
    assert bad.exit_code == 2
    assert "--rate" in bad.stderr


def test_plan_of_a_bad_manifest_exits_2_and_writes_nothing(tmp_path, no_network):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("name: [unclosed\n")
    result = invoke("plan", str(manifest), "--db", str(tmp_path / "state.db"))
    assert result.exit_code == 2
    assert str(manifest) in result.stderr
    assert not (tmp_path / "state.db").exists()


def test_status_counts_cost_and_failures(tmp_path, no_network):
    db_path = stored_batch(tmp_path, ["fox", "owl"])
    before = snapshot(tmp_path)
    result = invoke("status", "--db", str(db_path))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "batch     sweep" in out
    assert "jobs      4: queued 2, succeeded 1, failed 1" in out
    assert "$0.48 so far" in out  # two paid runs of 242,000 micro-USD
    assert "model_error: the model refused" in out
    assert "batchgen retry sweep --failed" in out
    data = json.loads(invoke("status", "sweep", "--db", str(db_path), "--json").stdout)
    assert data["jobs"] == 4
    assert data["by_state"]["succeeded"] == 1
    assert data["in_doubt"] == 0
    assert data["cost_usd"] == pytest.approx(0.484)
    assert data["failures"][0]["error"] == "the model refused"
    assert data["errors"] == [{"code": "model_error", "error": "the model refused", "jobs": 1}]
    assert snapshot(tmp_path) == before


def test_status_shows_unlisted_and_in_doubt(tmp_path):
    db_path = stored_batch(tmp_path, ["fox", "owl"])
    db = open_db(db_path)
    batches.sync_batch(db, load_manifest(write_manifest(tmp_path, ["fox"])))
    db.dispose()
    data = json.loads(invoke("status", "--db", str(db_path), "--json").stdout)
    assert data["unlisted"] == {"queued": 2}
    assert "unlisted  2 no longer in the manifest" in invoke("status", "--db", str(db_path)).stdout


def test_status_of_an_unknown_batch_or_database_exits_2(tmp_path):
    db_path = stored_batch(tmp_path, ["fox"])
    unknown = invoke("status", "swep", "--db", str(db_path))
    assert unknown.exit_code == 2
    assert "no batch named 'swep'" in unknown.stderr and "sweep" in unknown.stderr
    missing = invoke("status", "--db", str(tmp_path / "none.db"))
    assert missing.exit_code == 2
    assert "none.db" in missing.stderr
    assert not (tmp_path / "none.db").exists()


def test_every_command_has_help_with_an_example():
    for command in ("validate", "plan", "status"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert f"Example: batchgen {command}" in result.stdout


def test_status_reads_a_database_a_writer_holds_open(tmp_path):
    """With a run active (its WAL not folded back yet) status sees every commit."""
    db = open_db(tmp_path / "state.db")
    with db.connect():  # a writer keeps the database (and its WAL) open
        batches.sync_batch(db, load_manifest(write_manifest(tmp_path, ["fox"])))
        assert (tmp_path / "state.db-wal").exists()
        first = json.loads(invoke("status", "--db", str(tmp_path / "state.db"), "--json").stdout)
        batches.sync_batch(db, load_manifest(write_manifest(tmp_path, ["fox", "owl"])))
        second = json.loads(invoke("status", "--db", str(tmp_path / "state.db"), "--json").stdout)
    db.dispose()
    assert (first["jobs"], second["jobs"]) == (2, 4)


@pytest.mark.parametrize("command", ["status", "plan"])
def test_a_db_that_is_no_database_or_a_folder_exits_2_untouched(tmp_path, command):
    manifest = write_manifest(tmp_path, ["fox"])
    garbage = tmp_path / "notes.db"
    garbage.write_text("not a database\n")
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    head = ["plan", str(manifest)] if command == "plan" else ["status"]
    bad = invoke(*head, "--db", str(garbage))
    assert bad.exit_code == 2
    assert f"{garbage}: cannot use it as a batchgen state database" in bad.stderr
    assert "Traceback" not in bad.stderr
    folder = invoke(*head, "--db", str(tmp_path / "folder"))
    assert folder.exit_code == 2
    assert "is a folder; --db names the database file" in folder.stderr
    assert snapshot(tmp_path) == before


def test_open_db_for_writing_refuses_a_file_that_is_no_database(tmp_path):
    garbage = tmp_path / "notes.db"
    garbage.write_text("not a database\n")
    with pytest.raises(StateError, match="cannot use it as a batchgen state database"):
        open_db(garbage)
    assert garbage.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    with pytest.raises(StateError, match="is a folder"):
        open_db(tmp_path)


def test_validate_json_lists_the_problems_on_stdout(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("name: x\nmatrix:\n  prompt: [a]\n  aspect_ratio: ['2:1']\n")
    result = invoke("validate", str(manifest), "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False
    [problem] = data["problems"]
    assert (problem["file"], problem["line"], problem["column"]) == (str(manifest), 4, 18)
    assert "'2:1' is not a valid aspect_ratio" in problem["message"]
    assert problem["fix"].startswith("use one of: 16:9")
    good = json.loads(invoke("validate", str(write_manifest(tmp_path, ["fox"])), "--json").stdout)
    assert (good["ok"], good["jobs"]) == (True, 2)
