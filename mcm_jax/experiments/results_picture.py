"""Sample pictures across runs: one row per sampler, all from the same noise and labels.

The eval job draws sample i from noise normal(fold_in(PRNGKey(eval.seed), i)) with label
i mod num_classes, whatever the run, so the first images of two runs evaluated with the same seed
start from the same noise (the paper's Fig. 2). The rows come from each setting's samples.npz
(`eval.save_samples`); small images are enlarged by pixel repetition so a person can see them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from etils import epath

from mcm_jax import files, images


def load_samples(run_dir: str | epath.Path, setting: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` uint8 samples and labels of `setting` (e.g. `addim_64steps`) at the
    newest evaluated checkpoint of the run in `run_dir`."""
    paths = sorted(
        epath.Path(run_dir).glob(f"eval/*/step_*/{setting}/samples.npz"),
        key=lambda p: p.parent.parent.name,
    )
    if not paths:
        raise FileNotFoundError(
            f"{run_dir}: no eval/*/step_*/{setting}/samples.npz (evaluate with "
            "--config.eval.save_samples=True)"
        )
    with files.open_npz(paths[-1]) as saved:
        samples, labels = saved["arr_0"], saved["labels"]
    if len(samples) < count:
        raise ValueError(f"{paths[-1]}: {len(samples)} samples, the picture needs {count}")
    return samples[:count], labels[:count]


TEACHER_SETTING = ("addim", 64)  # the teacher's row: its best sampler in the paper's Fig. 2
IMAGES_PER_ROW = 20  # two of each digit


def write_teacher_and_students(
    path: str | epath.Path, root: str | epath.Path, teacher_sweep: tuple[int, ...],
    students: dict[int, str],
) -> None:
    """The picture of a job: the teacher (run `teacher` under `root`) at 64 aDDIM steps, if its
    sweep has them, then one row per student (S -> its run's directory name under `root`)."""
    root = epath.Path(root)
    method, steps = TEACHER_SETTING
    rows = []
    if steps in teacher_sweep:
        images, _ = load_samples(root / "teacher", f"{method}_{steps}steps", IMAGES_PER_ROW)
        rows.append((f"teacher, aDDIM {steps}", images))
    for s, run in students.items():
        images, _ = load_samples(root / run, f"ddim_{s}steps", IMAGES_PER_ROW)
        rows.append((f"CD, {s} step{'s' * (s > 1)}", images))
    write_picture(path, rows)


def write_picture(
    path: str | epath.Path, rows: Sequence[tuple[str, np.ndarray]], *, scale: int = 3
) -> None:
    """A PNG with one labelled row of uint8 NHWC images per (label, images), enlarged `scale`
    times (nearest neighbour)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    grids = [
        np.repeat(np.repeat(images.make_grid(x, columns=len(x)), scale, 0), scale, 1)
        for _, x in rows
    ]
    height, width = grids[0].shape[:2]
    dpi, label_width = 100, 1.4  # inches kept for the row labels
    figure, axes = plt.subplots(
        len(rows), 1, figsize=(width / dpi + label_width, len(rows) * (height / dpi + 0.1)),
        squeeze=False,
    )
    for ax, (label, _), grid in zip(axes[:, 0], rows, grids):
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    figure.subplots_adjust(left=label_width / (width / dpi + label_width), right=1, top=1,
                           bottom=0, hspace=0.1)
    images.save_figure(figure, path, dpi=dpi)
