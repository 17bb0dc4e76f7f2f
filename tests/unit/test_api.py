"""The public API: every documented name is there and is what the library uses
(tests/integration/test_cli_startup.py checks that ``import batchgen`` does not pay for it)."""

from __future__ import annotations

import inspect

import batchgen.api as api
from batchgen.manifest.loader import load_manifest
from batchgen.report.page import write_report
from batchgen.report.plan import build_plan
from batchgen.run.runner import run_batch
from batchgen.sim import SimConfig, Simulator

DOCUMENTED = {
    "load_manifest",
    "build_plan",
    "run_batch",
    "write_report",
    "Simulator",
    "SimConfig",
    "DEFAULT_KEY",
    "LoadedManifest",
    "Overrides",
    "ExpandedJob",
    "Plan",
    "RunOptions",
    "RunSummary",
    "open_db",
    "find_batch",
}


def test_the_api_names_everything_it_documents_and_nothing_it_lacks():
    assert set(api.__all__) >= DOCUMENTED
    assert all(hasattr(api, name) for name in api.__all__)
    assert len(set(api.__all__)) == len(api.__all__)


def test_the_api_names_are_the_library_s_own_objects():
    assert api.load_manifest is load_manifest
    assert api.build_plan is build_plan
    assert api.run_batch is run_batch
    assert api.write_report is write_report
    assert (api.Simulator, api.SimConfig) == (Simulator, SimConfig)


def test_every_api_function_is_typed_and_documented():
    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isfunction(obj):
            assert obj.__doc__, name
            hints = inspect.get_annotations(obj)
            assert "return" in hints, name


def test_a_sim_config_names_the_field_that_is_wrong():
    # real behaviour through the public name: a bad setting is refused, naming it
    try:
        api.SimConfig(time_scale=-1.0)
    except ValueError as exc:
        assert "time_scale" in str(exc)
    else:
        raise AssertionError("a negative time_scale was accepted")
