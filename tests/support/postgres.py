"""A real PostgreSQL server for the tests: a throwaway one started here, or the one that
``$BATCHGEN_TEST_POSTGRES`` names. The fixtures in ``tests/conftest.py`` use it; nothing
in the suite mocks PostgreSQL.

The throwaway server is Debian's (``tests/ensure_postgres.sh`` installs it): ``initdb`` in
a folder under ``/var/tmp`` (not ``/tmp``: pytest's and systemd's private temporary folders
are closed to the ``postgres`` user), owned by ``postgres`` and run as that user through
``runuser`` when the tests run as root (the server refuses to run as root). It listens on
127.0.0.1 only, on a free port, with its socket in its own folder; it is a test server, so
it trades durability for speed (``fsync=off``): nothing here tests a power cut.

``shared_server`` lets the workers of one parallel run (pytest-xdist) share one server:
the first to need it starts it, the last to leave stops it (a count in a locked file).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = ["PostgresUnavailable", "TestServer", "find_bindir", "start_server"]

_SETTINGS = """
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
log_min_messages = warning
"""


_ROOT = "/var/tmp"
_PREFIX = "batchgen-pg-"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be had for the tests (the message says why, in one line)."""


def find_bindir() -> Path | None:
    """Debian's server binaries (the newest version), else ``pg_ctl`` on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0],
    )
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` alone (user, password, host kept)."""
    query = dict(parse_qs(urlsplit(url).query))
    query["options"] = [f"-csearch_path={schema}"]
    return urlunsplit(urlsplit(url)._replace(query=urlencode(query, doseq=True)))


