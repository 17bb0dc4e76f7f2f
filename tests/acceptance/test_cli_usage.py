"""The command line as a newcomer meets it: `--version`, `--db` before the command,
usage lines that name their arguments, and bad choices said plainly."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.processes import imported_after


def batchgen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_prints_the_package_version_and_imports_nothing_heavy() -> None:
    proc = batchgen("--version")
    assert proc.returncode == 0 and proc.stdout == f"batchgen {version('batchgen')}\n"
    assert proc.stdout == "batchgen 0.1.0\n"
    code = "import sys\nfrom batchgen.cli import main\nsys.argv = ['batchgen', '--version']\n"
    code += "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code\n"
    assert imported_after(code) == []
    assert "--version" in batchgen("--help").stdout


def test_db_works_before_the_command_and_the_commands_own_value_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    proc = batchgen("--db", str(first), "status")
    assert proc.returncode == 2 and f"{first}: no state database here" in proc.stderr
    proc = batchgen("--db", str(first), "status", "--db", str(second))
    assert proc.returncode == 2 and f"{second}: no state database here" in proc.stderr
    proc = batchgen("status", "--db", str(second))  # after the command, as always
    assert proc.returncode == 2 and f"{second}: no state database here" in proc.stderr
    # the global option beats $BATCHGEN_DB; the command's own --db beats both
    env = {"BATCHGEN_DB": str(tmp_path / "env.db")}
    assert f"{first}: no state" in batchgen("--db", str(first), "export", env=env).stderr
    assert "env.db: no state" in batchgen("export", env=env).stderr
    proc = batchgen("-q", "--db", str(first), "cancel", "b", "--db", str(second), env=env)
    assert proc.returncode == 2 and f"{second}: no state database here" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("validate", "validate [OPTIONS] MANIFEST"),
        ("plan", "plan [OPTIONS] MANIFEST"),
        ("run", "run [OPTIONS] MANIFEST"),
        ("status", "status [OPTIONS] [BATCH]"),
        ("report", "report [OPTIONS] [BATCH]"),
        ("export", "export [OPTIONS] [BATCH]"),
        ("resume", "resume [OPTIONS] [BATCH]"),
        ("retry", "retry [OPTIONS] BATCH"),
        ("cancel", "cancel [OPTIONS] BATCH"),
    ],
)
def test_usage_lines_name_their_arguments_in_capitals(command: str, usage: str) -> None:
    proc = batchgen(command, "--help")
    assert proc.returncode == 0 and f"batchgen {usage}\n" in proc.stdout
    assert "{" not in proc.stdout.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["export", "--format", "xml"], "--format must be csv or jsonl (not 'xml')"),
        (["report", "--posters", "big"], "--posters must be file, inline or none (not 'big')"),
        (["run", "m.yaml", "--in-doubt", "x"], "--in-doubt must be resubmit or hold (not 'x')"),
        (["resume", "--on-lost", "y"], "--on-lost must be fail or resubmit (not 'y')"),
        (["run", "m.yaml", "--concurrency", "0"], "--concurrency must be at least 1 (not '0')"),
        (["run", "m.yaml", "--concurrency", "1.5"], "--concurrency must be a whole number"),
        (["resume", "--posts-in-flight", "0"], "--posts-in-flight must be at least 1 (not '0')"),
        (["resume", "--budget-usd", "-1"], "--budget-usd must be at least 0 (not '-1')"),
        (["retry", "b", "--wait-lock", "soon"], "--wait-lock must be a number (not 'soon')"),
        (["status", "--failures", "x"], "--failures must be a whole number (not 'x')"),
        (["sim", "--port", "70000"], "--port must be at most 65535 (not '70000')"),
    ],
)
def test_a_bad_choice_is_said_plainly(tmp_path: Path, args: list[str], said: str) -> None:
    db = [] if args[0] == "sim" else ["--db", str(tmp_path / "s.db")]
    proc = batchgen(*args, *db)
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert (
        "Value error" not in proc.stderr
        and "Input should" not in proc.stderr
        and "Traceback" not in proc.stderr
    )
    assert not list(tmp_path.iterdir())
