"""Shared fixtures. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import os

import pytest

# The suite must behave the same from a terminal, cron, CI or `env -i`: nothing of the
# caller's shell may reach batchgen, in this process (CliRunner) or in the children that
# inherit os.environ. A test that wants a terminal, a width or a locale sets it itself.
# Tests must never reach the real service, whatever the caller's shell exports.
_CALLERS = ("RUNBASE_", "BATCHGEN_", "LC_")
_TERMINAL = ("TERM", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "CLICOLOR", "CLICOLOR_FORCE")
for _name in list(os.environ):
    if _name.startswith(_CALLERS) or _name in (*_TERMINAL, "LANG", "LANGUAGE"):
        del os.environ[_name]
# UTF-8 whatever locale the machine has (C.UTF-8 is built into glibc and musl)
os.environ.update(LC_ALL="C.UTF-8", PYTHONUTF8="1")


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own state folder (the per-key rate-limit files): no test writes to
    the real home, and no test waits for a window another test used. XDG_STATE_HOME too,
    for the children started with the BATCHGEN_ variables stripped."""
    folder = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("BATCHGEN_STATE_DIR", str(folder / "batchgen"))
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))


@pytest.fixture
def api_key() -> str:
    return "sk-test-0123456789abcdef"


_TIERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (its folder), so `pytest -m unit` runs one tier."""
    for item in items:
        tier = next((t for t in _TIERS if t in item.path.parts), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
