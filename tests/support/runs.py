"""`run_batch` called as a library: the options the tests pass, and an observer that keeps
what it saw.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from batchgen.engine.schedule import PollPolicy
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.retry import RetryPolicy
from batchgen.run.options import RunOptions
from tests.support.engine import tiny_sim_config

FAST = tiny_sim_config(time_scale=0.002, rate=(20, 0.5))


class Watcher:
    def __init__(self) -> None:
        self.transitions: list[TransitionEvent] = []
        self.requests: list[RequestEvent] = []
        self.summaries: list[RunSummary] = []
        self.closed = 0

    def transition(self, ev: TransitionEvent) -> None:
        self.transitions.append(ev)

    def request(self, ev: RequestEvent) -> None:
        self.requests.append(ev)

    def finished(self, summary: RunSummary) -> None:
        self.summaries.append(summary)

    async def aclose(self) -> None:
        self.closed += 1


def opts(base_url: str, **kw: Any) -> RunOptions:
    kw.setdefault("rate", (20, 0.5))
    return RunOptions(base_url=base_url, poll_policy=PollPolicy(min_interval_s=0.01), **kw)


class Recorder:
    def __init__(self) -> None:
        self.events: list[RequestEvent] = []

    def transition(self, ev: TransitionEvent) -> None:
        pass

    def request(self, ev: RequestEvent) -> None:
        self.events.append(ev)

    def finished(self, summary: RunSummary) -> None:
        pass


PRICE = 242_000  # 720p, 5 s


def options(base_url: str, **kw: Any) -> RunOptions:
    return RunOptions(
        base_url=base_url,
        rate=(20, 0.5),
        poll_policy=PollPolicy(min_interval_s=0.01),
        retry_policy=RetryPolicy(base_s=0.02, cap_s=0.1),
        **kw,
    )


def ledger_rows(db_path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(
            "SELECT job_id, run_id, kind, amount_micro_usd FROM charge ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
