"""No output of any command may write over the records it works from.

The protected files: the state database, its ``-wal``, ``-shm``, ``-journal`` and
``.lock`` files, the manifest and every file the manifest names (values, rows,
images), and the batch's own outputs: its videos, their sidecars and partial
downloads. An output (``export --out``, ``report --out``, ``--summary-file``,
``--log-file``, ``--metrics-file``, ``--report``, the videos and their sidecars) that
leads to one of them, by whatever path, symlink or hard link, is a usage error
(exit 2) found before anything is written.

The batch's outputs are protected by a folder rule, not a list: any file in the
batch's output folder (``out_dirs``) whose name is a video's, a sidecar's or a partial
download's (``*.mp4``, ``*.mp4.json``, ``.*.mp4.part``, ``.*.mp4.part.meta``). Every
file a job records is such a file (stems never hold a separator, so they all sit
directly in the folder), and so is every file a later download will write, so the
rule also covers videos not fetched yet and those of another batch sharing the
folder; it costs two ``realpath`` calls, never a look at a million job rows. The whole
folder is not protected: ``report.html`` lives there by default, and a log or summary
beside the videos harms nothing. A hard link elsewhere to one of those files is found
by one ``scandir`` of the folder (inode numbers come with the listing), and only when
the output already exists with more than one link.

Two comparisons, because either alone misses a case: the device and inode of files
that exist (a hard link has another path but the same inode), and the fully resolved
path (symlinks followed) for files that may not exist yet, such as the ``-wal`` of a
database that is not open.
"""

from __future__ import annotations

import copy
import os
import re
import stat
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
    #: the batch's output folders: their videos, sidecars and partial downloads
    out_dirs: tuple[Path, ...] = ()

    @classmethod
    def of(
        cls,
        db: Path | None = None,
        manifest: Path | str | None = None,
        sources: Iterable[Path] = (),
        out_dirs: Iterable[Path | str | None] = (),
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
        folders = tuple(dict.fromkeys(Path(d) for d in out_dirs if d))
        return cls(tuple(files), folders)

    def clash(self, path: Path) -> tuple[str, Path] | None:
        """The protected file that writing ``path`` would replace, if any."""
        target = _resolve(path)
        ident = _ident(path)
        for what, protected in self.files:
            if target == _resolve(protected):
                return what, protected
            if ident is not None and ident == _ident(protected):
                return what, protected
        return self._batch_output(Path(path), target)

    def _batch_output(self, path: Path, target: Path) -> tuple[str, Path] | None:
        """The batch's video, sidecar or partial download that ``path`` leads to."""
        if not self.out_dirs:
            return None
        # the path as written (an atomic write replaces a symlink there, the video's
        # name) and the file it leads to (an append writes through the link)
        for candidate in dict.fromkeys((Path(os.path.abspath(path)), target)):
            what = _output_kind(candidate.name)
            if what is not None and any(_same_dir(candidate.parent, d) for d in self.out_dirs):
                return what, candidate
        return self._linked_output(path)

    def _linked_output(self, path: Path) -> tuple[str, Path] | None:
        """A hard link ``path`` to one of the batch's outputs, found by inode: only an
        existing regular file with more than one link can be one."""
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return None
        for folder in self.out_dirs:
            try:
                if os.stat(folder).st_dev != st.st_dev:  # a hard link never crosses devices
                    continue
                with os.scandir(folder) as entries:
                    for entry in entries:
                        what = _output_kind(entry.name)
                        # the listing's inode first (free), then one stat to be sure
                        if what is None or entry.inode() != st.st_ino:
                            continue
                        if _ident(Path(entry.path)) == (st.st_dev, st.st_ino):
                            return what, Path(entry.path)
            except OSError:
                continue
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
    """Remove (and close, or discard: a log file its opening made goes again) the
    observers that would write over a protected file."""
    kept = []
    for obs in observers:
        path = getattr(obs, "path", None)
        if path is not None and protected.clash(Path(path)) is not None:
            close = getattr(obs, "discard", None) or getattr(obs, "close", None)
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


def _output_kind(name: str) -> str | None:
    """What a file of this name in the output folder is, if one of the batch's outputs."""
    found = _VIDEO_NAME.search(name)
    if found is None:
        return None
    tail = found.group(1)
    if tail is None:
        return "one of the batch's videos"
    if tail.lower() == ".json":
        return "the sidecar of one of the batch's videos"
    return "a partial download of one of the batch's videos"


def _same_dir(a: Path, b: Path) -> bool:
    if _resolve(a) == _resolve(b):
        return True
    ident = _ident(a)
    return ident is not None and ident == _ident(b)


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
