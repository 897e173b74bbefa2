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
    # About an hour and a half on 2 CPU cores (docs/miniature.md gives the measured time).
    "cpu": Scale(model="digits", teacher_steps=5000, student_steps=60, samples=512),
    # For one accelerator: longer training, more samples.
    "gpu": Scale(model="digits", teacher_steps=40_000, student_steps=2000, samples=10_000),
}

METHODS = ("ct", "cd")
SAMPLER_NAMES = {"ddim": "DDIM", "addim": "aDDIM"}


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
        axes.plot(*zip(*points), linestyle="--", marker=".",
                  label=f"teacher, {SAMPLER_NAMES[sampler]}")
    for method in METHODS:
        steps = scale.student_sampling_steps
        means = [summary["table1"][(method, s)]["fd_digits"][0] for s in steps]
        sds = [summary["table1"][(method, s)]["fd_digits"][1] for s in steps]
        axes.errorbar(steps, means, yerr=sds, marker="o", capsize=3, label=f"MCM {method.upper()}")
    axes.set_xscale("log", base=2)
    axes.set_xticks(scale.teacher_sweep, [str(k) for k in scale.teacher_sweep])
    axes.set_yscale("log")
    axes.set_xlabel("sampling steps")
    axes.set_ylabel("FD-digits (lower is better)")
    axes.grid(True, alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    images.save_figure(figure, path, dpi=110)


def write_samples_picture(path: epath.Path, workdir: str, scale: Scale) -> None:
    """The teacher at 64 aDDIM steps and the seed-0 CD students, from the same noise and labels."""
    results_picture.write_teacher_and_students(
        path, workdir, scale.teacher_sweep,
        {s: table1_name("cd", s, 0) for s in scale.student_sampling_steps},
    )


AGREES, DISAGREES, INCONCLUSIVE = "**Agrees.**", "**Does not agree.**", "**Inconclusive.**"


def _verdict(expected_lower: float, other: float, noise: float) -> str:
    """The paper expects `expected_lower` < `other`; differences within `noise` decide nothing."""
    if abs(other - expected_lower) <= noise:
        return INCONCLUSIVE
    return AGREES if expected_lower < other else DISAGREES


def _overall(verdicts: list[str]) -> str:
    """Agrees if some comparison agrees and none disagrees; disagrees if some disagrees and none
    agrees; inconclusive otherwise."""
    if AGREES in verdicts and DISAGREES not in verdicts:
        return AGREES
    if DISAGREES in verdicts and AGREES not in verdicts:
        return DISAGREES
    return INCONCLUSIVE


def claims(summary: dict, scale: Scale) -> list[str]:
    """One paragraph per paper claim, with the numbers that decide it. Noise: two standard errors
    of a difference, from Table 1's spread over seeds (single-seed ablations: two seed sds times
    √2); the teacher's samplers share noise and network, so their differences count as they are."""
    t1, sd, n = summary["table1"], summary["seed_sd"], scale.seeds
    steps = scale.student_sampling_steps
    fd = {m: [t1[(m, s)]["fd_digits"][0] for s in steps] for m in METHODS}
    monotone = all(a >= b for m in METHODS for a, b in zip(fd[m], fd[m][1:]))
    (best_sampler, best_steps), (best_fd, _) = _best_teacher(summary)

    def pair_noise(s: int) -> float:
        sds = [t1[(m, s)]["fd_digits"][1] for m in METHODS]
        return 2 * float(np.sqrt(sum(x * x for x in sds) / n))

    low_s = [s for s in steps if s <= 4]
    cd_ct = {s: _verdict(t1[("cd", s)]["fd_digits"][0], t1[("ct", s)]["fd_digits"][0],
                         pair_noise(s)) for s in low_s}
    teacher = summary["teacher"]
    low = [k for k in scale.teacher_sweep if k <= 8 and ("addim", k) in teacher]
    addim_wins = [k for k in low if teacher[("addim", k)][0] < teacher[("ddim", k)][0]]
    s = scale.ablation_sampling_steps
    single = 2 * float(np.sqrt(2)) * sd
    constants = summary["constant"]
    best_constant = min(constants, key=constants.get)
    gap = summary["snr_plus_one"] - summary["v_loss"]

    def cd_ct_phrase(s: int) -> str:
        cd, ct = t1[("cd", s)]["fd_digits"][0], t1[("ct", s)]["fd_digits"][0]
        outcome = {AGREES: "CD ahead", DISAGREES: "CT ahead", INCONCLUSIVE: "within the noise"}
        return f"S = {s}: {cd:.2f} vs {ct:.2f} (noise ±{pair_noise(s):.2f}, {outcome[cd_ct[s]]})"

    return [
        "**Table 1: more student steps close the gap to the teacher.** The paper's MCMs improve "
        "monotonically from 1 to 8 (16) steps and approach the teacher. Here CD goes "
        + " → ".join(f"{v:.2f}" for v in fd["cd"]) + " and CT "
        + " → ".join(f"{v:.2f}" for v in fd["ct"])
        + f" (S = {', '.join(map(str, steps))}); the teacher's best sampler "
        f"({SAMPLER_NAMES[best_sampler]}, {best_steps} steps) scores {best_fd:.2f}. "
        + (AGREES if monotone else
           DISAGREES + " The means are not monotone in S; see the seed sds in the table."),
        "**Table 1: distillation beats training from data at few steps.** In the paper's Table 1 "
        "CD is ahead of CT at S = 1, 2, 4 (ImageNet64 small: 4.3 vs 7.2, 2.0 vs 2.7, 1.7 vs 1.8). "
        "Here, CD vs CT at " + "; ".join(cd_ct_phrase(s) for s in low_s) + ". Overall: "
        + _overall(list(cd_ct.values())),
        "**Fig. 3: aDDIM beats DDIM at few teacher steps.** aDDIM vs DDIM (aDDIM with the "
        "analytic x_var estimate, the paper's data-free choice) at "
        + ", ".join(
            f"{k} step{'s' * (k > 1)} {teacher[('addim', k)][0]:.2f} vs {teacher[('ddim', k)][0]:.2f}"
            for k in low
        )
        + f": aDDIM is better at {len(addim_wins)} of {len(low)}. "
        + (AGREES if len(addim_wins) * 2 > len(low) else DISAGREES),
        f"**Table 2: annealing the teacher's steps beats a constant number.** CD S = {s}: "
        f"annealed {scale.teacher_steps_annealed[0]} → {scale.teacher_steps_annealed[1]} "
        f"{summary['annealed']:.2f}; constant "
        + ", ".join(f"{k}: {v:.2f}" for k, v in constants.items())
        + f" (one seed each; noise ±{single:.2f} from Table 1's seed sd {sd:.2f} at this S). "
        + _verdict(summary["annealed"], constants[best_constant], single),
        f"**Table 4: an aDDIM teacher step distils better than a DDIM one.** CD S = {s}: aDDIM "
        f"(xvar_frac 0.75) {summary['addim_teacher']:.2f}, DDIM (xvar_frac 0) "
        f"{summary['ddim_teacher']:.2f} (noise ±{single:.2f}). "
        + _verdict(summary["addim_teacher"], summary["ddim_teacher"], single),
        "**Loss: v-space vs (SNR + 1)-weighted x-space.** The paper calls its loss the v-loss, "
        "\"equivalent to SNR + 1 weighting\"; with a pseudo-Huber distance the two differ, and the "
        f"paper states no preference. CD S = {s}: v-space {summary['v_loss']:.2f}, (SNR + 1) "
        f"x-space {summary['snr_plus_one']:.2f} (noise ±{single:.2f}): "
        + ("the difference is within the noise." if abs(gap) <= single else
           f"{'v-space' if gap > 0 else '(SNR + 1) x-space'} is better beyond the noise."),
    ]


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
        f"at commit `{meta['commit']}` on {meta['machine']}; wall time {meta['duration']}. Every "
        "number below comes from that run (FD-digits: Fréchet distance in the features of the "
        "project's digits classifier against the test split, real digits 1.8; class accuracy: how "
        "often the classifier reads the requested digit). "
        f"The teacher: UViT `{scale.model}`, {scale.teacher_steps} steps at batch 128 "
        f"(learning rate {scale.teacher_lr_decay}); its best "
        f"sampler ({SAMPLER_NAMES[best_sampler]}, {best_steps} steps) reaches FD-digits {best_fd:.2f} and "
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
    with plan.run(index) as report:
        meta = {
            "command": command, "commit": _commit(), "machine": _machine(),
            "duration": progress.duration(time.time() - start),
        }
        path = write_outputs(epath.Path(out), workdir, scale, meta)
        report(1, 1)
    return path


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
