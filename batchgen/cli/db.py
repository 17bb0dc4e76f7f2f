"""Commands on whole state databases: ``batchgen db copy SRC DST``.

Parsing only; the work is in ``batchgen.store.copy`` (imported inside the command, for
start-up: ``batchgen.cli``). SRC and DST are strings, not paths: a ``postgresql://``
URL would lose its ``//`` as a ``Path``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from batchgen.cli._app import Command, JsonOption, app
from batchgen.textsafe import printable

db_app = typer.Typer(
    name="db",
    help="Whole state databases: copy batches between SQLite files and PostgreSQL.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(db_app)


@db_app.command("copy", cls=Command)
def copy(
    src: Annotated[str, typer.Argument(help="A SQLite file or a postgresql:// URL.")],
    dst: Annotated[str, typer.Argument(help="A SQLite file or a postgresql:// URL.")],
    batch: Annotated[
        str | None, typer.Option("--batch", help="Copy this batch only (default: all).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Copy batches (jobs, events, the spend ledger) from SRC to DST, losing nothing.

    A batch DST already has is never overwritten: the whole copy is refused (exit 2)
    and DST is left as it was. SRC is only read. A password in a URL is shown as ***.
    """
    from batchgen.store.copy import copy_batches, shown

    copied = asyncio.run(copy_batches(src, dst, batch=batch))
    if json_out:
        data = {n: {"jobs": j, "events": e, "ledger": c} for n, (j, e, c) in copied.batches.items()}
        print(json.dumps({"ok": True, "batches": data}, sort_keys=True))
        return
    for name, (jobs, events, charges) in copied.batches.items():
        print(
            f"copied batch {printable(name)}: {jobs} jobs, {events} events, "
            f"{charges} ledger rows -> {printable(shown(dst))}"
        )
