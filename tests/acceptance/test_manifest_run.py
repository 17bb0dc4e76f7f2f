"""A manifest with local images, run end to end against the simulator over loopback:
what is stored keeps references, what is sent carries the image bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batchgen.engine.schedule import PollPolicy
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from tests.support.manifests import write_manifest


async def test_run_takes_max_jobs_from_the_command_line(tmp_path: Path) -> None:
    """A matrix over the default limit can be run once the user raises --max-jobs, as
    validate and plan allow; one over the given limit is refused before anything."""
    manifest = write_manifest(tmp_path, ["fox", "owl"])  # 4 jobs
    db_path = tmp_path / "state.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env["RUNBASE_API_KEY"] = DEFAULT_KEY
    env["RUNBASE_BASE_URL"] = "http://127.0.0.1:9"  # never reached
    command = ["run", str(manifest), "--db", str(db_path), "--max-jobs", "3"]
    refused = subprocess.run(
        [sys.executable, "-m", "batchgen", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "over the limit of 3" in refused.stderr and "--max-jobs 4" in refused.stderr
    assert not db_path.exists()
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5), tiny_videos=True)) as sim:
        summary = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            manifest=manifest,
            options=RunOptions(
                base_url=sim.base_url,
                rate=(20, 0.5),
                max_jobs=4,
                poll_policy=PollPolicy(min_interval_s=0.01),
            ),
        )
    assert summary.exit_code == 0, summary.to_json()
