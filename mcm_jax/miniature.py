"""The paper's experiments in miniature, on the bundled digits: tables, a plot and a picture.

    python -m mcm_jax.miniature --workdir=/tmp/mcm_miniature --out=docs [--scale=cpu|gpu]

One teacher, then (the paper's numbering):
- Table 1: CT and CD students for S = 1, 2, 4, 8, 16 sampling steps, several seeds each;
- Fig. 3: the teacher's DDIM and aDDIM at 1 to 128 steps;
- Table 2: CD with teacher steps annealed over the run vs constant at three values;
- Table 4: CD from a DDIM teacher step (xvar_frac = 0) vs an aDDIM one;
- the consistency loss in v-space vs (SNR + 1)-weighted x-space (`mcm.weighting`).
Writes <out>/miniature.md (tables, a paragraph per claim with its numbers, the command, commit,
machine and time), <out>/miniature_fd_steps.png and <out>/miniature_samples.png. Every run is a
workdir under --workdir; rerunning reuses finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from etils import epath

from mcm_jax import (
    digits_runs, images, main_job, paths, progress, results_picture, results_table,
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the miniature is."""

    model: str
    teacher_steps: int
    student_steps: int
    samples: int
    seeds: int = 3
    teacher_lr_decay: str = "cosine"  # the teacher's learning rate: constant | cosine (to 0)
    student_sampling_steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    teacher_sweep: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    ablation_sampling_steps: int = 4  # S of the Table 2, Table 4 and loss runs
    teacher_steps_annealed: tuple[int, int] = (64, 256)  # digits' 64 -> 1280
    teacher_steps_constant: tuple[int, ...] = (64, 128, 256)


SCALES = {
    # About 1 h 15 min on 2 CPU cores.
    "cpu": Scale(model="digits", teacher_steps=5000, student_steps=100, samples=512),
    # For one accelerator: longer training, more samples.
    "gpu": Scale(model="digits", teacher_steps=40_000, student_steps=2000, samples=10_000),
}

METHODS = ("ct", "cd")


def _student(workdir, scale, method, s, seed=0, **overrides):
    return digits_runs.student_config(
        workdir, str(epath.Path(workdir) / "teacher"), method=method, sampling_steps=s,
        model=scale.model, steps=scale.student_steps, samples=scale.samples, seed=seed,
        overrides={
            "mcm.teacher_steps_start": scale.teacher_steps_annealed[0],
            "mcm.teacher_steps_end": scale.teacher_steps_annealed[1],
            **overrides,
        },
    )


def table1_name(method: str, s: int, seed: int) -> str:
    return f"{method}_s{s}_seed{seed}"


def runs(workdir: str, scale: Scale) -> list[digits_runs.Run]:
    """Every run of the miniature, the teacher first."""
    teacher = digits_runs.teacher_config(
        workdir, model=scale.model, steps=scale.teacher_steps, samples=scale.samples,
        sweep_steps=scale.teacher_sweep, overrides={"optimizer.decay": scale.teacher_lr_decay},
    )
    result = [digits_runs.Run("teacher", teacher)]
    for seed in range(scale.seeds):
        for method in METHODS:
            for s in scale.student_sampling_steps:
                result.append(digits_runs.Run(
                    table1_name(method, s, seed), _student(workdir, scale, method, s, seed)
                ))
    s = scale.ablation_sampling_steps
    for n in scale.teacher_steps_constant:
        result.append(digits_runs.Run(f"cd_s{s}_constant{n}", _student(
            workdir, scale, "cd", s,
            **{"mcm.teacher_steps_start": n, "mcm.teacher_steps_end": n},
        )))
    result.append(digits_runs.Run(f"cd_s{s}_ddim_teacher", _student(
        workdir, scale, "cd", s, **{"mcm.xvar_frac": 0.0}
    )))
    result.append(digits_runs.Run(f"cd_s{s}_snr_plus_one", _student(
        workdir, scale, "cd", s, **{"mcm.weighting": "snr_plus_one"}
    )))
    return result


# ----------------------------------------------------------------------------------------------
# The report: numbers from the runs' eval sweeps, nothing else.


def _scores(workdir: str) -> dict[str, list[dict]]:
    by_run: dict[str, list[dict]] = {}
    for row in results_table.collect(workdir):
        by_run.setdefault(row["run"], []).append(row)
    return by_run


def _one(by_run: dict, run: str, metric: str = "fd_digits") -> float:
    (row,) = by_run[run]  # a student's sweep is its own sampler
    return float(row[metric])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _fmt(mean: float, sd: float | None = None) -> str:
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"


