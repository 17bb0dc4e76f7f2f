"""The reads of ``PostgresStore``: each a named query of ``queries.sql`` on the store's
read connection (``_read``: one at a time, errors as ours, bounded), its rows as the
``JobStore`` interface's records."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchgen.states import JobState
from batchgen.store.ledger import PossibleJob, Totals
from batchgen.store.records import Failure, RunTimes

__all__ = ["StoreReads"]


class StoreReads:
    """The ``JobStore`` reads, given ``_read`` (``PostgresStore``'s)."""

    async def _read(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def counts(self, batch_id: int) -> dict[str, int]:
        out = {st.value: 0 for st in JobState}
        for row in await self._read("counts", {"batch_id": batch_id}):
            out[row["state"]] = int(row["count"])
        return out

    async def in_doubt_since(self, batch_id: int, since: float) -> int:
        rows = await self._read("in_doubt_since", {"batch_id": batch_id, "since": since})
        return int(rows[0]["count"])

    async def failures(self, batch_id: int, *, limit: int = 100) -> list[Failure]:
        rows = await self._read("failures", {"batch_id": batch_id, "limit": limit})
        return [Failure(r["key"], r["idx"], r["last_error"], r["error_code"]) for r in rows]

    async def recent_durations(self, model: str, *, limit: int = 500) -> list[RunTimes]:
        rows = await self._read("recent_durations", {"model": model, "limit": limit})
        return [
            RunTimes(json.loads(r["input_json"]), r["run_created_at"], r["run_completed_at"])
            for r in rows
        ]

    async def totals(self, batch_id: int) -> Totals:
        sums = {"charge": 0, "refund": 0, "possible": 0}
        for row in await self._read("totals", {"batch_id": batch_id}):
            sums[row["kind"]] += int(row["sum"] or 0)
        return Totals(sums["charge"], sums["refund"], max(0, sums["possible"]))

    async def possible_jobs(self, batch_id: int, *, limit: int = 100) -> list[PossibleJob]:
        rows = await self._read("possible_jobs", {"batch_id": batch_id, "limit": limit})
        return [PossibleJob(r["key"], r["idx"], int(r["possible"]), int(r["count"])) for r in rows]

    async def run_net(self, job_id: int, run_id: str) -> int:
        rows = await self._read("run_net", {"job_id": job_id, "run_id": run_id})
        return int(rows[0]["coalesce"])

    async def run_paid(self, job_id: int, run_id: str) -> bool:
        return await self.run_net(job_id, run_id) > 0

    async def possible_for_key(self, job_id: int, idem_key: str) -> tuple[int, float]:
        rows = await self._read("possible_for_key", {"job_id": job_id, "idem_key": idem_key})
        if not rows or rows[0]["sum"] is None:
            return 0, 0.0
        return int(rows[0]["sum"]), float(rows[0]["max"] or 0.0)
