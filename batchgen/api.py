"""batchgen as a library: the few names a script needs, typed and documented.

Everything the ``batchgen`` command does, a program can do with these::

    from pathlib import Path
    from batchgen.api import (
        RunOptions, SimConfig, Simulator, build_plan, load_manifest, open_db, run_batch,
        write_report, find_batch,
    )

    loaded = load_manifest(Path("manifests/example.yaml"))      # UsageError (exit 2) if bad
    print(build_plan(loaded).to_submit.estimate_usd)             # no network, no writes
    summary = run_batch(Path("batchgen.db"), api_key=key, manifest=loaded.path,
                        options=RunOptions(budget_usd=5))        # RunSummary; .exit_code
    db = open_db(Path("batchgen.db"), readonly=True)
    write_report(db, find_batch(db, summary.batch).id, Path("report.html"))

and ``async with Simulator(SimConfig(time_scale=0.01)) as sim:`` serves a local Runbase
API at ``sim.base_url`` (the key ``DEFAULT_KEY``) for tests and dry runs.

This module is the public surface: the modules it imports from may change shape
between versions, these names keep their meaning. It is not imported by ``import
batchgen`` nor by the command line, so it imports what it names at the top (SQLAlchemy,
aiohttp, PyAV come with it) and neither start-up pays for it.
"""

from __future__ import annotations

from batchgen.clock import Clock, FakeClock, SystemClock
from batchgen.errors import BatchgenError, Problem, UsageError
from batchgen.events import Observer, RunSummary
from batchgen.manifest.expand import ExpandedJob
from batchgen.manifest.loader import LoadedManifest, Overrides, load_manifest
from batchgen.report.page import LiveReport, write_report
from batchgen.report.plan import Plan, build_plan, render_plan
from batchgen.run.options import RunOptions
from batchgen.run.runner import run_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.store.batches import find_batch
from batchgen.store.schema import Batch, open_db

__all__ = [
    "DEFAULT_KEY",
    "Batch",
    "BatchgenError",
    "Clock",
    "ExpandedJob",
    "FakeClock",
    "LiveReport",
    "LoadedManifest",
    "Observer",
    "Overrides",
    "Plan",
    "Problem",
    "RunOptions",
    "RunSummary",
    "SimConfig",
    "Simulator",
    "SystemClock",
    "UsageError",
    "build_plan",
    "find_batch",
    "load_manifest",
    "open_db",
    "render_plan",
    "run_batch",
    "write_report",
]
