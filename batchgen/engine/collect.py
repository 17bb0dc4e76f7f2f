"""Collecting: bring a succeeded run's files home, with its own concurrency.

Downloads never go through the API limiter; only the refresh of expired URLs (one
GET of the run) does. A job becomes ``succeeded`` only after every file is in place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from batchgen.engine.keys import ApiClient
from batchgen.engine.state import ActiveRun, CollectStep, EngineState
from batchgen.errors import RunbaseError, RunNotFound
from batchgen.files import download, media, sidecar
from batchgen.manifest import naming
from batchgen.retry import Action, Attempt, RetryPolicy, Stage, decide
from batchgen.runbase.models import load_model
from batchgen.runbase.transport import transport_error
from batchgen.states import JobState
from batchgen.store.records import (
    DOWNLOAD_FAILED,
    OUTPUT_LOST,
    BatchRecord,
    JobChanges,
    JobRecord,
)

log = logging.getLogger("batchgen.engine")


class _Unfollowed(Exception):
    """A link refresh no key given may make (its key is gone or refused): held."""


class Collector:
    """Owns ``EngineState.downloads``: brings home the runs the poller left in
    ``EngineState.downloading``, at most ``download_concurrency`` at a time."""

    def __init__(self, state: EngineState, client: ApiClient, collect: CollectStep) -> None:
        self.state = state
        #: only for a refresh of expired URLs (one GET of the run)
        self.client = client
        #: fetches, checks and writes one job's files (``make_collect`` in the product)
        self.collect = collect

    def launch_downloads(self, now: float) -> None:
        st = self.state
        if st.leaving:
            return
        for job_id, act in st.downloading.items():
            if len(st.downloads) >= st.cfg.download_concurrency:
                return
            if job_id not in st.downloads and act.next_download <= now:
                st.downloads[job_id] = st.spawn(self._download(act))

    async def _download(self, act: ActiveRun) -> None:
        st = self.state
        job = act.job
        assert job.run_id is not None
        run_id = job.run_id

        # fresh links come from the key that made the run (its run is not visible to others)
        key, why = st.keys.follow(job)
        client = key.client if key is not None else self.client

        async def refresh() -> list[str]:
            if key is None:  # another key would answer 404: the paid run is held instead
                raise _Unfollowed(why)
            run = await client.get_run(run_id, priority=0)
            act.urls = list(run.urls)
            return act.urls

        try:
            try:
                urls = act.urls or await refresh()
                fields = await self.collect(job, urls, refresh)
            except _Unfollowed as exc:
                st.downloading.pop(job.id, None)
                st.keys.strand(job, str(exc))
                return
            # a file that could not be fetched or written (disk full), a failed refresh:
            # decide() says. Anything else is an error batchgen does not know: exit 70.
            except (download.DownloadError, RunbaseError, OSError, aiohttp.ClientError) as exc:
                await self._failed(act, exc)
                return
            st.downloading.pop(job.id, None)
            done: JobChanges = {**fields, "finished_at": st.clock.now()}
            await st.move(job, JobState.SUCCEEDED, **done)
        finally:
            st.downloads.pop(job.id, None)
            st.wake.set()

    async def _failed(self, act: ActiveRun, exc: BaseException) -> None:
        st = self.state
        job = act.job
        if isinstance(exc, aiohttp.ClientError):  # a collect step that does its own fetching
            exc = transport_error(exc, what="download")
        decision = decide(exc, Attempt(failures=act.dl_errors), Stage.DOWNLOAD, st.retry)
        key = st.keys.for_job(job)

        def strand(why: str) -> None:  # its key was refused (401) while refreshing links
            st.downloading.pop(job.id, None)
            st.keys.strand(job, why)

        answer = st.account_answer(decision, key, exc, strand)
        if answer is None:
            return
        decision = answer
        if decision.counted:
            act.dl_errors += 1
        if decision.action is not Action.FAIL_JOB:
            act.urls = []  # fresh links on the next try
            act.next_download = st.clock.monotonic() + decision.delay_s
            log.warning("job #%d: download failed (%s); again later", job.idx, exc)
            return
        st.downloading.pop(job.id, None)
        if isinstance(exc, RunNotFound):
            error = (
                f"run {job.run_id} (paid) is gone (404 {exc.code or 'run_not_found'}): "
                "its video cannot be fetched again; only "
                "`batchgen retry BATCH --job KEY --pay-again` pays for a new one"
            )
            code = OUTPUT_LOST
        else:
            discard = getattr(self.collect, "discard", None)
            if discard is not None:
                discard(job)
            error, code = f"download failed: {exc}", DOWNLOAD_FAILED
        now = st.clock.now()
        await st.move(job, JobState.FAILED, finished_at=now, last_error=error, error_code=code)


def make_collect(
    session: aiohttp.ClientSession,
    batch: BatchRecord,
    *,
    out_dir: Path | None = None,
    clock_now: Callable[[], float] | None = None,
    retry: RetryPolicy | None = None,
) -> FileCollector:
    """The engine's ``collect`` step: fetch every output, write sidecars, return the fields.

    Files go to ``out_dir`` (default: the batch's), named by the batch's filename
    template; the paths recorded are relative to that folder.
    """
    root = Path(out_dir or batch.out_dir)
    now = clock_now or time.time

    def stem_of(job: JobRecord) -> str:
        # with the model's defaults, so {resolution} works when the input does not set it
        full = _with_defaults(batch.model, dict(job.input))
        return naming.output_stem(
            batch.filename_template,
            index=job.idx,
            key=job.key,
            axes=dict(job.axes),
            input=full,
            batch=batch.name,
            variant=job.variant,
        )

    async def collect(
        job: JobRecord, urls: list[str], refresh: Callable[[], Awaitable[list[str]]]
    ) -> JobChanges:
        input_ = dict(job.input)
        axes = dict(job.axes)
        full = _with_defaults(batch.model, input_)
        stem = stem_of(job)
        expect = media.Expectation(
            aspect_ratio=str(full.get("aspect_ratio", "")),
            duration_s=float(full.get("duration", 0) or 0),
            resolution=str(full.get("resolution", "")),
        )
        root.mkdir(parents=True, exist_ok=True)
        saved = await download.fetch_outputs(
            session,
            urls,
            root,
            stem,
            refresh_urls=refresh,
            expect=expect,
            retry=retry,
            # a repair after the files were damaged keeps a video that is still intact
            known_sha256=list(job.checksums),
        )
        notes = [f.note for f in saved if f.note]
        rel = [_relative(f.path, root) for f in saved]
        for f, name in zip(saved, rel, strict=True):
            if f.note:  # kept (it was paid for) but never silently: the log, sidecar and DB say so
                log.warning("job #%d: %s is not what was asked: %s", job.idx, name, f.note)
        for f, name in zip(saved, rel, strict=True):
            # in a thread: its fsyncs (file and folder, ~1 ms each here) would stall the
            # loop, and with it every key's POSTs and polls (16 keys: ~160 files a second)
            await asyncio.to_thread(
                sidecar.write_sidecar,
                f.path,
                {
                    "batch": batch.name,
                    "model": batch.model,
                    "key": job.key,
                    "index": job.idx,
                    "variant": job.variant,
                    "prompt": input_.get("prompt"),
                    "input": input_,
                    "axes": axes,
                    "run_id": job.run_id,
                    "attempts": job.attempts,
                    "cost_usd": job.cost_micro_usd / 1_000_000,
                    "cost_micro_usd": job.cost_micro_usd,
                    "timings": {
                        "submitted_at": job.submitted_at,
                        "run_created_at": job.run_created_at,
                        "run_completed_at": job.run_completed_at,
                        "downloaded_at": now(),
                    },
                    "file": name,
                    "sha256": f.sha256,
                    "size": f.size,
                    "media": {
                        "codec": f.media.codec,
                        "width": f.media.width,
                        "height": f.media.height,
                        "duration_s": f.media.duration_s,
                        "frames": f.media.frames,
                    },
                    "media_note": f.note,
                },
            )
        return {
            "output_paths": tuple(rel),
            "checksums": tuple(f.sha256 for f in saved),
            "media_note": "; ".join(notes) or None,
        }

    def discard(job: JobRecord) -> None:
        download.discard_partials(root, stem_of(job))

    return FileCollector(collect, discard)


class FileCollector:
    """``make_collect``'s result: call it to collect a job; ``discard`` drops its partials."""

    def __init__(
        self,
        collect: CollectStep,
        discard: Callable[[JobRecord], None],
    ) -> None:
        self._collect = collect
        self.discard = discard

    def __call__(
        self, job: JobRecord, urls: list[str], refresh: Callable[[], Awaitable[list[str]]]
    ) -> Awaitable[JobChanges]:
        return self._collect(job, urls, refresh)


def _with_defaults(model: str, input_: dict[str, Any]) -> dict[str, Any]:
    try:
        return load_model(model).with_defaults(input_)
    except KeyError:
        return input_


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
