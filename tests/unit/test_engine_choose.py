"""Which queued job the next POST sends, and with which key (``engine.choose``).

On the in-memory store and a fake clock: one POST in flight per key, a resend bound to
its key waits for that key while the jobs behind it go with the others, a resend whose
key was refused is stranded, never given another key.
"""

from __future__ import annotations

import dataclasses

from batchgen.clock import FakeClock
from batchgen.engine.budget import Budget
from batchgen.engine.choose import next_post
from batchgen.engine.keys import KeyPool, PoolKey
from batchgen.engine.schedule import DurationModel
from batchgen.engine.state import EngineConfig, EngineState, Post
from batchgen.retry import RetryPolicy
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.states import JobState
from batchgen.store.memory import InMemoryStore
from batchgen.store.records import JobRecord


def engine_state(keys: int = 3) -> tuple[EngineState, list[JobRecord]]:
    clock = FakeClock()
    store = InMemoryStore()
    batch = store.add_batch("b", "bytedance/seedance-1-pro")
    jobs = [store.add_job(batch.id, f"job{i}", i, input={"prompt": f"p{i}"}) for i in range(4)]
    pool = KeyPool(
        [PoolKey(f"fp{i}", object(), RequestLimiter(20, 10.0, clock=clock)) for i in range(keys)]  # type: ignore[arg-type]
    )
    st = EngineState(
        store=store, batch=batch, cfg=EngineConfig(), budget=Budget(None),
        durations=DurationModel(), retry=RetryPolicy(), clock=clock, observers=[], keys=pool,
    )  # fmt: skip
    for job in jobs:
        st.queued_ids.add(job.id)
        st.ready.append(job)
    return st, jobs


def in_flight(st: EngineState, job: JobRecord, key: PoolKey) -> None:
    """``job``'s POST is in flight with ``key`` (as ``Submitter`` records it)."""
    st.ready.remove(job)
    st.queued_ids.discard(job.id)
    st.posts[job.id] = Post(job, key)


def bound_to(job: JobRecord, fingerprint: str) -> JobRecord:
    """``job`` back in the queue after a 500: same idempotency key, bound to its key."""
    return dataclasses.replace(job, idem_key="after-a-500", key_fingerprint=fingerprint, attempts=1)


async def test_each_key_gets_one_post_and_then_none_is_left() -> None:
    st, _ = engine_state(keys=3)
    taken = []
    while (found := next_post(st)) is not None:
        queue, index, job, key = found
        assert queue is st.ready and queue[index] is job
        in_flight(st, job, key)
        taken.append((job.idx, key.fingerprint))
    assert [idx for idx, _ in taken] == [0, 1, 2]  # in order, one job per key
    assert {fp for _, fp in taken} == {"fp0", "fp1", "fp2"}
    assert [j.idx for j in st.ready] == [3] and st.stop_kind is None


async def test_a_resend_waits_for_its_busy_key_and_the_jobs_behind_go_with_the_others() -> None:
    st, jobs = engine_state(keys=2)
    in_flight(st, jobs[1], st.keys.keys[0])  # fp0 has its POST in flight
    st.ready[0] = bound_to(jobs[0], "fp0")
    found = next_post(st)
    assert found is not None
    _, index, job, key = found
    assert (job.idx, key.fingerprint, index) == (2, "fp1", 1)  # passed the resend
    in_flight(st, job, key)
    assert next_post(st) is None  # the resend still waits for fp0; fp1 is busy too
    del st.posts[jobs[1].id]  # fp0's POST answered
    found = next_post(st)
    assert found is not None and (found[2].idx, found[3].fingerprint) == (0, "fp0")


async def test_a_resend_whose_key_was_refused_is_stranded_never_sent_with_another() -> None:
    st, jobs = engine_state(keys=2)
    st.ready[0] = bound_to(jobs[0], "fp0")
    assert st.keys.refuse(st.keys.keys[0], "402 insufficient balance") == "go_on"
    found = next_post(st)
    assert found is not None and (found[2].idx, found[3].fingerprint) == (1, "fp1")
    assert list(st.keys.stranded) == [jobs[0].id] and jobs[0].id not in st.queued_ids


async def test_no_key_that_may_submit_stops_the_batch() -> None:
    st, _ = engine_state(keys=2)
    for key in st.keys.keys:
        st.keys.refuse(key, "402")
    assert next_post(st) is None
    assert st.stop_kind == "account"


async def test_a_job_whose_post_is_in_flight_is_never_given_a_second() -> None:
    st, jobs = engine_state(keys=2)
    st.posts[jobs[0].id] = Post(jobs[0], st.keys.keys[0])  # a stale copy left queued
    found = next_post(st)
    assert found is not None and found[2].idx == 1 and found[3].fingerprint == "fp1"
    assert jobs[0].state is JobState.QUEUED
