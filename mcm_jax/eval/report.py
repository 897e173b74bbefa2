"""Eval outputs on disk: metrics JSON, and a step sweep's table (CSV, JSON) and plot (PNG)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from etils import epath

from mcm_jax import images

SWEEP_NAME = "sweep"


def write_json(path: epath.Path, value: object) -> None:
    """Writes `value` as indented JSON, atomically (a partial file is never seen)."""
    partial = path.parent / (path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    partial.replace(path)


def write_sweep(
    directory: epath.Path, rows: Sequence[dict], metric: str | None
) -> list[epath.Path]:
    """sweep.csv, sweep.json and, given a metric, sweep.png (metric against steps, one line per
    sampler and guidance weight) in `directory`; returns their paths."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    paths = [directory / f"{SWEEP_NAME}.csv", directory / f"{SWEEP_NAME}.json"]
    paths[0].write_text(table.getvalue())
    write_json(paths[1], list(rows))
    if metric is not None:
        paths.append(directory / f"{SWEEP_NAME}.png")
        _plot(paths[-1], rows, metric)
    return paths


def _plot(path: epath.Path, rows: Sequence[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lines: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        weight = row["guidance_weight"]
        label = row["method"] + (f", w={weight:g}" if weight else "")
        lines.setdefault(label, []).append((row["steps"], row[metric]))
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for label, points in sorted(lines.items()):
        steps, values = zip(*sorted(points))
        axes.plot(steps, values, marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("sampling steps")
    axes.set_ylabel({"fid": "FID", "fd_digits": "FD-digits"}.get(metric, metric))
    axes.set_title(f"checkpoint step {rows[0]['checkpoint_step']}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    images.save_figure(figure, path, dpi=100)
