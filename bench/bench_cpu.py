"""CPU seconds per job when the API does not limit the rate.

The simulator runs in a process of its own (so its CPU is not counted), with a rate
limit far above what one process can send, near-instant generation and tiny videos;
batchgen runs ``--jobs`` jobs through the public library call (``batchgen.api.run_batch``)
with the same high rate and its default concurrency. Printed: wall time, jobs per
second, and this process's CPU seconds per job (user + system, from ``getrusage``),
which is what the engine, the store and the downloads cost per job.

Run: ``python -m bench.bench_cpu [--jobs 1000]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchgen.api import RunOptions, run_batch
from batchgen.sim import DEFAULT_KEY

RATE = (100_000, 1.0)


def start_sim() -> tuple[subprocess.Popen[str], str]:
    sim = subprocess.Popen(
        [
            sys.executable, "-m", "batchgen", "sim", "--host", "127.0.0.1", "--port", "0",
            "--rate", f"{RATE[0]}/{RATE[1]:g}s", "--time-scale", "0.001", "--tiny-videos",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert sim.stdout is not None
    return sim, sim.stdout.readline().strip()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    # tiny videos are "not what was asked": one warning a job would drown the figures
    logging.getLogger("batchgen").setLevel(logging.ERROR)
    sim, base_url = start_sim()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "prompts.txt").write_text(
                "".join(f"shot {i}: a fox in the snow\n" for i in range(args.jobs))
            )
            (folder / "m.yaml").write_text(
                "name: cpu\ndefaults: {resolution: 720p, duration: 5}\n"
                "matrix: {prompt: {file: prompts.txt}}\n"
            )
            os.environ.pop("RUNBASE_BASE_URL", None)
            cpu0, wall0 = cpu_s(), time.perf_counter()
            summary = run_batch(
                folder / "state.db",
                api_key=DEFAULT_KEY,
                manifest=folder / "m.yaml",
                options=RunOptions(base_url=base_url, rate=RATE, out_dir=folder / "out"),
            )
            wall, cpu = time.perf_counter() - wall0, cpu_s() - cpu0
    finally:
        sim.terminate()
        sim.wait(10)
    done = summary.counts.get("succeeded", 0)
    print(f"jobs           {args.jobs} ({done} succeeded, exit {summary.exit_code})")
    print(f"wall           {wall:.1f} s ({args.jobs / wall:.1f} jobs/s)")
    print(f"CPU per job    {cpu / args.jobs * 1000:.1f} ms (this process; the simulator apart)")
    return 0 if done == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
