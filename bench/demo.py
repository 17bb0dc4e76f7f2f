"""`make demo`: the whole flow against the local simulator, end to end.

Starts `batchgen sim` on a free loopback port in the background, plans and runs
`manifests/example.yaml` against it, writes the HTML report, prints where the
outputs are, and stops the simulator whatever happens.
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


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    from batchgen.sim import DEFAULT_KEY

    sim = subprocess.Popen(
        [*SIM, "--port", "0", "--time-scale", "0.05", "--fail-rate", "0.1", "--seed", "7"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            print(f"demo: the simulator did not start (said {base_url!r})", file=sys.stderr)
            return 1
        print(f"demo: simulator at {base_url}", flush=True)
        env = {
            **os.environ,
            "RUNBASE_API_KEY": DEFAULT_KEY,
            "RUNBASE_BASE_URL": base_url,
            "BATCHGEN_DB": str(OUT / "state.db"),
        }
        batchgen("plan", str(MANIFEST), env=env)
        code = batchgen(
            "run",
            str(MANIFEST),
            "--out",
            str(OUT / "videos"),
            "--report",
            str(OUT / "report.html"),
            "--summary-file",
            str(OUT / "summary.json"),
            env=env,
        )
        batchgen("status", env=env)
        batchgen("report", "--out", str(OUT / "report.html"), env=env)
        batchgen("export", "--format", "csv", "--out", str(OUT / "jobs.csv"), env=env)
        print(f"\ndemo: run exit code {code}")
        print(f"demo: videos      {OUT / 'videos'}")
        print(f"demo: report      {OUT / 'report.html'}")
        print(f"demo: summary     {OUT / 'summary.json'}")
        print(f"demo: export      {OUT / 'jobs.csv'}")
        print(f"demo: state db    {OUT / 'state.db'}")
        # A failed job in the demo is expected (--fail-rate 0.1 after max_attempts is rare);
        # anything but 0/1 means the flow itself broke.
        return 0 if code in (0, 1) else code
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()


if __name__ == "__main__":
    raise SystemExit(main())
