"""The paper's experiments in miniature, on the bundled digits: tables, a plot and a picture.

    python -m mcm_jax.experiments.miniature --workdir=/tmp/mcm_miniature --out=docs [--scale=cpu|gpu|quick]

One teacher, then (the paper's numbering):
- Table 1: CT and CD students for S = 1, 2, 4, 8, 16 sampling steps, several seeds each;
- Table 3: progressive distillation (the baseline) for S = 1, 2, 4, 8 at the same training budget,
  several seeds each;
- Fig. 3: the teacher's DDIM and aDDIM at 1 to 128 steps, aDDIM with the analytic x_var and with
  x_var calibrated on data (`mcm_jax.eval.calibrate`);
- Table 2: CD with teacher steps annealed over the run vs constant at three values;
- Table 4: CD from a DDIM teacher step (xvar_frac = 0) vs an aDDIM one;
- the consistency loss in v-space vs (SNR + 1)-weighted x-space (`mcm.weighting`).
Writes <out>/miniature.md (tables, a paragraph per claim with its numbers, the command, commit,
machine and time), <out>/miniature_fd_steps.png and <out>/miniature_samples.png, all from one
invocation. Every run is a workdir under --workdir that records the commit and the hash of the
code it runs (`mcm_jax.experiments.provenance`); rerunning reuses a finished run and resumes an interrupted
one only while that code is unchanged, and moves a run of other code aside (to
<workdir>/stale/) to redo it, so the report's numbers all come from the code of the commit it
names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
from absl import app, flags, logging
from etils import epath

from mcm_jax import files, images, paths, progress
from mcm_jax.eval import calibrate
from mcm_jax.eval import evaluate
from mcm_jax.experiments import digits_runs, main_job, provenance, results_picture, results_table


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
    # Progressive distillation: its S, and the first round's student steps N (its teacher: the
    # diffusion model at 2N DDIM steps). Its rounds share the students' `student_steps` budget.
    pd_sampling_steps: tuple[int, ...] = (1, 2, 4, 8)
    pd_start_steps: int = 8


SCALES = {
    # About two hours on 2 CPU cores (README's miniature section gives the estimate and how it
    # was measured; docs/miniature.md the measured time of the run that made it).
    "cpu": Scale(model="digits", teacher_steps=5000, student_steps=60, samples=512),
    # For one accelerator: longer training, more samples.
    "gpu": Scale(model="digits", teacher_steps=40_000, student_steps=2000, samples=10_000),
    # A path check of every kind of run on the tiny network (a few minutes); its numbers mean
    # nothing.
    "quick": Scale(
        model="tiny", teacher_steps=20, student_steps=12, samples=32, seeds=2,
        student_sampling_steps=(1, 2), teacher_sweep=(1, 2, 4), ablation_sampling_steps=2,
        teacher_steps_annealed=(4, 16), teacher_steps_constant=(4, 16), pd_sampling_steps=(1, 2),
        pd_start_steps=2,
    ),
}

METHODS = ("ct", "cd")
SAMPLER_NAMES = {
    "ddim": "DDIM", "addim": "aDDIM", "addim_calibrated": "aDDIM, x_var calibrated on data",
}
TEACHER_SAMPLERS = ("ddim", "addim", "addim_calibrated")
# The code every run executes (training, sampling, scoring, calibration, the run configs): runs
# are reused only while the hash of what these import is unchanged.
CODE_ROOTS = (
    "mcm_jax.train.train", "mcm_jax.eval.evaluate", "mcm_jax.eval.calibrate",
    "mcm_jax.experiments.digits_runs",
)
PROVENANCE_FILE = "provenance.json"
# The runs' data and digits classifier (digits_runs): redone with the runs when the code changes.
DATA_DIR = "tensorflow_datasets"
EVAL_TAG = "sweep"  # eval.name of every run's own sweep
CALIBRATED_TAG = "calibrated_x_var"  # eval.name of the teacher's aDDIM with the calibrated table


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


def _pd(workdir, scale, s, seed):
    return digits_runs.pd_config(
        workdir, str(epath.Path(workdir) / "teacher"), sampling_steps=s,
        start_steps=scale.pd_start_steps, model=scale.model, steps=scale.student_steps,
        samples=scale.samples, seed=seed,
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
        for s in scale.pd_sampling_steps:
            result.append(digits_runs.Run(table1_name("pd", s, seed), _pd(workdir, scale, s, seed)))
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
    for run in result:
        run.config.eval.name = EVAL_TAG
    return result


def calibrated_teacher_config(workdir: str, teacher: digits_runs.Run):
    """The teacher's eval with aDDIM alone, its x_var from the calibration table that
    `calibrate.calibrate` writes into the teacher's workdir (paper section 3.2), in its own
    eval directory; no samples kept (the picture's teacher row is the analytic aDDIM's)."""
    config = teacher.config.copy_and_resolve_references()
    table = calibrate.table_path(epath.Path(workdir) / teacher.name, config.training.num_steps)
    config.eval.update(
        name=CALIBRATED_TAG, sweep_methods=("addim",), x_var_table=table, save_samples=False
    )
    return config


def calibrated_stage(config) -> progress.Stage:
    """The cost of calibrating (every grid time on every example) and the aDDIM sweep."""
    e = config.eval
    cost = e.calibration_times * e.calibration_batches * e.calibration_batch_size
    return progress.Stage(
        "teacher: calibrate x_var, evaluate aDDIM with it",
        cost + sum(e.sweep_steps) * e.num_samples + 2 * digits_runs.COMPILE_COST,
    )


def run_calibrated_sweep(config, teacher_dir: str, report) -> None:
    """Calibrates x_var on data (unless the table is there) and evaluates aDDIM with it."""
    if not epath.Path(config.eval.x_var_table).exists():
        calibrate.calibrate(config, teacher_dir)
    evaluate.evaluate(config, teacher_dir, progress=report)


def config_hash(config) -> str:
    """SHA-256 of a run's resolved config, for `claim_runs`."""
    return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def claim_runs(
    workdir: str, configs: dict[str, str], record: dict[str, str]
) -> tuple[dict[str, dict], list[str]]:
    """Which runs (directories under `workdir`, name -> the `config_hash` it should have) to
    reuse: those whose recorded code hash is `record`'s and config hash theirs. Any other (a run
    of other code or config, or one that recorded none) is moved to <workdir>/stale/<name>.<its
    code hash> to be redone; new directories get `record` and their config hash. Returns each
    name's record (the commit it was made at, for the report) and the names reused."""
    root = epath.Path(workdir)
    records, reused = {}, []
    for name, wanted_config in configs.items():
        run_dir, path = root / name, root / name / PROVENANCE_FILE
        new = dict(record, config_hash=wanted_config)
        if run_dir.exists():
            old = json.loads(path.read_text()) if path.exists() else {}
            if (old.get("code_hash"), old.get("config_hash")) == (
                new["code_hash"], new["config_hash"]
            ):
                records[name] = old
                reused.append(name)
                continue
            base = root / "stale" / f"{name}.{old.get('code_hash', 'unrecorded')[:12]}"
            stale, k = base, 1
            while stale.exists():
                stale, k = base.with_name(f"{base.name}.{k}"), k + 1
            stale.parent.mkdir(parents=True, exist_ok=True)
            run_dir.rename(stale)
            logging.warning("%s was made by other code or config (%s): moved to %s, redoing it",
                            run_dir, old.get("commit", "unrecorded"), stale)
        run_dir.mkdir(parents=True)
        files.write_bytes_atomic(path, json.dumps(new, indent=2).encode())
        records[name] = new
    return records, reused


