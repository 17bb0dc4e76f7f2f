"""Shared fixtures. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.support.postgres import (
    PostgresUnavailable,
    TestServer,
    given_server,
    shared_server,
    start_server,
)

# Read before the caller's BATCHGEN_ variables are cleared below: a PostgreSQL server to
# use instead of starting one (a URL; the tests create and drop their schemas in it).
# Carried to the xdist workers under a name the clearing below leaves alone (they
# inherit this process's cleared environment).
_TEST_POSTGRES = os.environ.get("BATCHGEN_TEST_POSTGRES") or os.environ.get(
    "PYTEST_BATCHGEN_POSTGRES", ""
)
if _TEST_POSTGRES:
    os.environ["PYTEST_BATCHGEN_POSTGRES"] = _TEST_POSTGRES
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


def _no_postgres(exc: PostgresUnavailable) -> NoReturn:
    message = f"no PostgreSQL for the tests: {exc}"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # a worker cannot end the run cleanly (xdist reports an internal error): its
        # PostgreSQL tests fail, each with this one line
        pytest.fail(message, pytrace=False)
    pytest.exit(message, returncode=3)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A server named by ``$BATCHGEN_TEST_POSTGRES`` that does not answer stops the run
    at once, with one line, before any worker starts."""
    if _TEST_POSTGRES and not os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            given_server(_TEST_POSTGRES)
        except PostgresUnavailable as exc:
            _no_postgres(exc)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TestServer]:
    """One real PostgreSQL server for the session (started on first use, stopped at the
    end), or the one ``$BATCHGEN_TEST_POSTGRES`` names. None to be had stops the run
    with one line: a PostgreSQL test is never skipped or mocked."""
    # the workers of a parallel run (xdist) share one server; their controller is the
    # process whose end makes it an orphan
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    with contextlib.ExitStack() as stack:
        try:
            if _TEST_POSTGRES:
                server = given_server(_TEST_POSTGRES)
                stack.callback(server.stop)
            elif run:
                server = stack.enter_context(shared_server(run, os.getppid()))
            else:
                server = start_server()
                stack.callback(server.stop)
        except PostgresUnavailable as exc:
            _no_postgres(exc)
        yield server


@pytest.fixture
def postgres_url(postgres_server: TestServer) -> Iterator[str]:
    """A fresh, empty schema of its own for each test (dropped after it): the URL's
    connections see nothing else."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


_TIERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (its folder), so `pytest -m unit` runs one tier."""
    for item in items:
        tier = next((t for t in _TIERS if t in item.path.parts), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
