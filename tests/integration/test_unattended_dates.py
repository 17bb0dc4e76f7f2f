"""A dated batch crossing midnight, run in-process on a fixed clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path

from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import SimConfig, Simulator
from tests.support.nightly import MANIFEST, N, batches, videos
from tests.support.processes import KEY


class MidnightClock:
    """A fixed clock: it reads ``before`` exactly until ``cross()`` is called, then
    ``after`` plus the real time since. Monotonic time is real (the rate limiter's)."""

    def __init__(self, before: dt.datetime, after: dt.datetime) -> None:
        self.before, self.after = before.timestamp(), after.timestamp()
        self.crossed_at: float | None = None

    def cross(self) -> None:
        if self.crossed_at is None:
            self.crossed_at = time.monotonic()

    def now(self) -> float:
        if self.crossed_at is None:
            return self.before
        return self.after + time.monotonic() - self.crossed_at

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now()).date()


class CrossAtFirstRun:
    """An observer that moves the clock past midnight when the first run is created."""

    def __init__(self, clock: MidnightClock) -> None:
        self.clock = clock

    def transition(self, ev: TransitionEvent) -> None:
        if ev.to_state == "running":
            self.clock.cross()

    def request(self, ev: RequestEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        pass


async def test_a_run_crossing_midnight_stays_one_batch_and_date_replays_it(tmp_path: Path) -> None:
    day = dt.date(2026, 11, 24)
    manifest = tmp_path / "nightly.yaml"
    manifest.write_text(MANIFEST)
    db_path = tmp_path / "state.db"
    # local time: the run starts at 23:59:59 on the 24th; once its first run is created
    # the clock jumps to 00:00:01 on the 25th, where all the polls and downloads happen
    clock = MidnightClock(
        dt.datetime.combine(day, dt.time(23, 59, 59)),
        dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0, 1)),
    )
    log = tmp_path / "run.jsonl"
    async with Simulator(
        SimConfig(keys=[KEY], time_scale=0.01, rate=(40, 1.0), tiny_videos=True)
    ) as sim:
        opts = RunOptions(base_url=sim.base_url, log_file=log)
        summary = await arun_batch(
            db_path,
            api_key=KEY,
            manifest=manifest,
            options=opts,
            clock=clock,
            observers=[CrossAtFirstRun(clock)],
        )
        assert summary.exit_code == 0, summary.reason
        assert clock.today() == day + dt.timedelta(days=1)  # it is tomorrow now
        local = [dt.datetime.fromtimestamp(t) for t in (summary.started_at, summary.finished_at)]
        assert [t.date() for t in local] == [day, day + dt.timedelta(days=1)]

        # the whole run belongs to the 24th: one batch, one folder, its date recorded
        assert summary.batch == "nightly-2026-11-24"
        assert [(b.name, b.run_date) for b in batches(db_path)] == [
            ("nightly-2026-11-24", "2026-11-24")
        ]
        assert len(videos(tmp_path / "out" / "2026-11-24")) == N
        assert not (tmp_path / "out" / "2026-11-25").exists()
        # the log shows the crossing: submitted on the 24th, every job done on the 25th
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        days = [dt.datetime.fromisoformat(x["ts"]).astimezone().date() for x in lines]
        assert days[0] == day and days[-1] == day + dt.timedelta(days=1)
        done = [d for x, d in zip(lines, days, strict=True) if x.get("to") == "succeeded"]
        assert done == [day + dt.timedelta(days=1)] * N
        assert {x["batch"] for x in lines} == {"nightly-2026-11-24"}

        # --date replays the 24th after midnight: the same batch, nothing sent again
        again = RunOptions(base_url=sim.base_url, date=day)
        replay = await arun_batch(
            db_path, api_key=KEY, manifest=manifest, options=again, clock=clock
        )
        assert replay.exit_code == 0 and replay.batch == "nightly-2026-11-24"
        assert replay.requests == {} and replay.counts == {"succeeded": N}
        assert sim.stats()["runs_created"] == N

        # tonight's run (no --date) is the 25th's batch, in the 25th's folder
        tonight = await arun_batch(
            db_path, api_key=KEY, manifest=manifest, options=opts, clock=clock
        )
        assert tonight.exit_code == 0 and tonight.batch == "nightly-2026-11-25"
        assert len(videos(tmp_path / "out" / "2026-11-25")) == N
        assert sim.stats()["runs_created"] == 2 * N
    assert [b.run_date for b in batches(db_path)] == ["2026-11-24", "2026-11-25"]
