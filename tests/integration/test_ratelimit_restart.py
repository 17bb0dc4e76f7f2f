"""A run stopped mid-batch and resumed at once knows the key's last window (issue 12).

In one process, through the library: the first run stops while it uses the whole
rate; the second starts at once with a new limiter. The simulator's 429 count says
whether the second run's first requests passed the key's limit. Without the shared
window the resumed run's first burst is sometimes answered 429 here, depending on how
long its start takes: the figure over many trials is ``bench/bench_limiter_shared.py``'s,
and the limiter's unit tests show on virtual time that a new limiter on the same file
waits for the old window.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.engine.schedule import PollPolicy
from batchgen.run.runner import RunOptions, arun_batch
from batchgen.runbase.shared_window import SharedWindow
from tests.test_engine_helpers import KEY, StandInConfig, StandInSim, make_batch, prompts

RATE = (20, 1.0)  # 20 per 10 s compressed ten times


def options(base_url: str, state_dir: Path, **kw: object) -> RunOptions:
    return RunOptions(
        base_url=base_url,
        rate=RATE,
        state_dir=state_dir,
        poll_policy=PollPolicy(min_interval_s=0.01),
        **kw,  # type: ignore[arg-type]
    )


async def stop_then_resume(tmp_path: Path, first: Path, second: Path) -> dict[str, int]:
    """Run 30 jobs for 1.5 s, then resume at once; the simulator's counters."""
    async with StandInSim(StandInConfig(time_scale=0.01, rate=RATE, seed=3)) as sim:
        db = tmp_path / "state.db"
        _engine, batch = make_batch(db, prompts(30), tmp_path / "out")
        stopped = await arun_batch(
            db, api_key=KEY, batch=batch.name,
            options=options(sim.base_url, first, max_runtime_s=1.5),
        )  # fmt: skip
        assert stopped.exit_code != 0, "the batch finished before it was stopped"
        before = sim.stats()["rate_limited"]
        resumed = await arun_batch(
            db, api_key=KEY, batch=batch.name, options=options(sim.base_url, second)
        )
        stats = sim.stats()
    assert resumed.exit_code == 0, resumed.reason
    return {"before": before, "after": stats["rate_limited"] - before}


async def test_a_run_resumed_at_once_is_never_answered_429(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seen = await stop_then_resume(tmp_path, state, state)
    print(f"shared window: 429s before the stop {seen['before']}, after {seen['after']}")
    assert seen["before"] == 0 and seen["after"] == 0
    window = SharedWindow.for_key(KEY, state)
    assert window.path.is_file() and len(window.peek().sends) <= RATE[0]
