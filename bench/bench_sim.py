"""The simulator's own speed: clip encoding and requests per second over loopback.

Tests create hundreds of runs and download their files, so the simulator must not be
the slow part. Figures:
- milliseconds to encode one clip, per resolution, aspect ratio and duration (cold,
  no cache), and for ``--tiny-videos``;
- API requests per second one client gets (GET of a run, keep-alive, 20 in flight);
- file downloads per second once the clip is cached.

Run: ``python -m bench.bench_sim [--requests 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.sim.video import FPS, TINY_FPS, frame_size, render

ASPECTS = ["16:9", "9:16", "4:3", "3:4", "1:1", "21:9"]
RESOLUTIONS = ["720p", "1080p"]


def bench_encoding(repeat: int = 3) -> None:
    print("clip encoding (ms per clip, median of runs; cached afterwards per prompt and size):")
    sizes = [(res, False) for res in RESOLUTIONS] + [("720p", True)]
    for resolution, tiny in sizes:
        for duration in (5.0, 10.0):
            cells = []
            for aspect in ASPECTS:
                w, h = frame_size(aspect, resolution, tiny=tiny)
                fps = TINY_FPS if tiny else FPS
                times = []
                for i in range(repeat):
                    start = time.perf_counter()
                    clip = render(f"bench {aspect} {i}", w, h, duration, fps)
                    times.append((time.perf_counter() - start) * 1000)
                cells.append(f"{aspect} {w}x{h}: {sorted(times)[repeat // 2]:.0f} ms "
                             f"({len(clip.data) // 1024} kB)")  # fmt: skip
            label = "tiny" if tiny else resolution
            print(f"  {label} {duration:g} s: " + "; ".join(cells))


async def bench_requests(n: int, in_flight: int = 20) -> None:
    config = SimConfig(rate=(10**9, 1.0), time_scale=0.0001)
    async with Simulator(config) as sim, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
        async with session.post(
            f"{sim.base_url}/api/v1/runs", json={"model": "bytedance/seedance-1-pro",
            "input": {"prompt": "bench"}}, headers=headers,
        ) as resp:  # fmt: skip
            run_id = (await resp.json())["id"]
        await asyncio.sleep(0.05)
        async with session.get(f"{sim.base_url}/api/v1/runs/{run_id}", headers=headers) as resp:
            url = (await resp.json())["output"]["urls"][0]

        async def hammer(make_url: str, count: int, use_headers: bool) -> float:
            queue = iter(range(count))

            async def worker() -> None:
                for _ in queue:
                    async with session.get(make_url, headers=headers if use_headers else {}) as r:
                        await r.read()
                        assert r.status == 200, r.status

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return count / (time.perf_counter() - start)

        api = await hammer(f"{sim.base_url}/api/v1/runs/{run_id}", n, True)
        files = await hammer(url, n // 4, False)
    print(f"GET /api/v1/runs/{{id}}: {api:.0f} requests/s ({n} requests, {in_flight} in flight)")
    print(f"GET /files (cached clip): {files:.0f} downloads/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    bench_encoding()
    asyncio.run(bench_requests(args.requests))


if __name__ == "__main__":
    main()
