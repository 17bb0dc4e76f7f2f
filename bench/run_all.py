"""`make bench`: every benchmark, one after another, each printing its figures."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    "bench.bench_expand",
    "bench.bench_engine",
    "bench.bench_cpu",
    "bench.bench_report",
    "bench.bench_sim",
    "bench.bench_ratelimit",
    "bench.bench_limiter_shared",
    "bench.bench_keys",
    "bench.bench_keyslots",
]


def main() -> int:
    worst = 0
    for module in BENCHES:
        print(f"\n=== {module} ===", flush=True)
        worst = max(worst, subprocess.call([sys.executable, "-m", module, *sys.argv[1:]]))
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
