"""Counting requests in sliding windows, the way the API's limit counts them."""

from __future__ import annotations

from collections.abc import Sequence


def max_in_any_window(times: Sequence[float], window: float) -> int:
    """Most sends inside any half-open window [t, t + window)."""
    ts = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(ts):
        while ts[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best
