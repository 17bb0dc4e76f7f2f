"""The API's run record (``batchgen.runbase.answers.Run``) as the engine's fake clients
answer it, so every fake speaks the real client's type."""

from __future__ import annotations

from batchgen.runbase.answers import Run

MODEL = "bytedance/seedance-1-pro"


def api_run(
    run_id: str,
    status: str,
    cost_micro_usd: int | None,
    urls: list[str],
    created_at: str | None,
    completed_at: str | None = None,
) -> Run:
    return Run(
        id=run_id,
        model=MODEL,
        status=status,
        cost_micro_usd=cost_micro_usd,
        urls=urls,
        created_at=created_at,
        completed_at=completed_at,
    )
