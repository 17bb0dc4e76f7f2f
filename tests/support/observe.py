"""Reading what batchgen reports on the side: the Prometheus textfile, progress snapshots, the
summary trail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from batchgen.observe.progress import Snapshot

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


_LINE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$")


_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_prom(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)]; fails on anything the textfile collector would reject."""
    assert text.endswith("\n")
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    helped: set[str] = set()
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helped, f"second HELP for {name}"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter") and name not in typed
            typed[name] = kind
            continue
        m = _LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, body = m.group(1), m.group(3) or ""
        assert name in typed and name in helped, f"{name} has no TYPE/HELP before it"
        labels: dict[str, str] = {}
        pos = 0
        while pos < len(body):
            pm = _PAIR.match(body, pos)
            assert pm, f"bad labels in {line!r}"
            value = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), pm[2])
            labels[pm.group(1)] = value
            pos = pm.end()
        families.setdefault(name, []).append((labels, float(m.group(4))))
    return families


def value(fams: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in fams[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, fams.get(name))
    return found[0]


def snap(**kw) -> Snapshot:
    base = dict(
        batch="nightly\x1b[31m-2024",
        counts={"queued": 3, "running": 2, "succeeded": 5, "failed": 0},
        requests_per_s=1.9,
        limit_per_s=2.0,
        requests=42,
        spend_micro_usd=2_420_000,
        budget_micro_usd=10_000_000,
        elapsed_s=65,
        eta_s=130,
    )
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def trail(folder: Path) -> tuple[str, ...]:
    return (
        "--log-file", str(folder / "run.jsonl"),
        "--summary-file", str(folder / "summary.json"),
        "--metrics-file", str(folder / "batchgen.prom"),
    )  # fmt: skip


def read_trail(
    folder: Path,
) -> tuple[dict[str, object], dict[str, list[tuple[dict[str, str], float]]]]:
    summary = json.loads((folder / "summary.json").read_text())
    return summary, parse_prom((folder / "batchgen.prom").read_text())
