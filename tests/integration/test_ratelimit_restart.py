"""A run stopped mid-batch and resumed at once knows the key's last window (issue 12).

In one process, through the library: the first run stops (``max_runtime``) while it
uses the whole rate; the second starts at once with a new limiter and runs for half
a window. The simulator's 429 count says whether the second run passed the key's limit.
The window is 4 s, not compressed further: a resume must start well inside it for
the test to mean anything. The control (each run with its own state folder, as before
the window was shared) shows that the test sees the 429s it is about.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.engine.schedule import PollPolicy
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.runbase.shared_window import SharedWindow
from batchgen.sim import DEFAULT_KEY as KEY
from batchgen.sim import SimConfig, Simulator

RATE = (20, 4.0)  # 20 per 10 s compressed 2.5 times

MANIFEST = """\
name: restarted
out_dir: videos
filename: "{index:03d}-{take}"
defaults:
  prompt: "a crane in the reeds, take {take}"
  resolution: 720p
  duration: 5
matrix:
  take: [TAKES]
""".replace("TAKES", ", ".join(str(i) for i in range(30)))


def options(base_url: str, state_dir: Path, **kw: object) -> RunOptions:
    return RunOptions(
        base_url=base_url,
        rate=RATE,
        state_dir=state_dir,
        poll_policy=PollPolicy(min_interval_s=0.01),
        **kw,  # type: ignore[arg-type]
    )


async def stop_then_resume(tmp_path: Path, first: Path, second: Path) -> dict[str, int]:
    """Run 30 jobs until the first window is nearly used, resume at once for 2 s;
    the 429s before and after the resume."""
    config = SimConfig(time_scale=0.01, rate=RATE, seed=3, tiny_videos=True)
    async with Simulator(config) as sim:
        db, manifest = tmp_path / "state.db", tmp_path / "m.yaml"
        manifest.write_text(MANIFEST)
        stopped = await arun_batch(
            db, api_key=KEY, manifest=manifest,
            options=options(sim.base_url, first, max_runtime_s=3.0),
        )  # fmt: skip
        assert stopped.exit_code == 75, stopped.reason  # stopped, resumable
        before = sim.stats()["rate_limited"]
        resumed = await arun_batch(
            db, api_key=KEY, batch="restarted",
            options=options(sim.base_url, second, max_runtime_s=2.0),
        )  # fmt: skip
        stats = sim.stats()
    assert resumed.exit_code in (0, 75), resumed.reason
    return {"before": before, "after": stats["rate_limited"] - before}


async def test_a_run_resumed_at_once_is_never_answered_429(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seen = await stop_then_resume(tmp_path, state, state)
    print(f"shared window: 429s before the stop {seen['before']}, after {seen['after']}")
    assert seen["before"] == 0 and seen["after"] == 0
    window = SharedWindow.for_key(KEY, state)
    assert window.path.is_file() and len(window.peek().sends) <= RATE[0]


async def test_control_without_the_shared_window_the_resume_is_answered_429(
    tmp_path: Path,
) -> None:
    seen = await stop_then_resume(tmp_path, tmp_path / "one", tmp_path / "other")
    print(f"no shared window: 429s after the resume {seen['after']}")
    assert seen["after"] > 0
