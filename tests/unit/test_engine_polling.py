"""The learned poll schedule and the budget: pure logic, no network."""

from __future__ import annotations

import pytest

from batchgen.clock import api_duration
from batchgen.engine.budget import Budget
from batchgen.engine.schedule import DurationModel, PollPolicy, prior_seconds, run_class

CLS = ("bytedance/seedance-1-pro", "1080p", "5")


def test_run_class_fills_the_model_defaults():
    assert run_class("bytedance/seedance-1-pro", {"prompt": "x"}) == CLS
    assert run_class("bytedance/seedance-1-pro", {"prompt": "x", "resolution": "720p"}) == (
        "bytedance/seedance-1-pro",
        "720p",
        "5",
    )
    assert prior_seconds(CLS) == pytest.approx(41.4)
    assert prior_seconds(("unknown/model", "", "")) == 60.0


def test_api_duration_reads_iso_times_and_rejects_nonsense():
    assert api_duration("2024-05-01T10:00:00Z", "2024-05-01T10:00:41.5Z") == pytest.approx(41.5)
    assert api_duration("2024-05-01T10:00:00+00:00", "2024-05-01T10:00:00.25+00:00") == 0.25
    assert api_duration(None, "2024-05-01T10:00:00Z") is None
    assert api_duration("garbage", "2024-05-01T10:00:00Z") is None
    assert api_duration("2024-05-01T10:00:05Z", "2024-05-01T10:00:00Z") is None  # negative


def test_before_any_observation_the_prior_rules_and_the_probe_doubles():
    model = DurationModel(PollPolicy(min_interval_s=1.0))
    assert not model.known(CLS)
    assert model.next_poll(CLS, submitted=100.0, last_poll=None, polls=0) == pytest.approx(141.4)
    # the probe: 1, 2, 4, 8 ... seconds of age, capped at the prior
    ages = [
        model.next_poll(CLS, submitted=0.0, last_poll=None if n == 0 else 2.0**n / 2, polls=n,
                        probe=True)
        for n in range(8)
    ]  # fmt: skip
    assert ages[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert ages[6] == pytest.approx(41.4)  # capped at the prior
    assert ages[7] == 65.0  # never sooner than min_interval after the last poll


def test_first_poll_at_the_high_quantile_then_a_quarter_of_the_median():
    model = DurationModel(PollPolicy(quantile=0.85, backoff_share=0.25, min_interval_s=0.1))
    model.seed((CLS, float(s)) for s in range(1, 101))  # 1..100 s
    assert model.known(CLS)
    p85 = model.first_poll_s(CLS)
    assert 84 < p85 < 87
    assert model.median_s(CLS) == pytest.approx(50.5)
    first = model.next_poll(CLS, submitted=0.0, last_poll=None, polls=0)
    assert first == pytest.approx(p85)
    # still running at the first poll: again a quarter of the median later
    again = model.next_poll(CLS, submitted=0.0, last_poll=first, polls=1)
    assert again == pytest.approx(first + 50.5 / 4)
    # an early poll (on slack) never pulls the scheduled one before the quantile
    assert model.next_poll(CLS, submitted=0.0, last_poll=10.0, polls=1) == pytest.approx(p85)


def test_only_the_recent_window_is_kept():
    model = DurationModel(PollPolicy(window=10))
    model.seed((CLS, 100.0) for _ in range(10))
    model.seed((CLS, 1.0) for _ in range(10))
    assert model.first_poll_s(CLS) == 1.0
    assert model.observed == 20


def test_early_polls_wait_for_the_median_and_the_gap():
    model = DurationModel(PollPolicy(min_interval_s=0.5))
    assert model.early_ok(CLS, now=1.0, submitted=0.0, last_poll=None)  # unknown: doubling
    assert not model.early_ok(CLS, now=1.2, submitted=0.0, last_poll=1.0)
    assert model.early_ok(CLS, now=2.0, submitted=0.0, last_poll=1.0)
    model.seed([(CLS, 10.0)] * 5)
    assert not model.early_ok(CLS, now=9.0, submitted=0.0, last_poll=None)  # before median
    assert model.early_ok(CLS, now=10.0, submitted=0.0, last_poll=None)
    assert not model.early_ok(CLS, now=11.0, submitted=0.0, last_poll=10.0)  # gap 2.5 s


def test_budget_reserves_settles_refunds_and_never_overcommits():
    budget = Budget(1_000_000)
    assert budget.reserve(1, 484_000)
    assert budget.reserve(2, 484_000)
    assert not budget.reserve(3, 484_000)  # 1.452 > 1.0
    assert budget.reserve(1, 484_000)  # a resend holds nothing new
    budget.settle(1, 484_000, 484_000)
    budget.release(2)
    assert budget.spent == 484_000 and budget.reserved == 0
    assert budget.remaining() == 516_000
    budget.refund(484_000)
    assert budget.spent == 0
    # an answer dearer than the estimate makes later reservations more careful
    budget.settle(4, 600_000, 484_000)
    assert budget.reservation(484_000) == 600_000
    assert Budget(None).reserve(1, 10**12)
