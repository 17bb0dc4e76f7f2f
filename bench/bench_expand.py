"""`make bench`: expand a manifest of a million jobs and store it in SQLite.

Writes a generated manifest (a prompt template over two variable axes, ``subject`` x
``style``) to a temporary folder, loads it, syncs it into a fresh state database (the
expansion streams straight into chunked inserts), then times ``batchgen status``'s
queries on the result. Prints:

- jobs, seconds and jobs/s of the load + expand + store;
- peak RSS of the process (``ru_maxrss``), which covers all of it;
- the time of the status counts on the stored batch (best of 3), and of the whole
  ``batchgen status --json`` command in a fresh process (best of 3);
- the same manifest synced again (``--resync``): nothing is added;
- ``batchgen plan --json`` of the same manifest against the stored batch in a fresh
  process (``--plan``): every job is looked up by key, none is new.

Targets on a 2-core machine: 1M jobs stored in under 60 s, peak RSS under 300 MB,
status well under 1 s.

Run: ``python -m bench.bench_expand [--jobs 1000000] [--resync] [--plan]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchgen.manifest.loader import Overrides, load_manifest
from batchgen.store import batches
from batchgen.store.schema import open_db

STYLES = 1_000


def axis_sizes(jobs: int) -> tuple[int, int]:
    """(subjects, styles) whose product is ``jobs`` (styles = 1 for an odd count)."""
    if jobs >= STYLES and jobs % STYLES == 0:
        return jobs // STYLES, STYLES
    return jobs, 1


def write_manifest(folder: Path, jobs: int) -> Path:
    subjects, styles = axis_sizes(jobs)
    lines = [
        "name: bench-expand",
        "out_dir: out",
        'filename: "{index:07d}-{subject}-{style}"',
        "defaults:",
        '  prompt: "a {subject} drawn in the manner of {style}, slow dolly shot"',
        "  resolution: 720p",
        '  duration: "5"',
        "matrix:",
        "  subject: [" + ", ".join(f"subject-{i:05d}" for i in range(subjects)) + "]",
        "  style: [" + ", ".join(f"style-{i:04d}" for i in range(styles)) + "]",
    ]
    path = folder / "bench.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def command_seconds(*args: str) -> tuple[float, dict[str, object]]:
    """Wall time of ``python -m batchgen ARGS`` (imports included) and its JSON output."""
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "batchgen", *args], capture_output=True, text=True, check=True
    )
    return time.perf_counter() - t, json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--resync", action="store_true", help="time a second, no-op sync")
    parser.add_argument("--plan", action="store_true", help="time `plan` against the batch")
    args, _ = parser.parse_known_args(argv)  # `make bench` passes every bench the same args
    with tempfile.TemporaryDirectory(prefix="batchgen-bench-") as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, args.jobs)
        db = open_db(folder / "state.db")
        started, cpu0 = time.perf_counter(), cpu_seconds()
        loaded = load_manifest(manifest, overrides=Overrides(max_jobs=args.jobs))
        result = batches.sync_batch(db, loaded)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
        rss = peak_rss_mb()
        status_s = []
        for _ in range(3):
            t = time.perf_counter()
            batches.batch_counts(db, result.batch_id)
            status_s.append(time.perf_counter() - t)
        size_mb = sum(f.stat().st_size for f in folder.glob("state.db*")) / 1e6
        print(f"jobs            {result.total:,} (added {result.added:,})")
        print(f"load+expand+store {seconds:.1f} s  ({result.total / seconds:,.0f} jobs/s)")
        # wall time depends on what else the machine runs; CPU time much less so
        print(f"  of which CPU  {cpu:.1f} s (user + system of this process)")
        print(f"peak RSS        {rss:.0f} MB")
        print(f"status query    {min(status_s) * 1000:.0f} ms (best of 3)")
        print(f"database        {size_mb:.0f} MB")
        if args.resync:
            t = time.perf_counter()
            again = batches.sync_batch(
                db, load_manifest(manifest, overrides=Overrides(max_jobs=args.jobs))
            )
            print(f"resync          {time.perf_counter() - t:.1f} s, added {again.added}")
        db.dispose()  # as after a run: the WAL folded back, no writer left
        db_arg = str(folder / "state.db")
        runs = [command_seconds("status", "--db", db_arg, "--json") for _ in range(3)]
        print(f"status command  {min(s for s, _ in runs):.2f} s (fresh process, best of 3)")
        ok = all(out["jobs"] == args.jobs for _, out in runs)
        if args.plan:
            plan_s, plan = command_seconds(
                "plan", str(manifest), "--db", db_arg, "--json", "--max-jobs", str(args.jobs)
            )
            stored = plan["stored"]
            assert isinstance(stored, dict)
            print(f"plan vs. db     {plan_s:.1f} s (fresh process), new {stored['new']:,}")
            ok = ok and stored["new"] == 0
        ok = ok and result.total == args.jobs
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
