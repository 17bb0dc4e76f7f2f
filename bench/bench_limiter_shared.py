"""One key's limit shared by processes and restarts: the figures of issue 12, point 2.

Against the simulator at 20 requests per 10 s compressed by ``--time-scale`` (default
0.1: 20 per 1 s), each batch in a process of its own (``multiprocessing``, spawned and
imported before the clock starts, so interpreter start-up is not counted):

1. **Restart.** A batch runs until it has used most of a window, stops
   (``max_runtime``), and a waiting process resumes it at once. Figure: 429s the
   resumed run met, over ``--trials`` trials, with the shared window file and without
   it (each process its own state folder: the limiter as it was before). Measured at
   ``--restart-time-scale`` (0.8): a resume must start well inside a window, as at
   full scale, where it takes about a second of a 10 s window.
2. **Two processes.** Two batches of ``--jobs`` jobs, one key, two databases, started
   together, against one process running both batches' jobs. Figures: wall times and
   their ratio, requests per job, 429s, the most requests the simulator admitted in
   any window.

Run: ``python -m bench.bench_limiter_shared [--jobs 30] [--trials 3] [--repeat 3]
[--time-scale 0.1] [--restart-time-scale 0.8]``. The wall-time ratio is the median
over ``--repeat`` pairs: on a loaded 2-core machine one pair alone swings by ±15 %.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from batchgen.engine.schedule import PollPolicy
from batchgen.run.options import RunOptions
from batchgen.run.runner import run_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator

LIMIT, WINDOW_S = 20, 10.0

MANIFEST = """\
name: {name}
out_dir: {out}
filename: "{{index:03d}}-{{take}}"
defaults:
  prompt: "a heron in the fog, take {{take}}"
  resolution: 720p
  duration: 5
matrix:
  take: {takes}
"""


def write_manifest(folder: Path, name: str, takes: range) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, out=folder / f"out-{name}", takes=list(takes)))
    return path


def _child(go: Event, kw: dict[str, Any], done: Any) -> None:
    """A batch in a process of its own: waits for ``go``, runs, reports its exit code."""
    logging.getLogger("batchgen").setLevel(logging.ERROR)  # tiny videos are "not as asked"
    go.wait()
    ts = kw.pop("time_scale")
    options = RunOptions(
        base_url=kw.pop("base_url"),
        rate=(LIMIT, WINDOW_S * ts),
        state_dir=kw.pop("state_dir"),
        max_runtime_s=kw.pop("max_runtime_s", None),
        poll_policy=PollPolicy(min_interval_s=1.0 * ts),
    )
    summary = run_batch(kw.pop("db"), api_key=DEFAULT_KEY, options=options, **kw)
    done.put(summary.exit_code)


class Children:
    """Spawned processes, imported and waiting; ``go()`` starts them together."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        ctx = mp.get_context("spawn")
        self.event = ctx.Event()
        self.done = ctx.Queue()
        self.procs = [ctx.Process(target=_child, args=(self.event, r, self.done)) for r in runs]
        for p in self.procs:
            p.start()

    async def go(self) -> tuple[float, list[int]]:
        began = time.monotonic()
        self.event.set()
        for p in self.procs:
            await asyncio.to_thread(p.join)
        return time.monotonic() - began, [self.done.get() for _ in self.procs]


def sim_config(ts: float, seed: int) -> SimConfig:
    return SimConfig(rate=(LIMIT, WINDOW_S * ts), time_scale=ts, seed=seed, tiny_videos=True)


async def restart(tmp: Path, ts: float, jobs: int, shared: bool, seed: int) -> int:
    """429s met by a batch resumed at once after it stopped, its window nearly used.

    The first run stops after 0.7 of a window (about 18 of its 20 requests sent), the
    resumed one runs for 0.3 of a window: time enough for its first burst."""
    m = write_manifest(tmp, f"restart{seed}{shared}", range(jobs))
    db = tmp / f"restart{seed}{shared}.db"
    window = WINDOW_S * ts
    async with Simulator(sim_config(ts, seed)) as sim:
        common = {"base_url": sim.base_url, "db": db, "time_scale": ts}
        state = tmp / f"s{seed}{shared}"
        first = Children(
            [{**common, "manifest": m, "state_dir": state / "a", "max_runtime_s": 0.7 * window}]
        )
        again = state / ("a" if shared else "b")
        second = Children([{**common, "state_dir": again, "max_runtime_s": 0.3 * window}])
        await first.go()
        before = int(sim.stats()["rate_limited"])
        await second.go()
        return int(sim.stats()["rate_limited"]) - before


