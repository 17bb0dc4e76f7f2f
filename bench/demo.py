"""`make demo`: the whole flow against the local simulator, end to end.

Starts `batchgen sim` on a free loopback port in the background, plans and runs
`manifests/example.yaml` against it (keeping a live report), exports a CSV, prints
where the outputs are, and ends by writing the HTML report and printing its path.
The simulator is stopped whatever happens. Output folder: `demo-out/`, or the one
given as the first argument (`python -m bench.demo /tmp/somewhere`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
MANIFEST = ROOT / "manifests" / "example.yaml"
SIM = [sys.executable, "-m", "batchgen", "sim"]


def batchgen(*args: str, env: dict[str, str]) -> int:
    cmd = [sys.executable, "-m", "batchgen", *args]
    print("$ batchgen " + " ".join(args), flush=True)
    return subprocess.call(cmd, env=env, cwd=ROOT)


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve() if argv else OUT
    if out == OUT:
        shutil.rmtree(out, ignore_errors=True)  # the demo's own folder: start afresh
    elif out.exists() and any(out.iterdir()):
        print(f"demo: {out} is not empty; give a new or empty folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    from batchgen.sim import DEFAULT_KEY

    scale = os.environ.get("DEMO_TIME_SCALE", "0.05")  # the tests make it faster
    sim = subprocess.Popen(
        [*SIM, "--port", "0", "--time-scale", scale, "--fail-rate", "0.1", "--seed", "7"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    env = {**os.environ, "RUNBASE_API_KEY": DEFAULT_KEY, "BATCHGEN_DB": str(out / "state.db")}
    report = out / "report.html"
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            print(f"demo: the simulator did not start (said {base_url!r})", file=sys.stderr)
            return 1
        print(f"demo: simulator at {base_url}", flush=True)
        env["RUNBASE_BASE_URL"] = base_url
        batchgen("plan", str(MANIFEST), env=env)
        code = batchgen(
            "run",
            str(MANIFEST),
            "--out",
            str(out / "videos"),
            "--report",
            str(report),
            "--summary-file",
            str(out / "summary.json"),
            env=env,
        )
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
    # the rest reads the state database only: no simulator needed
    batchgen("status", env=env)
    exported = batchgen("export", "--format", "csv", "--out", str(out / "jobs.csv"), env=env)
    print(f"\ndemo: run exit code {code}")
    print(f"demo: videos      {out / 'videos'}")
    print(f"demo: summary     {out / 'summary.json'}")
    print(f"demo: export      {out / 'jobs.csv'}")
    print(f"demo: state db    {out / 'state.db'}", flush=True)
    # last: the report from the final state, and its path (printed by `batchgen report`)
    reported = batchgen("report", "--out", str(report), env=env)
    # A failed job in the demo is expected (--fail-rate 0.1 after max_attempts is rare);
    # anything but 0/1 means the flow itself broke.
    if code not in (0, 1):
        return code
    return exported or reported


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