def summarize(workdir: str, scale: Scale) -> dict:
    """The miniature's numbers: Table 1 means and sds, the teacher's sweep, the ablations."""
    by_run = _scores(workdir)
    seeds = range(scale.seeds)
    table1 = {
        (method, s): {
            metric: _mean_sd([_one(by_run, table1_name(method, s, k), metric) for k in seeds])
            for metric in ("fd_digits", "class_accuracy")
        }
        for method in METHODS for s in scale.student_sampling_steps
    }
    teacher = {
        (row["method"], row["steps"]): (row["fd_digits"], row["class_accuracy"])
        for row in by_run["teacher"]
    }
    s = scale.ablation_sampling_steps
    reference = table1_name("cd", s, 0)
    return {
        "table1": table1,
        "teacher": teacher,
        "annealed": _one(by_run, reference),
        "constant": {n: _one(by_run, f"cd_s{s}_constant{n}") for n in scale.teacher_steps_constant},
        "ddim_teacher": _one(by_run, f"cd_s{s}_ddim_teacher"),
        "addim_teacher": _one(by_run, reference),
        "v_loss": _one(by_run, reference),
        "snr_plus_one": _one(by_run, f"cd_s{s}_snr_plus_one"),
        "seed_sd": table1[("cd", s)]["fd_digits"][1],
    }


def _best_teacher(summary: dict) -> tuple[tuple[str, int], tuple[float, float]]:
    return min(summary["teacher"].items(), key=lambda item: item[1][0])