async def together(
    tmp: Path, ts: float, runs: list[Path], tag: str, total: int
) -> tuple[float, dict[str, Any]]:
    async with Simulator(sim_config(ts, 7)) as sim:
        state = tmp / f"state-{tag}"
        children = Children(
            [
                {
                    "base_url": sim.base_url,
                    "db": tmp / f"{tag}-{m.stem}.db",
                    "manifest": m,
                    "state_dir": state,
                    "time_scale": ts,
                }
                for m in runs
            ]
        )
        watch = asyncio.ensure_future(_all_submitted(sim, time.monotonic(), total))
        wall, codes = await children.go()
        stats = sim.stats()
        stats["all_submitted_s"] = await watch
    assert codes == [0] * len(runs), codes
    return wall, stats


async def _all_submitted(sim: Simulator, began: float, total: int) -> float:
    """Seconds until the simulator created the last run (the batch's critical path)."""
    while sim.stats()["runs_created"] < total:
        await asyncio.sleep(0.02)
    return time.monotonic() - began


def _requests(stats: dict[str, Any]) -> int:
    api = (per for route, per in stats["requests"].items() if "/api/" in route)
    return sum(sum(per.values()) for per in api)


async def main_async(args: argparse.Namespace) -> None:
    ts, n = args.time_scale, args.jobs
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for shared in (True, False) if args.trials else ():
            rts = args.restart_time_scale
            hits = [await restart(tmp, rts, 2 * n, shared, seed) for seed in range(args.trials)]
            label = "shared window file" if shared else "no shared file (before)"
            print(
                f"stop then resume at once ({LIMIT}/{WINDOW_S * rts:g}s), {label}: "
                f"429s after the resume, per trial {hits}"
            )
        a = write_manifest(tmp, "a", range(n))
        b = write_manifest(tmp, "b", range(n, 2 * n))
        both = write_manifest(tmp, "both", range(2 * n))
        ratios = []
        for i in range(args.repeat):  # alternately: the load of the machine drifts
            one_wall, one = await together(tmp, ts, [both], f"one{i}", 2 * n)
            two_wall, two = await together(tmp, ts, [a, b], f"two{i}", 2 * n)
            ratios.append(two_wall / one_wall)
            _print_pair(n, ts, (one_wall, one), (two_wall, two))
    print(
        f"two processes / one process, wall time: median {statistics.median(ratios):.2f}x "
        f"over {len(ratios)} pairs (target <= 1.10)"
    )


def _print_pair(
    n: int, ts: float, one: tuple[float, dict[str, Any]], two: tuple[float, dict[str, Any]]
) -> None:
    (one_wall, a), (two_wall, b) = one, two
    print(
        f"{2 * n} jobs, one key at {LIMIT}/{WINDOW_S * ts:g}s: one process {one_wall:.2f} s "
        f"({_requests(a) / (2 * n):.2f} requests/job), two processes {two_wall:.2f} s "
        f"({_requests(b) / (2 * n):.2f} requests/job): {two_wall / one_wall:.2f}x; "
        f"429s {a['rate_limited']} / {b['rate_limited']}; most admitted in any window "
        f"{a['max_in_window']} / {b['max_in_window']} (limit {LIMIT})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=30, help="jobs per batch (two batches)")
    parser.add_argument("--trials", type=int, default=3, help="restarts, each way")
    parser.add_argument("--repeat", type=int, default=3, help="pairs of one/two-process runs")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument(
        "--restart-time-scale", type=float, default=0.8,
        help="the restart figure's: a resume must start well inside a window, as at full scale",
    )  # fmt: skip
    args, _ = parser.parse_known_args()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
