"""The key pool: which API key sends each request of a batch.

Each key has its own client and its own limiter (its own share of the API's rate). A
POST goes out with the key that has room soonest; the run it makes is visible to that
key only, so the job records the key's fingerprint with its intent and every later
request of that job (poll, link refresh, a resend in doubt) goes with that key.

A key refused for money or permission (402, 403, ``USAGE_EXCEEDED``) stops sending
POSTs and still polls its paid runs. A key refused as unknown (401) cannot read its
runs either: its jobs are stranded (left ``running``, reported, never submitted again;
a later resume with the key polls them), as are the jobs of a key no longer given.

One key whose fingerprint is None is the engine's default (a caller that passes one
client and one limiter): jobs then carry no fingerprint, exactly as before the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.store.records import JobRecord

log = logging.getLogger("batchgen.engine")


class RunLike(Protocol):
    id: str
    status: str
    cost_micro_usd: int | None
    urls: list[str]
    created_at: str | None
    completed_at: str | None
    error: str | None
    error_code: str | None


class ApiClient(Protocol):
    async def create_run(
        self, model: str, input: dict[str, Any], *, idempotency_key: str, priority: int = 1
    ) -> RunLike: ...

    async def get_run(
        self, run_id: str, *, priority: int = 0, on_sent: Callable[[bool], None] | None = None
    ) -> RunLike: ...


#: what a refused key means for the run (``KeyPool.refuse``)
Stop = Literal["go_on", "soft", "hard"]


@dataclass(eq=False)
class PoolKey:
    """One key: its fingerprint (never the key), its client and its limiter."""

    fingerprint: str | None
    client: ApiClient
    limiter: RequestLimiter
    #: why the key no longer submits (None: it does)
    refused: str | None = None
    #: answered 401: its runs cannot be polled either
    revoked: bool = False
    #: POSTs this run chose it for (the last tie-breaker: keys take turns)
    picked: int = 0

    @property
    def label(self) -> str:
        return self.fingerprint or "the key"


@dataclass
class KeyPool:
    """The keys of one run, in the order they were given."""

    keys: Sequence[PoolKey]
    #: job id -> (the job, why its paid run or POST in doubt cannot be followed)
    stranded: dict[int, tuple[JobRecord, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key pool needs at least one key")
        self._by_fp = {k.fingerprint: k for k in self.keys}

    @property
    def several(self) -> bool:
        return len(self.keys) > 1

    @property
    def first(self) -> PoolKey:
        return self.keys[0]

    def submitting(self) -> list[PoolKey]:
        return [k for k in self.keys if k.refused is None]

    def pick(self, busy: Collection[PoolKey] = ()) -> PoolKey | None:
        """The key for the next new POST: one that may submit and is not ``busy`` (its
        POST in flight), with room now before one that must wait, then the fewest
        waiting and sent in its window; None: no such key."""
        usable = [k for k in self.submitting() if k not in busy]
        if not usable:
            return None
        key = min(
            usable,
            key=lambda k: (
                not k.limiter.has_slack(),
                k.limiter.waiting(),
                k.limiter.sent_in_window(),
                k.picked,
            ),
        )
        key.picked += 1
        return key

    def for_job(self, job: JobRecord) -> PoolKey | None:
        """The key that made ``job``'s run (or sent its POST); None: not given this run.
        A job without a fingerprint was made by the only key of an older run: the
        first key (with one key, today's)."""
        if job.key_fingerprint is None:
            return self.first
        return self._by_fp.get(job.key_fingerprint)

    def follow(self, job: JobRecord) -> tuple[PoolKey | None, str]:
        """The key to poll ``job`` with, or (None, why it cannot be)."""
        key = self.for_job(job)
        if key is None:
            return None, f"its key {job.key_fingerprint} is not among the keys given"
        if key.revoked:
            return None, f"its key {key.label} was refused ({key.refused})"
        return key, ""

    def refuse(self, key: PoolKey, why: str, *, revoked: bool = False) -> Stop:
        """Set ``key`` aside (``revoked``: a 401, its runs cannot be polled either), and
        say what the run does: go on with the other keys, stop submitting (no key may
        submit: the usual wind-down), or stop at once (no key can even poll)."""
        if key.refused is None:
            log.warning("key %s set aside: %s", key.label, why)
        key.refused = key.refused or why
        key.revoked = key.revoked or revoked
        if not any(not k.revoked for k in self.keys):
            return "hard"
        return "go_on" if self.submitting() else "soft"

    def strand(self, job: JobRecord, why: str) -> None:
        self.stranded[job.id] = (job, why)

    def stranded_reason(self) -> str | None:
        """The run's reason when paid runs were left unfollowed (None: none were)."""
        if not self.stranded:
            return None
        first = next(iter(self.stranded.values()))[1]
        return (
            f"{len(self.stranded)} job(s) with a paid run or a POST in doubt could not "
            f"be followed ({first}): resume with that key"
        )

    def figures(self) -> list[dict[str, Any]]:
        """Per key (several keys only): its fingerprint, requests sent this run, why it
        was refused, and the jobs it left unfollowed (runs and spend: the ledger's)."""
        if not self.several:
            return []
        out = []
        for k in self.keys:
            left = [
                {"key": job.key, "idx": job.idx, "run_id": job.run_id, "why": why}
                for job, why in self.stranded.values()
                if job.key_fingerprint == k.fingerprint
            ]
            out.append(
                {"key": k.fingerprint, "requests": k.limiter.stats().sent,
                 "refused": k.refused, "unfollowed": left}
            )  # fmt: skip
        return out


def single(client: ApiClient, limiter: RequestLimiter) -> KeyPool:
    """The pool of a caller that gives one client and one limiter (no fingerprint)."""
    return KeyPool([PoolKey(None, client, limiter)])


__all__ = ["ApiClient", "KeyPool", "PoolKey", "RunLike", "Stop", "single"]
