"""One key shared by 1, 2 and 3 hosts through PostgreSQL (``KeySlots``): issue 12,
point 3's cross-host limit, measured from the simulator's side.

Each taker is a process of its own with its own state folder (no window file shared:
as on hosts of their own), a ``RequestLimiter`` whose every request first takes its
slot in one PostgreSQL (``store.pg.slots``, the margin batchgen uses: 5 % of the
window), and three tasks sending POSTs and GETs as fast as the limiter lets them. The
simulator allows the key 20 requests per window, compressed by ``--time-scale``
(default 0.1: 20 per 1 s), and answers 429 to any request beyond that.

Figures per number of takers: requests the key sent per window against the bound
(20), the most the simulator saw in any window, its 429s, the database round trip per
slot (mean and worst, ms, as the takers measured it), and the slots given back (taken
and not used). PostgreSQL: ``$BATCHGEN_TEST_POSTGRES``, else a throwaway server as
``make test`` starts one.

Run: ``python -m bench.bench_keyslots [--takers 1,2,3] [--seconds 6] [--time-scale 0.1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from batchgen.sim import SimConfig, Simulator
from batchgen.store.pg.db import ensure_schema
from batchgen.store.pg.slots import DEFAULT_MARGIN_SHARE
from tests.support.postgres import PostgresUnavailable, TestServer, given_server, start_server
from tests.support.slot_taker import Plan, Tally, result, start

LIMIT, WINDOW_S = 20, 10.0
ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 2.5  # the taker processes import batchgen before the common start


async def one(server: TestServer, takers: int, seconds: float, ts: float) -> str:
    window = WINDOW_S * ts
    key = f"sk-bench-{uuid.uuid4().hex}"
    url = server.create_database()
    try:
        await ensure_schema(url)
        config = SimConfig(keys=[key], rate=(LIMIT, window), time_scale=0.002, tiny_videos=True)
        async with Simulator(config) as sim:
            with tempfile.TemporaryDirectory(prefix="bench-keyslots-") as tmp:
                start_at = time.time() + STARTUP_S
                plans = [
                    Plan(
                        base_url=sim.base_url,
                        key=key,
                        pg_url=url,
                        state_dir=str(Path(tmp) / f"host{i}"),
                        limit=LIMIT,
                        window_s=window,
                        margin_s=DEFAULT_MARGIN_SHARE * window,
                        start_at=start_at,
                        until=start_at + seconds,
                        name=f"bench{i}",
                    )
                    for i in range(takers)
                ]
                procs = [await start(p, ROOT) for p in plans]
                tallies: list[Tally] = [await result(p) for p in procs]
            stats = sim.stats()
    finally:
        server.drop_database(url)
    # sent while the takers ran (a request granted after the end is not in the run)
    per_window = sum(t.sent_in_run for t in tallies) / (seconds / window)
    asked = sum(t.slots_asked for t in tallies)
    mean_ms = sum(t.round_trip_ms_mean * t.slots_asked for t in tallies) / max(1, asked)
    worst_ms = max(t.round_trip_ms_max for t in tallies)
    given_back = sum(t.given_back for t in tallies)
    return (
        f"{takers:>6} {per_window:>11.1f} {LIMIT:>5} {per_window / LIMIT:>6.2f} "
        f"{stats['max_in_window']:>7} {stats['rate_limited']:>5} {asked:>6} "
        f"{mean_ms:>8.2f} {worst_ms:>7.1f} {given_back:>5}"
    )


async def amain(args: argparse.Namespace) -> int:
    try:
        given = os.environ.get("BATCHGEN_TEST_POSTGRES")
        server = given_server(given) if given else start_server()
    except PostgresUnavailable as exc:
        print(f"no PostgreSQL for the benchmark: {exc}", file=sys.stderr)
        return 3
    try:
        window = WINDOW_S * args.time_scale
        print(
            f"one key, {LIMIT} requests per {window:g} s window (20 per 10 s x "
            f"{args.time_scale:g}), {args.seconds:g} s per row; slot margin "
            f"{DEFAULT_MARGIN_SHARE * window * 1000:.0f} ms"
        )
        print("takers  sent/window bound  ratio max/win  429s  slots  rtt ms  max ms  back")
        for n in args.takers:
            print(await one(server, n, args.seconds, args.time_scale), flush=True)
    finally:
        server.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--takers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3]
    )
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--time-scale", type=float, default=0.1)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