def plot_fd_against_steps(path: epath.Path, summary: dict, scale: Scale) -> None:
    """FD-digits against sampling steps: CT and CD (mean ± sd over seeds) and the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for sampler in ("ddim", "addim"):
        points = sorted((n, fd) for (m, n), (fd, _) in summary["teacher"].items() if m == sampler)
        axes.plot(*zip(*points), linestyle="--", marker=".", label=f"teacher, {sampler.upper()}")
    for method in METHODS:
        steps = scale.student_sampling_steps
        means = [summary["table1"][(method, s)]["fd_digits"][0] for s in steps]
        sds = [summary["table1"][(method, s)]["fd_digits"][1] for s in steps]
        axes.errorbar(steps, means, yerr=sds, marker="o", capsize=3, label=f"MCM {method.upper()}")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("sampling steps")
    axes.set_ylabel("FD-digits (lower is better)")
    axes.grid(True, alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    images.save_figure(figure, path, dpi=110)


def write_samples_picture(path: epath.Path, workdir: str, scale: Scale) -> None:
    """The teacher at 64 aDDIM steps and the seed-0 CD students, from the same noise and labels."""
    root = epath.Path(workdir)
    count = main_job.PICTURE_IMAGES
    rows = []
    if 64 in scale.teacher_sweep:
        rows.append(("teacher, ADDIM 64",
                     results_picture.load_samples(root / "teacher", "addim_64steps", count)[0]))
    for s in scale.student_sampling_steps:
        images, _ = results_picture.load_samples(
            root / table1_name("cd", s, 0), f"ddim_{s}steps", count
        )
        rows.append((f"CD, {s} step{'s' * (s > 1)}", images))
    results_picture.write_picture(path, rows)


def _verdict(agrees: bool) -> str:
    return "**Agrees.**" if agrees else "**Does not agree.**"


def claims(summary: dict, scale: Scale) -> list[str]:
    """One paragraph per paper claim, with the numbers that decide it."""
    t1, sd = summary["table1"], summary["seed_sd"]
    steps = scale.student_sampling_steps
    fd = {m: [t1[(m, s)]["fd_digits"][0] for s in steps] for m in METHODS}
    monotone = all(a >= b for m in METHODS for a, b in zip(fd[m], fd[m][1:]))
    cd_better = [s for s in steps if t1[("cd", s)]["fd_digits"][0] < t1[("ct", s)]["fd_digits"][0]]
    (best_sampler, best_steps), (best_fd, _) = _best_teacher(summary)
    teacher = summary["teacher"]
    low = [n for n in scale.teacher_sweep if n <= 8 and ("addim", n) in teacher]
    addim_wins = [n for n in low if teacher[("addim", n)][0] < teacher[("ddim", n)][0]]
    s = scale.ablation_sampling_steps
    constants = summary["constant"]
    best_constant = min(constants, key=constants.get)
    paragraphs = [
        "**Table 1: more student steps close the gap to the teacher.** The paper's MCMs improve "
        "monotonically from 1 to 8 (16) steps and approach the teacher. Here CD goes "
        + " → ".join(f"{v:.2f}" for v in fd["cd"]) + " and CT "
        + " → ".join(f"{v:.2f}" for v in fd["ct"])
        + f" (S = {', '.join(map(str, steps))}); the teacher's best sampler "
        f"({best_sampler.upper()}, {best_steps} steps) scores {best_fd:.2f}. "
        + _verdict(monotone)
        + ("" if monotone else " The means are not monotone in S; see the seed sds in the table."),
        "**Table 1: distillation beats training from data at equal steps.** In the paper CD is "
        f"ahead of CT at low step counts. Here CD is lower at S = "
        f"{', '.join(map(str, cd_better)) or 'none'} of {', '.join(map(str, steps))}. "
        + _verdict(len(cd_better) * 2 > len(steps)),
        "**Fig. 3: aDDIM beats DDIM at few teacher steps.** At "
        + ", ".join(
            f"{n} step{'s' * (n > 1)} {teacher[('addim', n)][0]:.2f} vs {teacher[('ddim', n)][0]:.2f}"
            for n in low
        )
        + f" (aDDIM vs DDIM), aDDIM is better at {len(addim_wins)} of {len(low)}. "
        + _verdict(len(addim_wins) * 2 > len(low)),
        f"**Table 2: annealing the teacher's steps beats a constant number.** CD S = {s}: "
        f"annealed {scale.teacher_steps_annealed[0]} → {scale.teacher_steps_annealed[1]} "
        f"{summary['annealed']:.2f}; constant "
        + ", ".join(f"{n}: {v:.2f}" for n, v in constants.items())
        + f" (one seed each; Table 1's seed sd at this S is {sd:.2f}). "
        + _verdict(summary["annealed"] <= constants[best_constant]),
        f"**Table 4: an aDDIM teacher step distils better than a DDIM one.** CD S = {s}: aDDIM "
        f"(xvar_frac 0.75) {summary['addim_teacher']:.2f}, DDIM (xvar_frac 0) "
        f"{summary['ddim_teacher']:.2f} (seed sd {sd:.2f}). "
        + _verdict(summary["addim_teacher"] < summary["ddim_teacher"]),
        f"**Loss: v-space vs (SNR + 1)-weighted x-space.** The paper calls its loss the v-loss, "
        f"\"equivalent to SNR + 1 weighting\"; with a pseudo-Huber distance the two differ. CD "
        f"S = {s}: v-space {summary['v_loss']:.2f}, (SNR + 1) x-space "
        f"{summary['snr_plus_one']:.2f} (seed sd {sd:.2f}). The paper states no preference "
        "between them; " + (
            "the difference is within the seed spread."
            if abs(summary["v_loss"] - summary["snr_plus_one"]) <= 2 * sd
            else f"here {'v-space' if summary['v_loss'] < summary['snr_plus_one'] else '(SNR + 1) x-space'} is clearly better."
        ),
    ]
    return paragraphs


def report(summary: dict, scale: Scale, meta: dict) -> str:
    """docs/miniature.md."""
    s = scale.ablation_sampling_steps
    (best_sampler, best_steps), (best_fd, best_acc) = _best_teacher(summary)
    lines = [
        "# The paper's experiments in miniature (digits)",
        "",
        "Made by one run of",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"at commit `{meta['commit']}` on {meta['machine']}, {meta['duration']} in all. Every "
        "number below comes from that run (FD-digits: Fréchet distance in the features of the "
        "project's digits classifier against the test split, real digits 1.8; class accuracy: how "
        "often the classifier reads the requested digit). "
        f"The teacher: UViT `{scale.model}`, {scale.teacher_steps} steps at batch 128 "
        f"(learning rate {scale.teacher_lr_decay}); its best "
        f"sampler ({best_sampler.upper()}, {best_steps} steps) reaches FD-digits {best_fd:.2f} and "
        f"class accuracy {best_acc:.3f}. Students: {scale.student_steps} steps each from the "
        f"teacher's weights, teacher steps annealed {scale.teacher_steps_annealed[0]} → "
        f"{scale.teacher_steps_annealed[1]} over the run; every sampler scored on "
        f"{scale.samples} samples.",
        "",
        "![samples](miniature_samples.png)",
        "",
        "Rows: the teacher at 64 aDDIM steps, then CD students (seed 0) at S = "
        + ", ".join(map(str, scale.student_sampling_steps))
        + "; every row starts from the same noise and labels.",
        "",
        f"## Table 1: FD-digits (class accuracy), mean ± sd over {scale.seeds} seeds",
        "",
        "| S | CT | CD |",
        "|---:|---:|---:|",
    ]
    for steps in scale.student_sampling_steps:
        cells = []
        for method in METHODS:
            result = summary["table1"][(method, steps)]
            cells.append(
                f"{_fmt(*result['fd_digits'])} ({_fmt(*result['class_accuracy'])})"
            )
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Fig. 3: the teacher's samplers",
        "",
        "![FD-digits against sampling steps](miniature_fd_steps.png)",
        "",
        "| steps | DDIM FD-digits | aDDIM FD-digits | DDIM class acc. | aDDIM class acc. |",
        "|---:|---:|---:|---:|---:|",
    ]
    teacher = summary["teacher"]
    for n in scale.teacher_sweep:
        (d_fd, d_acc), (a_fd, a_acc) = teacher[("ddim", n)], teacher[("addim", n)]
        lines.append(f"| {n} | {d_fd:.2f} | {a_fd:.2f} | {d_acc:.3f} | {a_acc:.3f} |")
    lines += [
        "",
        f"## Table 2, Table 4 and the loss: CD S = {s}, FD-digits (one seed)",
        "",
        "| run | FD-digits |",
        "|---|---:|",
        f"| teacher steps annealed {scale.teacher_steps_annealed[0]} → "
        f"{scale.teacher_steps_annealed[1]} (aDDIM teacher, v-space loss) | "
        f"{summary['annealed']:.2f} |",
    ]
    lines += [f"| teacher steps constant {n} | {v:.2f} |" for n, v in summary["constant"].items()]
    lines += [
        f"| DDIM teacher step (xvar_frac 0) | {summary['ddim_teacher']:.2f} |",
        f"| (SNR + 1)-weighted x-space loss | {summary['snr_plus_one']:.2f} |",
        "",
        f"Table 1's sd over seeds at CD S = {s}: {summary['seed_sd']:.2f}.",
        "",
        "## The paper's claims, in miniature",
        "",
    ]
    for paragraph in claims(summary, scale):
        lines += [paragraph, ""]
    return "\n".join(lines)


def _commit() -> str:
    root = epath.Path(__file__).parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{len(os.sched_getaffinity(0))} CPU cores ({model})"


def write_outputs(out: epath.Path, workdir: str, scale: Scale, meta: dict) -> epath.Path:
    """miniature.md and its two pictures in `out`; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(workdir, scale)
    plot_fd_against_steps(out / "miniature_fd_steps.png", summary, scale)
    write_samples_picture(out / "miniature_samples.png", workdir, scale)
    path = out / "miniature.md"
    path.write_text(report(summary, scale, meta) + "\n")
    return path


