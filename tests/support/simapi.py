"""Helpers for the simulator's own tests: raw HTTP over loopback, no batchgen client.

The simulator is tested the way any user's pipeline would talk to it, with plain
aiohttp requests, so that these tests pin the wire format and not our client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict

from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator

MODEL = "bytedance/seedance-1-pro"
FAST = 0.002  # time scale: a 41.4 s generation takes about 0.08 s
ROUTE_CREATE = "POST /api/v1/runs"
ROUTE_GET = "GET /api/v1/runs/{id}"
ROUTE_FILES = "GET /files"


@dataclass
class Answer:
    status: int
    body: Any
    headers: CIMultiDict[str]

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return str(code) if code is not None else None
        return None

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message", ""))
        return ""


@asynccontextmanager
async def running(**config: Any) -> AsyncIterator[tuple[Simulator, Api]]:
    config.setdefault("time_scale", FAST)
    config.setdefault("rate", (1000, 1.0))
    config.setdefault("tiny_videos", True)  # the API tests; test_sim_files asks for real sizes
    async with Simulator(SimConfig(**config)) as sim, aiohttp.ClientSession() as session:
        yield sim, Api(sim.base_url, session)


@dataclass
class Api:
    base_url: str
    session: aiohttp.ClientSession
    key: str = DEFAULT_KEY

    def headers(self, key: str | None = None, idem: str | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {key or self.key}"}
        if idem is not None:
            out["Idempotency-Key"] = idem
        return out

    async def _answer(self, resp: aiohttp.ClientResponse) -> Answer:
        raw = await resp.read()
        try:
            body: Any = await resp.json(content_type=None) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return Answer(resp.status, body, CIMultiDict(resp.headers))

    async def post(
        self,
        input: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        idem: str | None = None,
        body: Any = None,
        model: str = MODEL,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        if body is None:
            body = {"model": model, "input": input or {"prompt": "a red fox"}}
        data = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) else body
        async with self.session.post(
            f"{self.base_url}/api/v1/runs",
            json=json_body,
            data=data,
            headers=headers if headers is not None else self.headers(key, idem),
        ) as resp:
            return await self._answer(resp)

    async def get(self, run_id: str, *, key: str | None = None) -> Answer:
        async with self.session.get(
            f"{self.base_url}/api/v1/runs/{run_id}", headers=self.headers(key)
        ) as resp:
            return await self._answer(resp)

    async def wait(self, run_id: str, *, key: str | None = None, timeout: float = 10.0) -> Answer:
        """GET the run until it is finished."""
        deadline = time.monotonic() + timeout
        while True:
            answer = await self.get(run_id, key=key)
            assert answer.status == 200, answer
            if answer.body["status"] in ("succeeded", "failed"):
                return answer
            if time.monotonic() > deadline:
                raise TimeoutError(answer)
            await asyncio.sleep(0.01)

    async def fetch(self, url: str, headers: dict[str, str] | None = None) -> Answer:
        async with self.session.get(url, headers=headers or {}) as resp:
            return Answer(resp.status, await resp.read(), CIMultiDict(resp.headers))

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base_url}/_sim/stats") as resp:
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data

    async def succeeded_file(self, input: dict[str, Any]) -> tuple[str, bytes, Answer]:
        """Create a run, wait for it, download its file: (url, bytes, the file answer)."""
        created = await self.post(input)
        assert created.status == 200, created
        done = await self.wait(created.body["id"])
        assert done.body["status"] == "succeeded", done
        url = done.body["output"]["urls"][0]
        got = await self.fetch(url)
        assert got.status == 200, got
        return url, got.body, got


def requests_to(stats: dict[str, Any], route: str, status: int | str) -> int:
    return int(stats["requests"].get(route, {}).get(str(status), 0))
