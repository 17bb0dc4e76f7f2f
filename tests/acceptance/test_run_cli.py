"""`batchgen run/resume/retry/cancel` as a user types them: real subprocesses."""

from __future__ import annotations

import pytest

from tests.support.processes import batchgen


@pytest.mark.parametrize("key", [None, "", "pk-not-a-runbase-key"])
def test_a_missing_or_malformed_key_exits_2_before_anything_is_written(tmp_path, key):
    env = {} if key is None else {"RUNBASE_API_KEY": key}
    db = tmp_path / "state.db"
    proc = batchgen("run", str(tmp_path / "m.yaml"), "--db", str(db), env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "RUNBASE_API_KEY" in proc.stderr
    assert not db.exists()
    assert key is None or not key or key not in proc.stderr + proc.stdout


def test_resume_and_retry_need_the_key_too(tmp_path):
    for args in (["resume"], ["retry", "b", "--failed"]):
        proc = batchgen(*args, "--db", str(tmp_path / "s.db"), cwd=tmp_path)
        assert proc.returncode == 2 and "RUNBASE_API_KEY" in proc.stderr
    assert not (tmp_path / "s.db").exists()


def test_every_command_has_help_with_an_example():
    for cmd in ("run", "resume", "retry", "cancel"):
        proc = batchgen(cmd, "--help")
        assert proc.returncode == 0 and "Example:" in proc.stdout, cmd
    assert "Exit codes" in batchgen("run", "--help").stdout


def test_a_bad_base_url_exits_2_before_anything_is_written(tmp_path):
    (tmp_path / "m.yaml").write_text("name: b\nout_dir: out\ndefaults:\n  prompt: a fox\n")
    key = {"RUNBASE_API_KEY": "sk-sim-0000000000000000"}
    db = tmp_path / "s.db"
    by_flag = batchgen(
        "run", "m.yaml", "--db", str(db), "--base-url", "nope", env=key, cwd=tmp_path
    )
    by_env = batchgen("resume", "--db", str(db), env={**key, "RUNBASE_BASE_URL": "ftp://x"})
    assert by_flag.returncode == 2 and "--base-url 'nope' is not an API base URL" in by_flag.stderr
    assert "fix: give one like https://runbase.net" in by_flag.stderr
    assert by_env.returncode == 2 and "$RUNBASE_BASE_URL 'ftp://x'" in by_env.stderr
    assert not db.exists() and not (tmp_path / "out").exists()


def test_commands_on_a_missing_database_exit_2_and_create_nothing(tmp_path):
    key = {"RUNBASE_API_KEY": "sk-sim-0000000000000000"}
    db = tmp_path / "typo.db"
    for args in (["resume"], ["retry", "b"], ["cancel", "b"]):
        proc = batchgen(*args, "--db", str(db), env=key, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "typo.db: no state database here" in proc.stderr
    assert not db.exists()
