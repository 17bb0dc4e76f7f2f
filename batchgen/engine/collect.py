"""Collecting: bring a succeeded run's files home, with its own concurrency.

Downloads never go through the API limiter; only the refresh of expired URLs (one
GET of the run) does. A job becomes ``succeeded`` only after every file is in place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from batchgen.engine.state import ActiveRun, ApiClient, CollectStep, EngineState
from batchgen.errors import AuthError, Forbidden, RunbaseError, RunNotFound
from batchgen.files import download, media, sidecar
from batchgen.manifest import naming
from batchgen.retry import RetryPolicy
from batchgen.runbase.models import load_model
from batchgen.states import JobState
from batchgen.store import jobs as store
from batchgen.store.schema import Batch, Job

log = logging.getLogger("batchgen.engine")


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
        assert job.id is not None and job.run_id is not None
        run_id = job.run_id

        async def refresh() -> list[str]:
            run = await self.client.get_run(run_id, priority=0)
            act.urls = list(run.urls)
            return act.urls

        try:
            urls = act.urls or await refresh()
            fields = await self.collect(job, urls, refresh)
        except (AuthError, Forbidden) as exc:
            st.stop("account", f"account: {exc}", hard=True)
            return
        except RunNotFound as exc:
            st.downloading.pop(job.id, None)
            st.move(
                job,
                JobState.FAILED,
                finished_at=st.clock.now(),
                last_error=(
                    f"run {run_id} (paid) is gone (404 {exc.code or 'run_not_found'}): "
                    "its video cannot be fetched again; only "
                    "`batchgen retry BATCH --job KEY --pay-again` pays for a new one"
                ),
                error_code=store.OUTPUT_LOST,
            )
            return
        # a file that could not be fetched or written (disk full), a failed refresh: again
        # later. Anything else is an error batchgen does not know: it stops the run (70).
        except (download.DownloadError, RunbaseError, OSError, aiohttp.ClientError) as exc:
            act.dl_errors += 1
            if act.dl_errors >= st.cfg.max_attempts:
                st.downloading.pop(job.id, None)
                discard = getattr(self.collect, "discard", None)
                if discard is not None:
                    discard(job)
                st.move(
                    job,
                    JobState.FAILED,
                    finished_at=st.clock.now(),
                    last_error=f"download failed: {exc}",
                    error_code=store.DOWNLOAD_FAILED,
                )
            else:
                act.urls = []
                act.next_download = st.clock.monotonic() + st.retry.delay(act.dl_errors)
                log.warning("job #%d: download failed (%s); again later", job.idx, exc)
            return
        finally:
            st.downloads.pop(job.id, None)
            st.wake.set()
        st.downloading.pop(job.id, None)
        st.move(job, JobState.SUCCEEDED, finished_at=st.clock.now(), **fields)


def make_collect(
    session: aiohttp.ClientSession,
    batch: Batch,
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

    def stem_of(job: Job) -> str:
        # with the model's defaults, so {resolution} works when the input does not set it
        full = _with_defaults(batch.model, json.loads(job.input_json))
        return naming.output_stem(
            batch.filename_template,
            index=job.idx,
            key=job.key,
            axes=json.loads(job.axes_json or "{}"),
            input=full,
            batch=batch.name,
            variant=job.variant,
        )

    async def collect(
        job: Job, urls: list[str], refresh: Callable[[], Awaitable[list[str]]]
    ) -> dict[str, Any]:
        input_ = json.loads(job.input_json)
        axes = json.loads(job.axes_json or "{}")
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
            known_sha256=json.loads(job.checksums_json or "[]"),
        )
        notes = [f.note for f in saved if f.note]
        rel = [_relative(f.path, root) for f in saved]
        for f, name in zip(saved, rel, strict=True):
            if f.note:  # kept (it was paid for) but never silently: the log, sidecar and DB say so
                log.warning("job #%d: %s is not what was asked: %s", job.idx, name, f.note)
        for f, name in zip(saved, rel, strict=True):
            sidecar.write_sidecar(
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
            "output_paths_json": json.dumps(rel),
            "checksums_json": json.dumps([f.sha256 for f in saved]),
            "media_note": "; ".join(notes) or None,
        }

    def discard(job: Job) -> None:
        download.discard_partials(root, stem_of(job))

    return FileCollector(collect, discard)


class FileCollector:
    """``make_collect``'s result: call it to collect a job; ``discard`` drops its partials."""

    def __init__(
        self,
        collect: CollectStep,
        discard: Callable[[Job], None],
    ) -> None:
        self._collect = collect
        self.discard = discard

    def __call__(
        self, job: Job, urls: list[str], refresh: Callable[[], Awaitable[list[str]]]
    ) -> Awaitable[dict[str, Any]]:
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
