"""What a person (or a log file) sees while a batch runs.

On a terminal: a rich live panel (jobs by state, requests per second against the
limit, money spent, ETA), redrawn a few times a second. Without one (cron, systemd,
a pipe): one plain, timestamped line whenever the counts changed, at most every few
seconds, with no colour and no control characters. Both write to stderr; stdout
belongs to ``--json``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.textsafe import printable

ProgressMode = Literal["auto", "rich", "plain", "off"]
_ORDER = ("queued", "submitting", "in_doubt", "running", "downloading", "succeeded", "failed")


class RequestTally:
    """An observer that counts requests by route and status, and their recent rate."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.by_route: dict[str, dict[str, int]] = {}
        self.total = 0
        #: requests the API answered (any HTTP status); network errors are not answers
        self.answered = 0
        self._recent: deque[float] = deque()

    def request(self, ev: RequestEvent) -> None:
        status = str(ev.status) if ev.status is not None else (ev.code or "network")
        route = self.by_route.setdefault(ev.route, {})
        route[status] = route.get(status, 0) + 1
        self.total += 1
        if ev.status is not None:
            self.answered += 1
        now = time.monotonic()
        self._recent.append(now)
        self._trim(now)

    def transition(self, ev: TransitionEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        pass

    def per_second(self) -> float:
        now = time.monotonic()
        self._trim(now)
        return len(self._recent) / self.window_s

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] <= now - self.window_s:
            self._recent.popleft()


@dataclass(frozen=True, slots=True)
class Snapshot:
    batch: str
    counts: dict[str, int]
    #: None until the API answered once: a rate of failed connections is no rate
    requests_per_s: float | None
    limit_per_s: float
    requests: int
    spend_micro_usd: int
    budget_micro_usd: int | None
    elapsed_s: float
    eta_s: float | None
    note: str | None = None

    def line(self) -> str:
        parts = [f"{self.counts.get(s, 0)} {s}" for s in _ORDER if self.counts.get(s, 0)]
        if self.counts.get("canceled"):
            parts.append(f"{self.counts['canceled']} canceled")
        money = f"${self.spend_micro_usd / 1e6:.2f}"
        if self.budget_micro_usd is not None:
            money += f" of ${self.budget_micro_usd / 1e6:.2f}"
        rate = (
            "no answer from the API yet"
            if self.requests_per_s is None
            else f"{self.requests_per_s:.1f}/{self.limit_per_s:.1f} req/s"
        )
        text = (
            f"batch {self.batch}: {', '.join(parts) or 'no jobs'} | {rate} | {money} | "
            f"eta {_duration(self.eta_s)}"
        )
        if self.note:
            text += f" | {self.note}"
        return printable(text)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class PlainProgress:
    """One timestamped line per change of the counts, at most every ``every_s`` seconds."""

    def __init__(self, stream: TextIO | None = None, *, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last_line = ""
        self._last_at = -1e9

    def update(self, snap: Snapshot, *, force: bool = False) -> None:
        now = time.monotonic()
        key = self._key(snap)
        if not force and (key == self._last_line or now - self._last_at < self.every_s):
            return
        self._last_line, self._last_at = key, now
        stamp = dt.datetime.now(dt.UTC).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
        print(f"{stamp} {snap.line()}", file=self.stream, flush=True)

    def close(self, snap: Snapshot | None = None) -> None:
        # the last line, unless the line just printed already said the same
        if snap is not None and self._key(snap) != self._last_line:
            self.update(snap, force=True)

    @staticmethod
    def _key(snap: Snapshot) -> str:
        return repr(sorted(snap.counts.items())) + (snap.note or "")


class RichProgress:
    """A live panel on a terminal (stderr)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._console = Console(file=stream or sys.stderr)
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, snap: Snapshot, *, force: bool = False) -> None:
        self._live.update(self._render(snap), refresh=force)

    def close(self, snap: Snapshot | None = None) -> None:
        if snap is not None:
            self._live.update(self._render(snap))
        self._live.stop()

    @staticmethod
    def _render(snap: Snapshot) -> Table:

        # Text, not markup: a "[bold]" in a batch name is shown, not obeyed.
        table = Table(title=Text(f"batchgen · {printable(snap.batch)}"), show_header=False)
        table.add_column(justify="right", style="bold")
        table.add_column()
        total = sum(snap.counts.values()) or 1
        for state in (*_ORDER, "canceled"):
            n = snap.counts.get(state, 0)
            if n or state in ("queued", "running", "succeeded"):
                bar = "█" * round(20 * n / total)
                table.add_row(state, f"{n:>6}  {bar}")
        rate = (
            "no answer from the API yet"
            if snap.requests_per_s is None
            else f"{snap.requests_per_s:.1f}/s of {snap.limit_per_s:.1f}/s"
        )
        table.add_row("requests", f"{rate} ({snap.requests})")
        money = f"${snap.spend_micro_usd / 1e6:.2f}"
        if snap.budget_micro_usd is not None:
            money += f" of ${snap.budget_micro_usd / 1e6:.2f}"
        table.add_row("spent", money)
        table.add_row("elapsed", _duration(snap.elapsed_s))
        table.add_row("eta", _duration(snap.eta_s))
        if snap.note:
            table.add_row("note", Text(printable(snap.note)))
        return table


Progress = PlainProgress | RichProgress


def make_progress(mode: ProgressMode, *, stream: TextIO | None = None) -> Progress | None:
    if mode == "off":
        return None
    if mode == "auto":
        out = stream or sys.stderr
        tty = out.isatty() and os.environ.get("TERM", "dumb") != "dumb"
        mode = "rich" if tty else "plain"
    return RichProgress(stream) if mode == "rich" else PlainProgress(stream)
