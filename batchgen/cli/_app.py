"""The Typer application and the options every command shares."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from batchgen.errors import UsageError
from batchgen.redact import RedactingFormatter
from batchgen.runbase.ratelimit import rate_from_text
from batchgen.settings import MAX_BUDGET_USD, MAX_SECONDS, amount_problem
from batchgen.store.reader import DEFAULT_DB
from batchgen.textsafe import printable_lines

app = typer.Typer(
    name="batchgen",
    help=(
        "Turn a YAML manifest into paid video generations on the Runbase runs API, "
        "and bring every video home.\n\n"
        "Example: batchgen plan manifests/example.yaml && batchgen run manifests/example.yaml"
    ),
    no_args_is_help=True,
    add_completion=False,
    # Locals in tracebacks could hold the API key: never show them.
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: the --db of the command being run, so that its failure can name the database (a
#: PostgreSQL URL's password masked: store.failures)
used_db: list[Path] = []


def _remember_db(path: Path) -> Path:
    # a postgresql:// URL arrives as a Path ("postgresql:/u@h/db"): store.target.postgres_url
    # gives it back; a command that cannot use PostgreSQL yet refuses it itself
    used_db[:] = [path]
    return path


DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        envvar="BATCHGEN_DB",
        callback=_remember_db,
        help=f"State database: a SQLite file or a postgresql:// URL. Default ./{DEFAULT_DB}, "
        "or $BATCHGEN_DB.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON object on stdout.")
]


class Command(TyperCommand):
    """Every batchgen command: ``MANIFEST`` / ``[BATCH]`` on the usage line (Typer writes
    ``{manifest}``), and a bad choice said plainly ("--format must be csv or jsonl")
    instead of the coercion library's "Value error, 'xml' is not one of ...".
    ``batchgen.cli`` sets it on every registered command."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as exc:
            raise _plain(exc) from None


#: pydantic's error types (Typer coerces with it) -> what to say instead
_PLAIN = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "greater_than_equal": "must be at least {ge:g}",
    "greater_than": "must be more than {gt:g}",
    "less_than_equal": "must be at most {le:g}",
    "less_than": "must be less than {lt:g}",
}


def _plain(exc: typer.BadParameter) -> typer.BadParameter:
    """The same error in words: "--format must be csv or jsonl (not 'xml')"."""
    param = exc.param
    if param is None:
        return exc
    errors = getattr(exc.__cause__, "errors", None)  # pydantic's ValidationError
    first: dict[str, Any] = errors()[0] if callable(errors) and errors() else {}
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and desc.is_choice:
        names = [str(getattr(c, "value", c)) for c in desc.choices or ()]
        allowed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)
        said = f"must be {allowed}"
    elif first.get("type") in _PLAIN:
        said = _PLAIN[first["type"]].format(**first.get("ctx", {}))
    else:
        exc.message = exc.message.removeprefix("Value error, ")
        return exc
    if isinstance(param, TyperOption):
        hint = (param.opts or [param.name or ""])[0]
    else:
        hint = (param.name or "").upper()
    given = first.get("input")
    got = f" (not {given!r})" if isinstance(given, str) else ""
    plain = typer.BadParameter(f"{hint} {said}{got}", ctx=exc.ctx, param=param)
    plain.format_message = lambda: plain.message  # type: ignore[method-assign]
    return plain


def is_terminal() -> bool:
    """Colour, progress bars and prompts only for a person at a terminal."""
    return sys.stderr.isatty() and os.environ.get("TERM", "dumb") != "dumb"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("batchgen")
        except PackageNotFoundError:  # run from a checkout that was never installed
            from batchgen import __version__ as number
        print(f"batchgen {number}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
    quiet: Annotated[int, typer.Option("-q", "--quiet", count=True, help="Fewer logs.")] = 0,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            help=f"State database for the command that follows (its own --db wins). "
            f"Default ./{DEFAULT_DB}, or $BATCHGEN_DB.",
            show_default=False,
        ),
    ] = None,
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if db is not None:
        # the commands read --db with $BATCHGEN_DB as its fallback: `batchgen --db X
        # status` then beats the environment, and `status --db Y` still beats both
        os.environ["BATCHGEN_DB"] = str(db)
    level = logging.INFO - 10 * verbose + 10 * quiet
    # every line (tracebacks too) hides URL passwords and key-like strings
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _PrintableFormatter(
            RedactingFormatter(
                "%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"
            )
        )
    )
    logging.basicConfig(level=max(logging.DEBUG, min(logging.CRITICAL, level)), handlers=[handler])


def finite_option(param: typer.CallbackParam, value: float | None) -> float | None:
    """``--budget-usd`` (USD), ``--max-runtime`` and ``--wait-lock`` (seconds): finite
    and in range (``inf`` and ``nan`` parse as floats). Exit 2, nothing stored."""
    name = (param.opts or ["--budget-usd"])[0]
    usd = name == "--budget-usd"
    problem = amount_problem(
        name,
        value,
        maximum=MAX_BUDGET_USD if usd else MAX_SECONDS,
        example="25" if usd else "3600",
    )
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


class _PrintableFormatter(logging.Formatter):
    """Log lines with every control character escaped (batchgen.textsafe): a logged
    batch name, prompt or API message cannot drive the terminal."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return printable_lines(self.inner.format(record))


def parse_rate(text: str | None) -> tuple[int, float] | None:
    """``20/10s``, ``20/10``, ``2/1s`` -> (requests, seconds)."""
    if text is None:
        return None
    rate = rate_from_text(text)
    if rate is None:
        raise UsageError(f"--rate {text!r}: expected REQUESTS/SECONDS, e.g. 20/10s")
    return rate


def parse_date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--date {text!r}: expected YYYY-MM-DD") from None
