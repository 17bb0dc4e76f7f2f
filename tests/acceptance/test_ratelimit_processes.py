"""One key's limit across `batchgen` processes and restarts (issue 12, point 2).

The real command, as a user runs it, against the simulator at 20 requests per 1 s
(20 per 10 s compressed ten times): Ctrl-C then `batchgen resume` at once meets no
429; two batches with one key and two databases, started together, never pass the
key's limit and take about as long as one process running both batches' jobs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from batchgen.sim import DEFAULT_KEY as KEY
from batchgen.sim import SimConfig, Simulator

RATE = (20, 1.0)

MANIFEST = """\
name: {name}
out_dir: videos-{name}
filename: "{{index:03d}}-{{subject}}-{{take}}"
defaults:
  prompt: "a {{subject}} in the rain, take {{take}}"
  resolution: 720p
  duration: 5
matrix:
  subject: [fox, owl, hare, lynx]
  take: {takes}
limits:
  rate: {rate}
"""


def manifest(folder: Path, name: str, takes: range, rate: str = "20/1s") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, takes=list(takes), rate=rate))
    return path


async def start(*args: str, base_url: str, state: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env.update(RUNBASE_API_KEY=KEY, RUNBASE_BASE_URL=base_url, BATCHGEN_STATE_DIR=str(state))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchgen", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process) -> int:
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    assert proc.returncode in (0, 75), err.decode()[-3000:]
    return proc.returncode


def api_requests(stats: dict[str, Any]) -> int:
    """Requests that spend the key's limit (file downloads do not)."""
    return sum(sum(by.values()) for route, by in stats["requests"].items() if "/api/" in route)


async def ctrl_c_then_resume(tmp_path: Path, first: Path, second: Path) -> int:
    """429s met by `batchgen resume`, started as soon as a Ctrl-C'ed run exits.

    The window is 8 s here, not 1 s: a real resume starts in well under a window
    (10 s), and the test must keep it so (on a loaded machine too) for the old window
    to matter."""
    m = manifest(tmp_path, "nightly", range(1, 11), rate="20/8s")  # 40 jobs
    db = tmp_path / "state.db"
    config = SimConfig(time_scale=0.02, rate=(20, 8.0), seed=5, tiny_videos=True)
    async with Simulator(config) as sim:
        proc = await start("run", str(m), "--db", str(db), base_url=sim.base_url, state=first)
        for _ in range(3000):  # until the key has used most of its window
            if api_requests(sim.stats()) >= 18:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert await finish(proc) == 75
        before = int(sim.stats()["rate_limited"])
        resumed = await start(
            "resume", "--db", str(db), "--max-runtime", "2", base_url=sim.base_url, state=second
        )
        await finish(resumed)
        stats = sim.stats()
    assert before == 0 and stats["max_in_window"] <= 20
    return int(stats["rate_limited"]) - before


async def test_ctrl_c_then_resume_at_once_is_never_answered_429(tmp_path: Path) -> None:
    state = tmp_path / "state"
    hits = await ctrl_c_then_resume(tmp_path, state, state)
    print(f"Ctrl-C then resume at once: {hits} 429s")
    assert hits == 0


async def test_two_processes_one_key_share_its_limit(tmp_path: Path) -> None:
    n = 24  # jobs per batch

    async def timed(*runs: tuple[Path, Path], state: Path) -> tuple[float, dict[str, int]]:
        config = SimConfig(time_scale=0.02, rate=RATE, seed=9, tiny_videos=True)
        async with Simulator(config) as sim:
            began = time.monotonic()
            procs = [
                await start("run", str(m), "--db", str(db), base_url=sim.base_url, state=state)
                for m, db in runs
            ]
            codes = [await finish(p) for p in procs]
            wall = time.monotonic() - began
            stats = sim.stats()
        assert codes == [0] * len(runs)
        return wall, {k: stats[k] for k in ("rate_limited", "max_in_window", "runs_created")}

    a = manifest(tmp_path, "a", range(1, 7))
    b = manifest(tmp_path, "b", range(7, 13))
    both = manifest(tmp_path, "both", range(1, 13))
    one_wall, one = await timed((both, tmp_path / "both.db"), state=tmp_path / "s1")
    two_wall, two = await timed(
        (a, tmp_path / "a.db"), (b, tmp_path / "b.db"), state=tmp_path / "s2"
    )
    print(
        f"{2 * n} jobs, one key at {RATE[0]}/{RATE[1]:g}s: one process {one_wall:.2f} s, "
        f"two processes {two_wall:.2f} s ({two_wall / one_wall:.2f}x); "
        f"429s {one['rate_limited']} / {two['rate_limited']}, "
        f"most in a window {one['max_in_window']} / {two['max_in_window']}"
    )
    assert one["runs_created"] == two["runs_created"] == 2 * n
    # the key never passed its limit: nothing over 20 in a window, and (but for one
    # 429 that the benchmark sees in about one pair of ten at this compressed 1-s
    # window, whose 50 ms margin a stalled event loop can outlast) nothing refused
    assert two["max_in_window"] <= RATE[0]
    assert two["rate_limited"] <= 1
    # about the time of one process running both (the bench measures it closely);
    # loose here, for a loaded 2-core machine starting two interpreters at once
    assert two_wall <= 1.3 * one_wall + 1.0
