"""Collects the eval sweeps of several runs into one markdown table.

    python -m mcm_jax.experiments.results_table /tmp/mcm_local

Reads <root>/<run>/eval/<name>/step_<step>/sweep.json (written by the eval job) for every run
directory under root, latest checkpoint step per run, and prints one row per (run, sampler).
"""

from __future__ import annotations

import json
import sys

from etils import epath

METRICS = ("fd_digits", "fid", "class_accuracy")


def collect(root: str, tag: str = "*") -> list[dict]:
    """Rows of the latest evaluated step of every run under `root`, with a `run` field; `tag`:
    the eval sub-directory (eval.name) to read, a glob pattern."""
    rows = []
    for run in sorted(p for p in epath.Path(root).iterdir() if (p / "eval").is_dir()):
        sweeps = sorted(run.glob(f"eval/{tag}/step_*/sweep.json"), key=lambda p: p.parent.name)
        if sweeps:
            rows += [dict(row, run=run.name) for row in json.loads(sweeps[-1].read_text())]
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table: run, sampler, steps, then whichever metrics the rows have."""
    metrics = [m for m in METRICS if any(m in row for row in rows)]
    lines = [
        "| run | sampler | steps | " + " | ".join(metrics) + " |",
        "|---|---|---:|" + "---:|" * len(metrics),
    ]
    for row in rows:
        values = [f"{row[m]:.3f}" if m in row else "" for m in metrics]
        lines.append(f"| {row['run']} | {row['method']} | {row['steps']} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m mcm_jax.experiments.results_table ROOT")
    rows = collect(argv[1])
    if not rows:
        raise SystemExit(f"no eval sweeps under {argv[1]}")
    print(format_table(rows))


if __name__ == "__main__":
    main(sys.argv)
