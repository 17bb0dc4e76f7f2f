"""The Makefile's install stamps: `make demo` installs only the runtime dependencies,
`make test` the test extras too, whichever ran first (read with `make -n`, in a copy
of the Makefile, so nothing is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO

ROOT = REPO
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on PATH")


def dry_run(folder: Path, goal: str) -> list[str]:
    proc = subprocess.run(
        ["make", "-n", goal], cwd=folder, capture_output=True, text=True, timeout=30, check=True
    )
    return proc.stdout.splitlines()


def test_demo_needs_only_the_runtime_and_test_still_gets_its_extras(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    os.utime(tmp_path / "pyproject.toml", (1e9, 1e9))
    demo = dry_run(tmp_path, "demo")
    assert any(line.endswith("pip install -q -e .") for line in demo), demo
    assert not any("[test]" in line for line in demo), demo
    assert any("bench.demo" in line for line in demo)
    assert any(". .venv/bin/activate" in line for line in demo)  # how to reach batchgen

    # after a demo: the venv and the runtime stamp are there, the test extras are not
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    (tmp_path / ".venv" / ".installed-run").touch()
    assert not any("pip install" in line for line in dry_run(tmp_path, "demo"))
    test = dry_run(tmp_path, "test")
    assert any("pip install -q -e '.[test]'" in line for line in test), test
    assert any("pytest" in line for line in test)
    (tmp_path / ".venv" / ".installed-test").touch()
    assert not any("pip install" in line for line in dry_run(tmp_path, "test"))


def test_ci_still_runs_exactly_make_test() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [x for x in lines if x.strip() and not x.startswith("#")][-1] == "make test"
