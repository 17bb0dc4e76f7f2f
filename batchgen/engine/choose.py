"""Which queued job the next POST sends, and with which key.

Resends (jobs in doubt) go first, then the queue in order. A job bound to a key (a
resend: its idempotency key may already have made a run, visible to that key only, so
another key would make a second paid run) goes with that key only: it waits while that
key's POST is in flight, and the jobs behind it go ahead with the other keys. A job
whose key can no longer send it is stranded (held, reported, never sent with another
key). Any other job goes with the key ``KeyPool.pick`` names among those with no POST
in flight. Everything here runs synchronously on the loop: two POSTs can never be
given the same job or the same key.
"""

from __future__ import annotations

import logging
from collections import deque

from batchgen.engine.keys import PoolKey
from batchgen.engine.state import EngineState
from batchgen.states import JobState
from batchgen.store.records import JobRecord

__all__ = ["Choice", "bound", "next_post"]

log = logging.getLogger("batchgen.engine")

#: where the job waits (``resend`` or ``ready``), its index there, the job, its key
Choice = tuple[deque[JobRecord], int, JobRecord, PoolKey]


def bound(job: JobRecord) -> bool:
    """Whether ``job``'s POST must go with the key it is bound to: a resend (same
    idempotency key, no run yet) of a job whose intent named a key, or in doubt."""
    resend = bool(job.idem_key) and not job.run_id
    return resend and (bool(job.key_fingerprint) or job.state is JobState.IN_DOUBT)


def next_post(st: EngineState) -> Choice | None:
    """The next job that can be sent now and its key (module docstring); None: nothing
    can be sent now. Strands the bound jobs met whose key can no longer send them, and
    stops the batch's submissions when no key may submit."""
    keys = st.keys
    busy = {p.key for p in st.posts.values()}
    for queue in (st.resend, st.ready):
        i = 0
        while i < len(queue):
            job = queue[i]
            if job.id in st.posts:  # never two POSTs for one job
                i += 1
                continue
            if not bound(job):
                key = keys.pick(busy)
                if key is None:  # every key that may submit has its POST in flight
                    _no_key_left(st)
                    return None
                return queue, i, job, key
            key, why = keys.follow(job)
            if key is not None and key.refused is None:
                if key not in busy:
                    return queue, i, job, key
                i += 1
                continue
            if key is not None:
                why = f"its key {key.label} no longer submits ({key.refused})"
            keys.strand(job, why)
            log.warning("job %s: not resent: %s", job.key, why)
            del queue[i]
            st.queued_ids.discard(job.id)
            if _no_key_left(st):
                return None
    return None


def _no_key_left(st: EngineState) -> bool:
    """Stop the batch's submissions when no key may submit (True)."""
    if st.keys.submitting():
        return False
    st.stop("account", "account: no key may submit")
    return True
