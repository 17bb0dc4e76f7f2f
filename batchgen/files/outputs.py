"""No output of any command may write over the records it works from.

The protected files: the state database, its ``-wal``, ``-shm``, ``-journal`` and
``.lock`` files, the manifest and every file the manifest names (values, rows,
images). An output (``export --out``, ``report --out``, ``--summary-file``,
``--log-file``, ``--metrics-file``, ``--report``, the videos and their sidecars) that
leads to one of them, by whatever path, symlink or hard link, is a usage error
(exit 2) found before anything is written.

Two comparisons, because either alone misses a case: the device and inode of files
that exist (a hard link has another path but the same inode), and the fully resolved
path (symlinks followed) for files that may not exist yet, such as the ``-wal`` of a
database that is not open.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from batchgen.errors import Problem, UsageError

#: files SQLite and batchgen's lock keep beside the database
DB_COMPANIONS = ("-wal", "-shm", "-journal", ".lock")
#: names a video, its sidecar or a partial download can take in the output folder
T = TypeVar("T")
_VIDEO_NAME = re.compile(r"\.mp4(\.json|\.part(\.meta)?)?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Protected:
    """The files no output may replace: (what it is, path)."""

    files: tuple[tuple[str, Path], ...]

    @classmethod
    def of(
        cls,
        db: Path | None = None,
        manifest: Path | str | None = None,
        sources: Iterable[Path] = (),
    ) -> Protected:
        files: list[tuple[str, Path]] = []
        if db is not None:
            files.append(("the state database", Path(db)))
            for base in {Path(db).absolute(), _resolve(Path(db))}:
                for suffix in DB_COMPANIONS:
                    what = f"the state database's {suffix.lstrip('-.')} file"
                    files.append((what, base.with_name(base.name + suffix)))
        if manifest:
            files.append(("the manifest", Path(manifest)))
        files.extend(("a file the manifest names", Path(p)) for p in sources)
        return cls(tuple(files))

    def clash(self, path: Path) -> tuple[str, Path] | None:
        """The protected file that writing ``path`` would replace, if any."""
        target = _resolve(path)
        ident = _ident(path)
        for what, protected in self.files:
            if target == _resolve(protected):
                return what, protected
            if ident is not None and ident == _ident(protected):
                return what, protected
        return None

    def in_folder(self, folder: Path) -> list[tuple[str, Path]]:
        """Protected files that a video or sidecar written in ``folder`` could replace."""
        real = _resolve(folder)
        ident = _ident(folder)
        found = []
        for what, protected in self.files:
            target = _resolve(protected)
            if not _VIDEO_NAME.search(target.name) and not _VIDEO_NAME.search(protected.name):
                continue
            parents = {target.parent, _resolve(protected.parent)}
            if real in parents or (ident is not None and ident == _ident(protected.parent)):
                found.append((what, protected))
        return found


def output_problems(
    outputs: Sequence[tuple[str, Path | str | None]], protected: Protected
) -> list[Problem]:
    """A problem for every ``(option, path)`` output that would replace a protected file."""
    problems = []
    for option, path in outputs:
        if path is None or str(path) == "-":
            continue
        hit = protected.clash(Path(path))
        if hit is not None:
            what, target = hit
            problems.append(
                Problem(
                    file=f"{option} {path}",
                    message=f"is {what} ({target}); writing there would destroy it",
                    fix=f"give {option} another file",
                )
            )
    return problems


def folder_problems(folder: Path, protected: Protected, option: str) -> list[Problem]:
    """A problem for each protected file whose name a video or sidecar in ``folder`` could take."""
    return [
        Problem(
            file=str(target),
            message=f"is {what}, in the output folder under a video's name; "
            "a download could replace it",
            fix=f"rename it, or choose another output folder ({option})",
        )
        for what, target in protected.in_folder(folder)
    ]


#: the file outputs of ``run``/``resume``/``retry``: RunOptions field -> option
RUN_FILE_OPTIONS = {
    "log_file": "--log-file",
    "summary_file": "--summary-file",
    "metrics_file": "--metrics-file",
    "report_path": "--report",
}


def safe_options(options: T, protected: Protected) -> tuple[T, list[Problem]]:
    """A copy of the run's ``options`` with every file output that would replace a
    protected file cleared (so nothing is ever written there, not even the summary
    that reports exit 2), and the problems saying why."""
    problems: list[Problem] = []
    for name, option in RUN_FILE_OPTIONS.items():
        found = output_problems([(option, getattr(options, name))], protected)
        if found:
            options = copy.copy(options)
            setattr(options, name, None)
            problems.extend(found)
    return options, problems


def any_exists(options: object) -> bool:
    """Whether any file output of the run's ``options`` exists (or is a link) already."""
    return any(
        os.path.lexists(path)
        for path in (getattr(options, name) for name in RUN_FILE_OPTIONS)
        if path is not None
    )


def drop_writers(observers: list[Any], protected: Protected) -> None:
    """Remove (and close) the observers that would write over a protected file."""
    kept = []
    for obs in observers:
        path = getattr(obs, "path", None)
        if path is not None and protected.clash(Path(path)) is not None:
            close = getattr(obs, "close", None)
            if close is not None:
                close()
            continue
        kept.append(obs)
    observers[:] = kept


def db_problems(db: Path, protected: Protected) -> list[Problem]:
    """The database and the files SQLite and the lock keep beside it are outputs too:
    none may be the manifest or a file it names."""
    files = [("--db", db)] + [
        (f"--db {db} (its {suffix.lstrip('-.')} file)", db.with_name(db.name + suffix))
        for suffix in DB_COMPANIONS
    ]
    return output_problems(files, protected)


def check_outputs(outputs: Sequence[tuple[str, Path | str | None]], protected: Protected) -> None:
    """``output_problems`` as a ``UsageError`` (exit 2), before anything is written."""
    problems = output_problems(outputs, protected)
    if problems:
        raise UsageError(problems)


def _resolve(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


__all__ = [
    "DB_COMPANIONS",
    "Protected",
    "any_exists",
    "check_outputs",
    "db_problems",
    "drop_writers",
    "folder_problems",
    "output_problems",
    "safe_options",
]
