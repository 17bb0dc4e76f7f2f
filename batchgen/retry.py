"""How long to wait before trying a failed request again, and how often to try.

A small value object in the spirit of procrastinate's ``RetryStrategy`` and stamina's
defaults: exponential backoff with *full jitter* (AWS architecture blog, "Exponential
Backoff And Jitter"), so many jobs failing at once do not come back at once. Tests
use ``RetryPolicy.zero()`` or inject a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    #: total tries of one job, the first one included
    max_attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: bool = True
    rng: random.Random | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("base_s and cap_s must not be negative")

    @classmethod
    def zero(cls, max_attempts: int = 5) -> RetryPolicy:
        """No waiting at all: for tests."""
        return cls(max_attempts=max_attempts, base_s=0.0, cap_s=0.0, jitter=False)

    def ceiling(self, n: int) -> float:
        """The longest wait before retry number ``n`` (0 = the first retry)."""
        if n < 0:
            raise ValueError("n must not be negative")
        # 2**n overflows a float long before n is large; past 64 doublings the cap rules.
        if n >= 64:
            return self.cap_s
        return min(self.cap_s, self.base_s * 2.0**n)

    def delay(self, n: int) -> float:
        """Seconds to wait before retry number ``n``: uniform in [0, ceiling(n)] with jitter."""
        top = self.ceiling(n)
        if not self.jitter:
            return top
        rng = self.rng if self.rng is not None else random
        return rng.uniform(0.0, top)

    def allows(self, attempts_made: int) -> bool:
        """True while another try is allowed after ``attempts_made`` tries."""
        return attempts_made < self.max_attempts
