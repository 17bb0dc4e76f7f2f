"""The step lock of a PostgreSQL batch (``run.lock.pg_step_lock``): getting a batch ready
is one worker at a time, a waiting worker gives up at once on a signal (exit 75,
nothing done), and the server drops the lock of a worker that is gone. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import sys

import pytest
from sqlalchemy import Engine

from batchgen.errors import LockHeldError
from batchgen.run.lock import pg_step_lock
from batchgen.store.schema import open_db


async def test_one_worker_at_a_time_gets_the_batch_ready(postgres_url: str) -> None:
    first, second = open_db(postgres_url), open_db(postgres_url)
    order: list[str] = []

    async def worker(db: Engine, name: str, hold: float) -> None:
        async with pg_step_lock(db, "shared"):
            order.append(f"{name} in")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    try:
        a = asyncio.create_task(worker(first, "a", 0.5))
        await asyncio.sleep(0.1)  # a holds it
        await asyncio.gather(a, worker(second, "b", 0.0))
        # another batch's step never waits for this one's
        async with pg_step_lock(first, "shared"), pg_step_lock(second, "other"):
            pass
    finally:
        first.dispose()
        second.dispose()
    assert order == ["a in", "a out", "b in", "b out"]


HOLDER = """
import asyncio, sys
from batchgen.run.lock import pg_step_lock
from batchgen.store.schema import open_db

async def main():
    async with pg_step_lock(open_db(sys.argv[1]), "shared"):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_signal_ends_the_wait_and_a_killed_holders_lock_is_dropped(
    postgres_url: str,
) -> None:
    waiter = open_db(postgres_url)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, postgres_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        with pytest.raises(LockHeldError, match="nothing was done"):
            async with pg_step_lock(waiter, "shared", stop=stop):
                pass
        holder.kill()  # kill -9: no unlock, no goodbye; the server drops the lock
        await holder.wait()
        async with asyncio.timeout(5), pg_step_lock(waiter, "shared"):
            pass
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        waiter.dispose()
