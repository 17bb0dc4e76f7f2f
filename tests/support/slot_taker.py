"""A process that spends one key's requests as a worker on a host of its own would: a
``RequestLimiter`` with its own window file (its own state folder, so no file is
shared with the other takers) and the key's slots in PostgreSQL (``KeySlots``),
sending POSTs and GETs to the simulator from several tasks at once until a wall-clock
time. For the cross-host limit tests and ``bench/bench_keyslots.py``.

Run as ``python -m tests.support.slot_taker '<Plan as JSON>'``; it prints its
``Tally`` as one JSON line when done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from batchgen.errors import RunbaseError
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.runbase.shared_window import SharedWindow, key_fingerprint
from batchgen.store.pg.slots import KeySlots

MODEL = "bytedance/seedance-1-pro"
INPUT = {"prompt": "a kite", "aspect_ratio": "16:9", "resolution": "720p", "duration": "5"}


@dataclass(frozen=True)
class Plan:
    base_url: str
    key: str
    pg_url: str
    state_dir: str
    limit: int
    window_s: float
    margin_s: float  # the slots' margin (KeySlots)
    start_at: float  # wall time: every taker starts together
    until: float  # wall time
    name: str = "taker"  # the label of its PostgreSQL connection (application_name)
    submitters: int = 2  # tasks that POST then GET (priorities 1 then 0)
    pollers: int = 1  # tasks that only GET early (priority 2)


@dataclass
class Tally:
    sent: int = 0  # requests the limiter let through
    sent_in_run: int = 0  # ... between start_at and until (not the stragglers after)
    answered_429: int = 0
    slots_asked: int = 0  # database round trips for a slot
    round_trip_ms_mean: float = 0.0
    round_trip_ms_max: float = 0.0
    given_back: int = 0  # slots taken and not used (stale, or the file refused)


async def take(plan: Plan) -> Tally:
    url = f"{plan.pg_url}{'&' if '?' in plan.pg_url else '?'}application_name={plan.name}"
    slots = await KeySlots.open(
        url, limit=plan.limit, window_s=plan.window_s, margin_s=plan.margin_s
    )
    limiter = RequestLimiter(
        plan.limit,
        plan.window_s,
        shared=SharedWindow.for_key(plan.key, Path(plan.state_dir)),
        slots=slots.for_key(key_fingerprint(plan.key)),
    )
    tally = Tally()
    client = RunbaseClient(plan.base_url, plan.key, limiter=limiter, timeout_s=10.0)

    async def submitter(n: int) -> None:
        i = 0
        while time.time() < plan.until:
            i += 1
            try:
                run = await client.create_run(
                    MODEL, INPUT, idempotency_key=f"{plan.name}-{n}-{i}", priority=1
                )
                await client.get_run(run.id, priority=0)
            except RunbaseError:
                pass  # counted by the simulator; the test reads its figures

    async def poller() -> None:
        while time.time() < plan.until:
            with contextlib.suppress(RunbaseError):  # 404: still a request the key spent
                await client.get_run("run_none", priority=2)

    await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    began = time.monotonic() - (time.time() - plan.start_at)  # start_at on this clock
    async with client:
        tasks = [submitter(n) for n in range(plan.submitters)]
        tasks += [poller() for _ in range(plan.pollers)]
        await asyncio.gather(*tasks)
    await slots.aclose()
    stats = limiter.stats()
    tally.sent = stats.sent
    run_s = plan.until - plan.start_at
    share = limiter.utilisation(began, began + run_s)  # of limit per window, in the run
    tally.sent_in_run = round(share * plan.limit * run_s / plan.window_s)
    tally.answered_429 = stats.penalties
    tally.slots_asked = slots.round_trips.count
    tally.round_trip_ms_mean = slots.round_trips.mean_s * 1000
    tally.round_trip_ms_max = slots.round_trips.max_s * 1000
    tally.given_back = slots.given_back
    return tally


async def start(plan: Plan, cwd: Path) -> asyncio.subprocess.Process:
    """``take(plan)`` in a process of its own (its stdout: the tally)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.slot_taker", json.dumps(asdict(plan)),
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def result(proc: asyncio.subprocess.Process) -> Tally:
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"taker exited {proc.returncode}: {err.decode()[-2000:]}")
    return Tally(**json.loads(out.decode().splitlines()[-1]))


def main() -> None:
    plan = Plan(**json.loads(sys.argv[1]))
    tally = asyncio.run(take(plan))
    print(json.dumps(asdict(tally)), flush=True)


if __name__ == "__main__":
    main()
