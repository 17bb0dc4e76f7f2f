"""``--notify-url``: one JSON POST when the run ends, however it ends.

Sent from ``aclose`` (after the log, summary and metrics files are written), tried up
to ``tries`` times on a network error, a timeout, 429 or 5xx, and never for longer
than ``total_s`` in all: a dead receiver delays the exit by at most ~10 s and never
changes the exit code. Nothing here raises. Whether to try again, and how long to
wait first (the jittered backoff every retry of batchgen uses, from ``backoff_s``),
is ``batchgen.retry.decide``'s call (stage notify); aiohttp's errors reach it mapped
by ``batchgen.runbase.transport``.

The body carries a ``text`` line too, so a Slack or Mattermost incoming webhook can
take it as it is.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from typing import Any

import aiohttp

from batchgen.errors import BatchgenError, InvalidRequest, ServerError, TransportError
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.files.sidecar import scrub
from batchgen.retry import Action, Attempt, RetryPolicy, Stage, decide
from batchgen.runbase.transport import map_aiohttp_errors

log = logging.getLogger(__name__)


def payload(summary: RunSummary) -> dict[str, Any]:
    jobs = sum(summary.counts.values())
    done = summary.counts.get("succeeded", 0)
    text = (
        f"batchgen {summary.batch or '?'}: {summary.reason} (exit {summary.exit_code}); "
        f"{done}/{jobs} succeeded, ${summary.spend_micro_usd / 1e6:.2f} spent, "
        f"{summary.wall_s:.0f} s; outputs in {summary.out_dir or '?'}"
    )
    if summary.maybe_paid_twice:
        text += (
            f"; {len(summary.maybe_paid_twice)} job(s) may have been paid twice "
            f"(up to ${summary.possible_micro_usd / 1e6:.2f} more)"
        )
    body = {
        "event": "finished",
        "batch": summary.batch,
        "exit_code": summary.exit_code,
        "ok": summary.exit_code == 0,
        "resumable": summary.exit_code == 75,
        "reason": summary.reason,
        "counts": summary.counts,
        "jobs": jobs,
        "in_doubt": summary.in_doubt,
        "failed": len(summary.failures),
        "spend_usd": summary.spend_micro_usd / 1_000_000,
        "possible_usd": summary.possible_micro_usd / 1_000_000,
        "maybe_paid_twice": summary.maybe_paid_twice,
        "out_dir": summary.out_dir,
        "wall_s": round(summary.wall_s, 3),
        "started_at": summary.started_at,
        "finished_at": summary.finished_at,
        "host": socket.gethostname(),
        "text": text,
        # several keys: each key's requests, runs and spend by fingerprint (one key: none)
        **({"keys": summary.keys} if summary.keys else {}),
        # a worker of a shared (PostgreSQL) batch: which one, what it sent and spent
        **({"worker": summary.worker} if summary.worker else {}),
    }
    result: dict[str, Any] = scrub(body)
    return result


class Notifier:
    """The observer: remembers the summary in ``finished``, POSTs it in ``aclose``."""

    def __init__(
        self,
        url: str,
        *,
        tries: int = 3,
        total_s: float = 10.0,
        backoff_s: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.tries = max(1, tries)
        self.total_s = total_s
        self.backoff_s = backoff_s
        self.retry = RetryPolicy(
            max_attempts=self.tries, base_s=max(0.0, backoff_s), cap_s=max(0.0, total_s), rng=rng
        )
        self.body: dict[str, Any] | None = None
        #: what happened: "sent", "refused: 400", "gave up: ..." (for tests and logs)
        self.outcome: str | None = None

    def transition(self, ev: TransitionEvent) -> None:
        pass

    def request(self, ev: RequestEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        self.body = payload(summary)

    async def aclose(self) -> None:
        if self.body is None:
            return
        body, self.body = self.body, None
        try:
            await asyncio.wait_for(self._send(body), self.total_s)
        except TimeoutError:
            self.outcome = self.outcome or f"gave up after {self.total_s:g} s"
        except Exception as exc:  # never into the exit path
            self.outcome = f"gave up: {type(exc).__name__}"
        if self.outcome != "sent":
            log.warning("--notify-url: notification not delivered (%s)", self.outcome)

    async def _send(self, body: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.total_s
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.total_s / self.tries))
        headers = {"User-Agent": "batchgen", "X-Batchgen-Event": "finished"}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            for failures in range(self.tries):
                error = await self._post(session, body)
                if error is None:
                    return
                decision = decide(error, Attempt(failures), Stage.NOTIFY, self.retry)
                pause = decision.delay_s
                if decision.action is not Action.RETRY or time.monotonic() + pause >= deadline:
                    return
                await asyncio.sleep(pause)

    async def _post(
        self, session: aiohttp.ClientSession, body: dict[str, Any]
    ) -> BatchgenError | None:
        """One try: None when delivered, else what went wrong (``outcome`` says it)."""
        try:
            # nothing of the text kept: a message may quote the URL, a secret
            with map_aiohttp_errors("POST --notify-url", scrub=lambda _text: ""):
                async with session.post(self.url, json=body) as resp:
                    await resp.read()
        except TransportError as exc:
            self.outcome = exc.kind  # the type only, as aiohttp named it
            return exc
        if 200 <= resp.status < 300:
            self.outcome = "sent"
            return None
        self.outcome = f"answered {resp.status}"
        if resp.status == 429 or resp.status >= 500:
            return ServerError(self.outcome, status=resp.status)
        return InvalidRequest(self.outcome, status=resp.status)  # sending again will not help


__all__ = ["Notifier", "payload"]
