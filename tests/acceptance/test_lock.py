"""The state database's lock, against real processes (held, released, killed with -9)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen.errors import ExitCode, LockHeldError
from batchgen.run.lock import abatch_lock, batch_lock, lock_path, read_holder

HOLD = """
import sys, time
from pathlib import Path
from batchgen.run.lock import batch_lock
with batch_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
print("released", flush=True)
"""


def holder(db: Path, batch: str, seconds: float) -> subprocess.Popen[str]:
    """A real process that takes the lock and keeps it ``seconds``; returns once held."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), batch, str(seconds)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state.db"


def test_a_second_taker_is_refused_at_once_naming_the_holder(db: Path) -> None:
    proc = holder(db, "nightly-2026-11-25", 30)
    try:
        with pytest.raises(LockHeldError) as err, batch_lock(db, "other-batch"):
            pytest.fail("the lock was taken twice")
        text = str(err.value)
        assert f"pid {proc.pid}" in text and socket.gethostname() in text
        assert "'nightly-2026-11-25'" in text and "--wait-lock" in text
        assert err.value.exit_code == ExitCode.INTERRUPTED and int(err.value.exit_code) == 75
        note = read_holder(db)
        assert (
            note is not None and note["pid"] == proc.pid and note["batch"] == "nightly-2026-11-25"
        )
        assert set(note) == {"pid", "host", "started_at", "batch"}  # nothing else, no key
    finally:
        proc.kill()
        proc.wait()


def test_the_same_process_cannot_take_it_twice(db: Path) -> None:
    with batch_lock(db, "a"), pytest.raises(LockHeldError), batch_lock(db, "b"):
        pass


def test_a_waiter_gets_the_lock_when_the_holder_finishes(db: Path) -> None:
    proc = holder(db, "first", 0.6)
    with batch_lock(db, "second", wait_s=20):
        assert proc.wait(5) == 0  # the holder had to finish first
        note = read_holder(db)
        assert note is not None and note["batch"] == "second" and note["pid"] == os.getpid()
    assert lock_path(db).read_text() == ""  # released: the note no longer names anyone


def test_a_waiter_gives_up_after_its_wait(db: Path) -> None:
    proc = holder(db, "first", 30)
    try:
        with (
            pytest.raises(LockHeldError, match=r"after waiting 0\.5 s"),
            batch_lock(db, "second", wait_s=0.5),
        ):
            pass
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_holder_killed_with_sigkill_leaves_a_lock_that_is_taken_over(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = holder(db, "killed", 60)
    with pytest.raises(LockHeldError), batch_lock(db, "next"):
        pass
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(5) == -signal.SIGKILL
    stale = json.loads(lock_path(db).read_text())
    assert stale["pid"] == proc.pid  # no cleanup ran: the note of a dead process stays

    with caplog.at_level(logging.WARNING, logger="batchgen.run.lock"), batch_lock(db, "next"):
        note = read_holder(db)
        assert note is not None and note["pid"] == os.getpid() and note["batch"] == "next"
    assert f"pid {proc.pid}" in caplog.text and "gone" in caplog.text


def test_only_one_of_many_simultaneous_takers_wins(db: Path) -> None:
    wins: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(8)
    held = threading.Event()
    release = threading.Event()

    def take(name: str) -> None:
        barrier.wait()
        try:
            with batch_lock(db, name):
                wins.append(name)
                held.set()
                release.wait(5)
        except LockHeldError:
            refused.append(name)
            if len(refused) == 7:
                release.set()

    threads = [threading.Thread(target=take, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1 and len(refused) == 7


async def test_an_async_waiter_leaves_the_loop_free_and_gets_the_lock(db: Path) -> None:
    proc = holder(db, "first", 0.8)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    other = asyncio.create_task(ticker())
    try:
        async with abatch_lock(db, "second", wait_s=20):
            assert proc.wait(5) == 0  # the holder had to finish first
            assert ticks > 5  # the loop ran other work while this one waited
            note = read_holder(db)
            assert note is not None and note["batch"] == "second"
    finally:
        other.cancel()
    assert lock_path(db).read_text() == ""


async def test_an_async_waiter_stops_at_once_when_told(db: Path) -> None:
    proc = holder(db, "first", 60)
    try:
        stop = asyncio.Event()

        async def wait() -> None:
            async with abatch_lock(db, "second", wait_s=600, stop=stop):
                pytest.fail("the lock was taken twice")

        waiter = asyncio.create_task(wait())
        await asyncio.sleep(0.3)
        assert not waiter.done()  # it is waiting, and this task runs meanwhile
        stop.set()  # what SIGTERM does in the runner
        with pytest.raises(LockHeldError, match=f"stopped while waiting.*pid {proc.pid}") as err:
            await asyncio.wait_for(waiter, 5)
        assert err.value.exit_code == ExitCode.INTERRUPTED
        assert proc.poll() is None and read_holder(db) is not None  # the holder keeps it
    finally:
        proc.kill()
        proc.wait()


def test_a_symlink_to_the_database_shares_its_lock(db: Path, tmp_path: Path) -> None:
    link = tmp_path / "elsewhere" / "link.db"
    link.parent.mkdir()
    db.touch()
    link.symlink_to(db)
    proc = holder(db, "first", 30)
    try:
        with pytest.raises(LockHeldError, match=f"pid {proc.pid}"), batch_lock(link, "second"):
            pytest.fail("the same database was locked twice through a symlink")
        assert lock_path(link) == lock_path(db) == db.with_name("state.db.lock")
    finally:
        proc.kill()
        proc.wait()
