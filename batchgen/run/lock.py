"""One runner per state database: an ``flock`` on ``<db>.lock`` beside it.

Why the whole database and not one batch: every batch in a database is driven with
the same API key, whose request limit is shared. Two runners would each believe they
own the whole limit and earn 429s; two runners on one batch could submit the same
job twice. So a second ``batchgen run`` on the same database waits or exits 75.

Why ``flock`` and not a pid file: the kernel drops the lock when its holder dies
(``kill -9``, OOM killer, power cut and reboot), so a stale lock cannot exist and
taking over is safe by construction: no pid check, no race between "is it dead?" and
"then it is mine". The file itself stays (unlinking it would race with a process
that has just opened it); its content is only a note for people: pid, host, start
time and batch of the holder (never the API key), overwritten by each new holder.

``flock`` is reliable on local file systems. On NFS it is emulated with POSIX locks
by Linux and depends on the server's lock manager: keep the state database local.

A PostgreSQL state database has no file, and no lock for the whole run: several workers
drive one batch together, each job's claim (owner, lease, epoch: ``PostgresStore``)
keeping two of them off one job. Only the step that gets the batch ready (the
manifest's sync into jobs, ``retry``'s re-queue) is one worker at a time
(``pg_step_lock``): two syncs of one manifest at once would both insert its new jobs.
It is a session advisory lock, so the server drops it when its holder's connection
ends (``kill -9``, a host gone), as the kernel drops an ``flock``. ``--wait-lock`` has
no meaning there: a worker waits for the step as long as it takes (a second or two).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from batchgen.errors import LockHeldError

log = logging.getLogger(__name__)

#: how often a waiting run tries again
POLL_S = 0.2


def lock_path(db_path: Path) -> Path:
    """``<db>.lock`` beside the real file: a symlink to the database shares its lock."""
    db_path = Path(db_path).resolve()
    return db_path.with_name(db_path.name + ".lock")


def read_holder(db_path: Path) -> dict[str, Any] | None:
    """The note the current (or last) holder left, or None when there is none."""
    try:
        text = lock_path(db_path).read_text(encoding="utf-8")
        value = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another batchgen process (it has not written its name yet)"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
        f"since {holder.get('started_at', '?')}, batch {holder.get('batch', '?')!r}"
    )


@contextlib.contextmanager
def batch_lock(db_path: Path, batch: str, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the database's lock for ``batch``; raise ``LockHeldError`` (exit 75) if taken.

    ``wait_s`` > 0: try again every ``POLL_S`` seconds for that long first (sleeping:
    from async code use ``abatch_lock``, which leaves the event loop free).
    """
    fd = _open(db_path)
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        tries = 0
        while not _try(fd, db_path, wait_s, deadline, tries):
            tries += 1
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        with _held(fd, db_path, batch):
            yield
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def abatch_lock(
    db_path: Path, batch: str, *, wait_s: float = 0.0, stop: asyncio.Event | None = None
) -> AsyncIterator[None]:
    """``batch_lock`` for async code: waits with ``asyncio.sleep`` (signal handlers and
    other tasks keep running), and gives up at once with ``LockHeldError`` (exit 75,
    nothing done) when ``stop`` is set, e.g. by SIGTERM during ``--wait-lock``."""
    fd = _open(db_path)
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        tries = 0
        while True:
            if stop is not None and stop.is_set():
                where = Path(db_path).resolve()
                held = f", in use by {describe(read_holder(db_path))}" if tries else ""
                raise LockHeldError(
                    f"stopped while waiting for the state database {where}{held}; nothing was done"
                )
            if _try(fd, db_path, wait_s, deadline, tries):
                break
            tries += 1
            pause = min(POLL_S, max(0.0, deadline - time.monotonic()))
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
        with _held(fd, db_path, batch):
            yield
    finally:
        os.close(fd)


#: the first key of the step lock's advisory lock: batchgen's, whatever else takes
#: advisory locks in that database ("batc" as a 32-bit number)
_STEP_NAMESPACE = 0x62617463
_TRY_STEP = text("SELECT pg_try_advisory_lock(:ns, hashtext(current_schema() || '/' || :name))")
_UNLOCK_STEP = text("SELECT pg_advisory_unlock(:ns, hashtext(current_schema() || '/' || :name))")


@contextlib.asynccontextmanager
async def pg_step_lock(
    db: Engine, batch: str, *, stop: asyncio.Event | None = None
) -> AsyncIterator[None]:
    """Hold the step lock of ``batch`` on a PostgreSQL state database (module docstring).

    Tried every ``POLL_S`` seconds with the event loop free, so a signal while another
    worker syncs ends the wait at once with ``LockHeldError`` (exit 75, nothing done).
    The key names the schema too: batches of one name in two schemas never wait for
    each other."""
    params = {"ns": _STEP_NAMESPACE, "name": batch}
    with db.connect() as conn:
        said = False
        while True:
            if stop is not None and stop.is_set():
                raise LockHeldError(
                    f"stopped while waiting for another worker to get batch {batch!r} "
                    "ready; nothing was done"
                )
            taken = bool(conn.execute(_TRY_STEP, params).scalar())
            conn.commit()  # a session lock outlives the transaction; no idle transaction
            if taken:
                break
            if not said:
                log.info("waiting for another worker to get batch %r ready", batch)
                said = True
            if stop is None:
                await asyncio.sleep(POLL_S)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
        try:
            yield
        finally:
            # the connection's end drops the lock too; unlocking first says so at once
            with contextlib.suppress(Exception):
                conn.execute(_UNLOCK_STEP, params)
                conn.commit()


def _open(db_path: Path) -> int:
    path = lock_path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC (Python's default): a child process never inherits the lock.
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def _held(fd: int, db_path: Path, batch: str) -> Iterator[None]:
    """The lock is ours: leave our note, and on the way out empty it and unlock."""
    try:
        previous = _read_fd(fd)
        if previous:
            # A holder that ended normally empties the file; this one died holding it.
            log.warning(
                "lock %s: taking over from %s, which is gone",
                lock_path(db_path),
                describe(previous),
            )
        _write_fd(fd, _note(batch))
        yield
    finally:
        # Empty the note before unlocking, so it never names a finished process.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)


def _try(fd: int, db_path: Path, wait_s: float, deadline: float, tries: int) -> bool:
    """Take the lock now (True), or False to try again, or raise once the wait is over."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
    holder = read_holder(db_path)
    if deadline - time.monotonic() <= 0:
        how = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
        where = Path(db_path).resolve()
        raise LockHeldError(
            f"the state database {where} is in use by {describe(holder)}{how}; "
            "nothing was done. Try later, or wait with --wait-lock SECONDS"
        )
    if tries == 0:  # say it once
        log.info("waiting up to %g s for %s", wait_s, describe(holder))
    return False


def _note(batch: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "batch": batch,
    }


def _read_fd(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        value = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_fd(fd: int, note: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(note, sort_keys=True) + "\n").encode())
    os.fsync(fd)


__all__ = [
    "POLL_S",
    "abatch_lock",
    "batch_lock",
    "describe",
    "lock_path",
    "pg_step_lock",
    "read_holder",
]