@dataclass
class TestServer:
    """A server the tests may create databases on; ``url`` reaches its admin database."""

    __test__ = False  # a helper, not a test class, whatever its name

    url: str
    #: the folder of a server started here (removed by ``stop``); None for a given server
    folder: Path | None = None
    bindir: Path | None = None
    as_user: str | None = None
    _databases: list[str] = field(default_factory=list)

    def create_database(self) -> str:
        """A new empty schema of the test's own; returns a URL whose connections see
        only it (``search_path``). A schema, not a database: CREATE DATABASE takes most
        of a second, a schema a few milliseconds, and the store's SQL names no schema."""
        name = "batchgen_test_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        self._databases.append(name)
        return with_schema(self.url, name)

    def drop_database(self, url: str) -> None:
        """Drop a schema made by ``create_database``, with everything in it."""
        name = parse_qs(urlsplit(url).query)["options"][0].removeprefix("-csearch_path=")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        if name in self._databases:
            self._databases.remove(name)

    def stop(self) -> None:
        """Stop a server started here and remove its folder; leave a given one running
        (its test databases are dropped)."""
        if self.folder is None:
            for name in list(self._databases):
                self.drop_database(with_schema(self.url, name))
            return
        if (self.folder / "data" / "postmaster.pid").exists():
            _run(self, ["pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


def _run(server: TestServer, argv: list[str], timeout: float = 60) -> None:
    assert server.bindir is not None and server.folder is not None
    cmd = [str(server.bindir / argv[0]), *argv[1:]]
    if server.as_user:
        cmd = [_runuser(), "-u", server.as_user, "--", *cmd]
    proc = subprocess.run(
        cmd, cwd=server.folder, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise PostgresUnavailable(f"{argv[0]} failed: {last[-1] if last else proc.returncode}")


def _runuser() -> str:
    # in /usr/sbin, which a bare PATH (`env -i ... make test`, cron) leaves out
    for candidate in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise PostgresUnavailable("running as root and there is no runuser to start the server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(bindir: Path) -> None:
    """Stop the servers of test sessions that were killed before their teardown (their
    folder's ``session.pid`` names a process that is gone), and remove their folders."""
    for pidfile in Path(_ROOT).glob(_PREFIX + "*/session.pid"):
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            continue  # another session's live server (another worktree, an xdist worker)
        folder = pidfile.parent
        owner = pwd.getpwuid(folder.stat().st_uid).pw_name
        orphan = TestServer(url="", folder=folder, bindir=bindir,
                            as_user=owner if os.geteuid() == 0 else None)  # fmt: skip
        try:
            orphan.stop()
        except PostgresUnavailable:
            shutil.rmtree(folder, ignore_errors=True)
    # the shared state of a parallel run whose server is gone (see shared_server)
    for state in Path(_ROOT).glob(_PREFIX + "run-*.json"):
        with contextlib.suppress(OSError, ValueError):
            if not Path(json.loads(state.read_text() or "{}").get("folder", "/")).is_dir():
                state.unlink()


def start_server(session_pid: int | None = None) -> TestServer:
    """``initdb`` and start a throwaway server; ``PostgresUnavailable`` when it cannot.
    ``session_pid``: the process whose end makes the server an orphan (this one)."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "no initdb under /usr/lib/postgresql/*/bin (run tests/ensure_postgres.sh)"
        )
    sweep_orphans(bindir)
    as_user = None
    folder = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=_ROOT))
    (folder / "session.pid").write_text(str(session_pid or os.getpid()))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            raise PostgresUnavailable("running as root and there is no postgres user") from None
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = "postgres"
    server = TestServer(url="", folder=folder, bindir=bindir, as_user=as_user)
    try:
        data = str(folder / "data")
        initdb = ["initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        _run(server, [*initdb, "--locale=C.UTF-8", "--no-sync", "--no-instructions"])
        conf = folder / "data" / "postgresql.conf"
        with conf.open("a") as f:  # the owner is postgres; root may still append
            f.write(_SETTINGS)
        # a port free now may be taken before the server binds it: try a few
        for attempt in range(5):
            port = _free_port()
            try:
                pg_ctl = ["pg_ctl", "-D", data, "-l", str(folder / "server.log"), "-w"]
                _run(server, [*pg_ctl, "-t", "60", "-o", f"-p {port} -k {folder}", "start"])
            except PostgresUnavailable:
                if attempt == 4:
                    raise
                continue
            server.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            return server
    except BaseException:
        server.stop()
        raise
    raise AssertionError("unreachable")


def given_server(url: str) -> TestServer:
    """The server ``$BATCHGEN_TEST_POSTGRES`` names, checked to answer."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PostgresUnavailable(f"BATCHGEN_TEST_POSTGRES does not answer: {first}") from None
    return TestServer(url=url)


@contextlib.contextmanager
def shared_server(run: str, session_pid: int) -> Iterator[TestServer]:
    """One throwaway server for every process of the test run ``run`` (the xdist
    workers of one session, whose controller is ``session_pid``): started by the first
    to ask, stopped by the last to leave. Each gets a view whose ``stop`` drops only
    the schemas it made."""
    state = Path(_ROOT) / f"{_PREFIX}run-{run}.json"
    with _locked(state) as shared:
        if not shared:
            server = start_server(session_pid)
            assert server.folder is not None and server.bindir is not None
            shared.update(url=server.url, folder=str(server.folder), bindir=str(server.bindir),
                          as_user=server.as_user, users=0)  # fmt: skip
        shared["users"] += 1
    view = TestServer(url=shared["url"])
    try:
        yield view
    finally:
        view.stop()
        with _locked(state) as shared:
            shared["users"] -= 1
            if shared["users"] <= 0:
                folder, bindir = Path(shared["folder"]), Path(shared["bindir"])
                last = TestServer(shared["url"], folder, bindir, shared["as_user"])
                last.stop()
                shared.clear()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON state in ``path`` under an exclusive lock, written back on exit (the
    file removed when the state is emptied)."""
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        data: dict[str, Any] = json.loads(text) if text.strip() else {}
        try:
            yield data
        finally:
            f.seek(0)
            f.truncate()
            if data:
                f.write(json.dumps(data))
                f.flush()
            else:
                path.unlink(missing_ok=True)
