"""RetryPolicy: exponential backoff with full jitter, deterministic with a seeded RNG."""

from __future__ import annotations

import dataclasses
import random

import pytest

from batchgen.retry import RetryPolicy


def test_defaults_match_the_brief():
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_s, policy.cap_s, policy.jitter) == (5, 1.0, 60.0, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]


def test_ceiling_doubles_up_to_the_cap():
    policy = RetryPolicy(base_s=1.0, cap_s=60.0, jitter=False)
    assert [policy.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(10_000) == 60.0  # no overflow


def test_full_jitter_is_uniform_below_the_ceiling_and_seedable():
    a = RetryPolicy(rng=random.Random(42))
    b = RetryPolicy(rng=random.Random(42))
    delays = [a.delay(n) for n in range(12)]
    assert delays == [b.delay(n) for n in range(12)]
    assert all(0.0 <= d <= min(60.0, 2.0**n) for n, d in enumerate(delays))
    rng = random.Random(7)
    spread = [RetryPolicy(rng=rng).delay(3) for _ in range(2000)]
    assert 3.6 < sum(spread) / len(spread) < 4.4  # mean of U(0, 8) is 4
    assert min(spread) < 0.5 and max(spread) > 7.5


def test_zero_never_waits():
    policy = RetryPolicy.zero(max_attempts=3)
    assert all(policy.delay(n) == 0.0 for n in range(50))
    assert policy.max_attempts == 3


def test_nonsense_is_refused():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_s=-1.0)
    with pytest.raises(ValueError):
        RetryPolicy().delay(-1)
