"""`batchgen status` must start fast on a big database: the CLI imports neither
SQLAlchemy nor SQLModel nor pydantic until a command that needs them runs, and
`status` reads with the standard library's sqlite3 alone. (Typer itself coerces the
arguments of any command with pydantic, so a command that runs has it.)"""

from __future__ import annotations

import json

from batchgen.manifest.loader import load_manifest
from batchgen.store import batches
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest
from tests.support.processes import imported_after


def test_importing_the_cli_imports_no_sqlalchemy_sqlmodel_or_pydantic():
    assert imported_after("import batchgen.cli") == []


def test_importing_batchgen_imports_neither_its_api_nor_sqlalchemy():
    code = "import batchgen\nassert 'batchgen.api' not in sys.modules"
    assert imported_after(f"import sys\n{code}") == []


def test_the_status_reader_imports_no_sqlalchemy():
    assert imported_after("from batchgen.store import reader, status") == []


def test_the_store_package_itself_imports_no_sqlalchemy():
    assert imported_after("import batchgen.store") == []


def test_the_schema_still_brings_sqlalchemy():
    """The probe itself can fail: importing the schema does bring the heavy packages."""
    code = "from batchgen.store.schema import Batch, open_db\nassert Batch.__tablename__ == 'batch'"
    assert imported_after(code) == ["pydantic", "sqlalchemy", "sqlmodel"]


def test_the_status_command_runs_without_sqlalchemy(tmp_path):
    db_path = tmp_path / "state.db"
    db = open_db(db_path)
    batches.sync_batch(db, load_manifest(write_manifest(tmp_path, ["fox", "owl"])))
    db.dispose()
    report = tmp_path / "status.json"
    code = (
        "import contextlib, sys\n"
        "from batchgen.cli import main\n"
        f"sys.argv = ['batchgen', 'status', '--db', {str(db_path)!r}, '--json']\n"
        f"with open({str(report)!r}, 'w') as out, contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
    )
    assert imported_after(code, heavy=("sqlalchemy", "sqlmodel")) == []
    shown = json.loads(report.read_text())
    assert (shown["batch"], shown["jobs"], shown["by_state"]["queued"]) == ("sweep", 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("state.db")) == [
        "state.db"
    ]