def run(workdir: str, out: str, scale: Scale, command: str, stream=None) -> epath.Path:
    """Trains and evaluates every run (reusing finished ones), then writes the report."""
    start = time.time()
    job = runs(workdir, scale)
    plan = digits_runs.plan_for(job, [progress.Stage("report", 1.0)], stream)
    index = digits_runs.execute(job, workdir, plan)
    with plan.run(index):
        meta = {
            "command": command, "commit": _commit(), "machine": _machine(),
            "duration": progress.duration(time.time() - start),
        }
        return write_outputs(epath.Path(out), workdir, scale, meta)


FLAGS = flags.FLAGS


def main(argv):
    del argv
    workdir = paths.resolve_workdir(FLAGS.workdir)
    log_path = epath.Path(workdir) / "miniature.log"
    terminal = main_job.quiet_terminal(log_path)
    print(f"miniature in {workdir} ({FLAGS.scale}); logs in {log_path}", file=terminal, flush=True)
    command = " ".join(["python -m mcm_jax.miniature"] + sys.argv[1:])
    try:
        path = run(workdir, FLAGS.out, SCALES[FLAGS.scale], command, stream=terminal)
    except digits_runs.Stopped as stopped:
        print(f"stopped: {stopped}", file=terminal)
        return
    print(f"report in {path}", file=terminal)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "/tmp/mcm_miniature", "Where the runs and data go.")
    flags.DEFINE_string("out", "docs", "Where miniature.md and its pictures go.")
    flags.DEFINE_enum("scale", "cpu", list(SCALES), "cpu: ~1 h on 2 cores; gpu: a longer run.")
    app.run(main)