# ----------------------------------------------------------------------------------------------
# The report: numbers from the runs' eval sweeps, nothing else.


def _scores(workdir: str, tag: str = EVAL_TAG) -> dict[str, list[dict]]:
    by_run: dict[str, list[dict]] = {}
    for row in results_table.collect(workdir, tag):
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
    rows = [(m, s) for m in METHODS for s in scale.student_sampling_steps]
    rows += [("pd", s) for s in scale.pd_sampling_steps]
    table1 = {
        (method, s): {
            metric: _mean_sd([_one(by_run, table1_name(method, s, k), metric) for k in seeds])
            for metric in ("fd_digits", "class_accuracy")
        }
        for method, s in rows
    }
    teacher = {
        (row["method"], row["steps"]): (row["fd_digits"], row["class_accuracy"])
        for row in by_run["teacher"]
    }
    teacher |= {
        ("addim_calibrated", row["steps"]): (row["fd_digits"], row["class_accuracy"])
        for row in _scores(workdir, CALIBRATED_TAG)["teacher"]
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
    """FD-digits against sampling steps: CT, CD and PD (mean ± sd over seeds) and the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for sampler in TEACHER_SAMPLERS:
        points = sorted((n, fd) for (m, n), (fd, _) in summary["teacher"].items() if m == sampler)
        axes.plot(*zip(*points), linestyle="--", marker=".",
                  label=f"teacher, {SAMPLER_NAMES[sampler]}")
    for method in METHODS + ("pd",):
        steps = scale.pd_sampling_steps if method == "pd" else scale.student_sampling_steps
        means = [summary["table1"][(method, s)]["fd_digits"][0] for s in steps]
        sds = [summary["table1"][(method, s)]["fd_digits"][1] for s in steps]
        label = "PD" if method == "pd" else f"MCM {method.upper()}"
        axes.errorbar(steps, means, yerr=sds, marker="o", capsize=3, label=label)
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
PD_OUTCOMES = {AGREES: "CD ahead", DISAGREES: "PD ahead", INCONCLUSIVE: "within the noise"}


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

    def pair_noise(s: int, methods: tuple[str, str] = METHODS) -> float:
        sds = [t1[(m, s)]["fd_digits"][1] for m in methods]
        return 2 * float(np.sqrt(sum(x * x for x in sds) / n))

    low_s = [s for s in steps if s <= 4]
    cd_ct = {s: _verdict(t1[("cd", s)]["fd_digits"][0], t1[("ct", s)]["fd_digits"][0],
                         pair_noise(s)) for s in low_s}
    teacher = summary["teacher"]
    low = [k for k in scale.teacher_sweep if k <= 8 and ("addim", k) in teacher]
    addim_wins = [k for k in low if teacher[("addim", k)][0] < teacher[("ddim", k)][0]]
    calibrated_wins = [
        k for k in low if teacher[("addim_calibrated", k)][0] < teacher[("ddim", k)][0]
    ]
    pd_steps = [k for k in scale.pd_sampling_steps if k in steps]
    cd_pd = {k: _verdict(t1[("cd", k)]["fd_digits"][0], t1[("pd", k)]["fd_digits"][0],
                         pair_noise(k, ("cd", "pd"))) for k in pd_steps}
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
        "**Fig. 3 with x_var calibrated on data.** The paper's section 3.2 also measures x_var "
        "on data (`python -m mcm_jax.eval.calibrate`, η = 0.75). Calibrated aDDIM vs DDIM (vs aDDIM "
        "with the analytic x_var) at "
        + ", ".join(
            f"{k} step{'s' * (k > 1)} {teacher[('addim_calibrated', k)][0]:.2f} vs "
            f"{teacher[('ddim', k)][0]:.2f} ({teacher[('addim', k)][0]:.2f})"
            for k in low
        )
        + f": calibrated aDDIM is better than DDIM at {len(calibrated_wins)} of {len(low)}. "
        + (AGREES if len(calibrated_wins) * 2 > len(low) else DISAGREES),
        "**Table 3: multistep consistency beats progressive distillation at equal steps.** The "
        "paper's Table 3 compares CD with progressive distillation (Salimans & Ho 2022, "
        "re-implemented there with aDDIM teacher steps; DDIM ones here, as in Salimans & Ho) on "
        "the small ImageNet64 model: CD 4.3 / 2.0 / 1.7 / 1.6 vs PD 10.7 / 4.7 / 2.4 / 1.8 at "
        f"S = 1 / 2 / 4 / 8. Here, at the same {scale.student_steps} training iterations "
        "per student, CD vs PD at "
        + "; ".join(
            f"S = {k}: {t1[('cd', k)]['fd_digits'][0]:.2f} vs {t1[('pd', k)]['fd_digits'][0]:.2f} "
            f"(noise ±{pair_noise(k, ('cd', 'pd')):.2f}, "
            + PD_OUTCOMES[cd_pd[k]] + ")"
            for k in pd_steps
        )
        + ". Overall: " + _overall(list(cd_pd.values())),
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
        f"{scale.teacher_steps_annealed[1]} over the run; progressive distillation (PD) students "
        f"the same {scale.student_steps} steps in all, in equal rounds that halve the sampling "
        f"steps from {scale.pd_start_steps} (the teacher at {2 * scale.pd_start_steps} DDIM "
        f"steps) to S ({scale.student_steps} // rounds steps per round: "
        + ", ".join(
            f"{scale.student_steps // (scale.pd_start_steps // k).bit_length()} at S = {k}"
            for k in scale.pd_sampling_steps
        )
        + f"); every sampler scored on {scale.samples} samples.",
        "",
        meta["provenance"],
        "",
        "![samples](miniature_samples.png)",
        "",
        "Rows: the teacher at 64 aDDIM steps, then CD students (seed 0) at S = "
        + ", ".join(map(str, scale.student_sampling_steps))
        + "; every row starts from the same noise and labels.",
        "",
        f"## Tables 1 and 3: FD-digits (class accuracy), mean ± sd over {scale.seeds} seeds",
        "",
        "CT and CD are the paper's Table 1, PD (progressive distillation) its Table 3.",
        "",
        "| S | CT | CD | PD |",
        "|---:|---:|---:|---:|",
    ]
    for steps in sorted(set(scale.student_sampling_steps) | set(scale.pd_sampling_steps)):
        cells = []
        for method in METHODS + ("pd",):
            result = summary["table1"].get((method, steps))
            cells.append(
                "—" if result is None else
                f"{_fmt(*result['fd_digits'])} ({_fmt(*result['class_accuracy'])})"
            )
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Fig. 3: the teacher's samplers",
        "",
        "![FD-digits against sampling steps](miniature_fd_steps.png)",
        "",
        "FD-digits (class accuracy); aDDIM with the analytic x_var, 0.1/(2 + SNR), and with x_var "
        "calibrated on data by `python -m mcm_jax.eval.calibrate` (η = 0.75).",
        "",
        "| steps | DDIM | aDDIM, analytic x_var | aDDIM, calibrated x_var |",
        "|---:|---:|---:|---:|",
    ]
    teacher = summary["teacher"]
    for n in scale.teacher_sweep:
        lines.append(f"| {n} | " + " | ".join(
            f"{teacher[(m, n)][0]:.2f} ({teacher[(m, n)][1]:.3f})" for m in TEACHER_SAMPLERS
        ) + " |")
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


def provenance_sentence(record: dict[str, str], records: dict[str, dict], reused: list[str]) -> str:
    """Which code made the runs: this commit's, and which runs came from earlier invocations."""
    text = (
        f"Code: the files that training, sampling, scoring and calibration import "
        f"(`mcm_jax.experiments.provenance`, from {', '.join(f'`{r}`' for r in CODE_ROOTS)}) hash to "
        f"`{record['code_hash'][:12]}` at this commit, and every run records the hashes of the "
        "code and the config that made it; "
    )
    if not reused:
        return text + f"all {len(records)} runs were made by this invocation."
    commits = sorted({records[name]["commit"] for name in reused})
    return text + (
        f"{len(reused)} of the {len(records)} runs were reused from an earlier invocation at "
        f"commit {', '.join(f'`{c}`' for c in commits)}, whose code for them hashes the same."
    )


def run(workdir: str, out: str, scale: Scale, command: str, stream=None) -> epath.Path:
    """Trains and evaluates every run (reusing finished runs of the same code, redoing those of
    other code), calibrates and evaluates the teacher's aDDIM on data, then writes the report."""
    start = time.time()
    job = runs(workdir, scale)
    record = provenance.record(CODE_ROOTS)
    configs = {DATA_DIR: ""} | {run.name: config_hash(run.config) for run in job}
    records, reused = claim_runs(workdir, configs, record)
    records.pop(DATA_DIR)
    reused = [name for name in reused if name != DATA_DIR]
    calibrated = calibrated_teacher_config(workdir, job[0])
    plan = digits_runs.plan_for(
        job, [calibrated_stage(calibrated), progress.Stage("report", 1.0)], stream
    )
    index = digits_runs.execute(job, workdir, plan)
    with plan.run(index) as report:
        run_calibrated_sweep(calibrated, str(epath.Path(workdir) / job[0].name), report)
    with plan.run(index + 1) as report:
        meta = {
            "command": command, "commit": record["commit"], "machine": _machine(),
            "duration": progress.duration(time.time() - start)
            + (f" for this invocation ({len(reused)} runs reused)" if reused else ""),
            "provenance": provenance_sentence(record, records, reused),
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
    command = " ".join(["python -m mcm_jax.experiments.miniature"] + sys.argv[1:])
    try:
        path = run(workdir, FLAGS.out, SCALES[FLAGS.scale], command, stream=terminal)
    except digits_runs.Stopped as stopped:
        print(f"stopped: {stopped}", file=terminal)
        return
    print(f"report in {path}", file=terminal)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "/tmp/mcm_miniature", "Where the runs and data go.")
    flags.DEFINE_string("out", "docs", "Where miniature.md and its pictures go.")
    flags.DEFINE_enum(
        "scale", "cpu", list(SCALES),
        "cpu: about 2 h on 2 cores; gpu: a longer run; quick: a path check on the tiny network.",
    )
    app.run(main)
