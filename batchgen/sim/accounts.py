"""API keys and what each one owns: balance, lifetime spend, usage, rate window."""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field


class SlidingWindow:
    """No more than ``limit`` accepted requests in any window of ``window_s`` seconds.

    A refused request is not recorded: a client that keeps knocking while refused
    is not punished further, and the window frees up exactly ``window_s`` after the
    oldest accepted request. ``max_seen`` is the most accepted requests that ever
    fell inside one window (the peak is always reached at an accepted request).
    """

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()
        self.max_seen = 0

    def admit(self, now: float) -> bool:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        self.max_seen = max(self.max_seen, len(self._times))
        return True


@dataclass
class Account:
    """One API key's view of the service. ``label`` stands for the key in stats."""

    label: str
    balance: int  # micro-USD
    window: SlidingWindow
    spent: int = 0  # lifetime net spend (charges minus refunds), micro-USD
    runs_created: int = 0
    charged: int = 0
    refunded: int = 0
    idempotency: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> run id

    def charge(self, cost: int) -> None:
        self.balance -= cost
        self.spent += cost
        self.charged += cost
        self.runs_created += 1

    def refund(self, cost: int) -> None:
        self.balance += cost
        self.spent -= cost
        self.refunded += cost

    def summary(self) -> dict[str, int | str]:
        return {
            "key": self.label,
            "balance_micro_usd": self.balance,
            "spent_micro_usd": self.spent,
            "runs_created": self.runs_created,
            "charged_micro_usd": self.charged,
            "refunded_micro_usd": self.refunded,
            "max_in_window": self.window.max_seen,
        }


class KeyRing:
    """Finds the account of a presented key without leaking it through timing.

    Keys are compared as SHA-256 digests (equal length) with ``hmac.compare_digest``,
    and every key is compared, so neither the key's length nor which key matched
    shows in the time taken. Only the digests are kept.
    """

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __len__(self) -> int:
        return len(self._digests)

    def find(self, presented: str) -> int | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: int | None = None
        for i, known in enumerate(self._digests):
            if hmac.compare_digest(digest, known) and found is None:
                found = i
        return found
