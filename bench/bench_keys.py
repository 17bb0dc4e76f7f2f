"""`make bench`: jobs per second with 1, 4 and 16 keys in the key pool (issue 12).

Compressed time: each key allows 20 requests per second (the API's 20 per 10 s, ten
times faster), runs take a hundredth of their real time. Each batch goes through
``arun_batch`` (the whole run: SQLite, the limiter per key, downloads of tiny clips)
against one simulator that knows every key.

The bound: a job costs at least 2 requests (its POST and one poll), so ``k`` keys
finish at most ``k x 20 / 2`` jobs per second; the ratio to it is printed per pool
size. Jobs scale with the keys (``--jobs-per-key``) so every run lasts a few windows.

Run: ``python -m bench.bench_keys [--jobs-per-key 30] [--keys 1,4,16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from batchgen.engine.schedule import PollPolicy
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import SimConfig, Simulator

RATE = (20, 1.0)


def manifest(jobs: int) -> str:
    takes = ", ".join(str(i) for i in range(jobs))
    return (
        'name: keys-bench\nout_dir: videos\nfilename: "{index:04d}"\n'
        'defaults:\n  prompt: "a kite over dunes, take {take}"\n'
        f"  resolution: 720p\n  duration: 5\nmatrix:\n  take: [{takes}]\n"
    )


async def one(keys: int, jobs: int) -> tuple[float, int, int]:
    """(wall seconds, exit code, busiest key window) for ``jobs`` jobs on ``keys`` keys."""
    names = [f"sk-bench-{i:02d}-{'k' * 20}" for i in range(keys)]
    config = SimConfig(keys=names, rate=RATE, time_scale=0.01, seed=11, tiny_videos=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "m.yaml").write_text(manifest(jobs))
        async with Simulator(config) as sim:
            options = RunOptions(
                base_url=sim.base_url, rate=RATE, concurrency=40 * keys,
                state_dir=folder / "state", poll_policy=PollPolicy(min_interval_s=0.01),
            )  # fmt: skip
            started = time.monotonic()
            summary = await arun_batch(
                folder / "s.db", api_key=names[0], api_keys=names[1:],
                manifest=folder / "m.yaml", options=options,
            )  # fmt: skip
            wall = time.monotonic() - started
            busiest = int(sim.stats()["max_in_window"])
    return wall, summary.exit_code, busiest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs-per-key", type=int, default=30)
    parser.add_argument("--keys", default="1,4,16")
    args = parser.parse_args()
    worst = 0
    print(f"{'keys':>4} {'jobs':>5} {'wall s':>7} {'jobs/s':>7} {'bound':>6} {'ratio':>6} max/win")
    for keys in (int(k) for k in args.keys.split(",")):
        jobs = args.jobs_per_key * keys
        wall, code, busiest = asyncio.run(one(keys, jobs))
        rate = jobs / wall
        bound = keys * RATE[0] / RATE[1] / 2
        print(
            f"{keys:>4} {jobs:>5} {wall:>7.2f} {rate:>7.2f} {bound:>6.1f} "
            f"{rate / bound:>6.2f} {busiest:>3}/{RATE[0]}",
            flush=True,
        )
        worst = max(worst, 0 if code == 0 else 1)
    return worst


if __name__ == "__main__":
    sys.exit(main())
