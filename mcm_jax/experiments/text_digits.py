"""The text-to-image miniature on a CPU (paper §5.2 in small): captioned digits, a text-conditioned
teacher and an 8-step CD student distilled from it under classifier-free guidance.

    python -m mcm_jax.experiments.text_digits --workdir=/tmp/text_digits [--out=docs] [--quick]

Builds the captioned digits (mcm_jax.data.captioned_digits: captions from the labels in 800
training phrasings, a frozen tiny T5 with random weights as the text encoder), trains the teacher
with prompt dropout, distils the student from the teacher guided at `guidance`, and samples both
from the test digits' captions in the training phrasings ("seen") and in 8 phrasings never seen
in training ("held-out"). Reported per model and prompt set: how often the digits classifier
reads the prompted digit (chance: 10%) and FD-digits against the test digits. Writes
<out>/text_digits.md and <out>/text_digits.png; reruns reuse finished runs.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from absl import flags
from etils import epath

from mcm_jax import images, paths, progress
from mcm_jax.data import captioned_digits
from mcm_jax.eval import digits_classifier
from mcm_jax.eval import evaluate
from mcm_jax.experiments import digits_runs
from mcm_jax.run import cli

PROMPT_SETS = {"seen": "test", "held-out": "heldout"}  # name: split of the captioned digits
PICTURE_PROMPTS = 20


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the miniature trains and samples."""

    model: str = "digits"
    teacher_steps: int = 3000
    student_steps: int = 200
    student_sampling_steps: int = 8
    teacher_sampling_steps: int = 64
    guidance: float = 1.0
    samples: int = 718  # each of the 359 test prompts twice


QUICK = Budget(model="tiny", teacher_steps=8, student_steps=4, student_sampling_steps=2,
               teacher_sampling_steps=4, samples=24)


@dataclasses.dataclass(frozen=True)
class Result:
    """One model on one prompt set."""

    model: str
    prompts: str
    sampler: str
    prompted_digit: float
    fd_digits: float
    samples_path: str


def _on_captions(config, data):
    config.data = data
    config.eval.update(metric="fd_digits", prompts_split="test")
    return config


def runs(workdir: str, info: dict, budget: Budget) -> list[digits_runs.Run]:
    """The teacher and the student, on the captioned digits of `info` (captioned_digits.build)."""
    data = captioned_digits.data_config(info)
    teacher = _on_captions(digits_runs.teacher_config(
        workdir, model=budget.model, steps=budget.teacher_steps, samples=budget.samples,
        sweep_steps=(budget.teacher_sampling_steps,), sweep_methods=("ddim",),
    ), data)
    teacher.eval.guidance_weight = budget.guidance
    student = _on_captions(digits_runs.student_config(
        workdir, str(epath.Path(workdir) / "teacher"), method="cd",
        sampling_steps=budget.student_sampling_steps, model=budget.model,
        steps=budget.student_steps, samples=budget.samples,
    ), data)
    student.mcm.guidance_weight = budget.guidance
    name = f"student_cd{budget.student_sampling_steps}_w{budget.guidance:g}"
    return [digits_runs.Run("teacher", teacher), digits_runs.Run(name, student)]


def _stages(all_runs: list[digits_runs.Run]) -> list[progress.Stage]:
    stages = []
    for run in all_runs:
        train_stage, eval_stage = run.stages()
        stages.append(train_stage)
        stages += [dataclasses.replace(eval_stage, name=f"{run.name}: evaluate, {name} prompts")
                   for name in PROMPT_SETS]
    return stages + [progress.Stage("report", 1_000)]


def prompted_digit_rate(samples_path: epath.Path, classifier) -> float:
    """How often the classifier reads, in saved samples, the digit their captions prompt."""
    with np.load(samples_path) as saved:
        samples, captions = saved["arr_0"], saved["captions"]
    logits, _ = classifier.logits_and_features(images.to_grey(samples))
    prompted = np.array([captioned_digits.prompted_digit(str(c)) for c in captions])
    return float(np.mean(np.argmax(logits, axis=-1) == prompted))


def _execute(workdir: str, all_runs: list[digits_runs.Run], plan: progress.Plan) -> list[Result]:
    classifier = digits_classifier.load_or_train(None, 16)
    results, index = [], 0
    for run in all_runs:
        run_dir = str(epath.Path(workdir) / run.name)
        digits_runs.train_run(run, run_dir, plan, index)
        index += 1
        for name, split in PROMPT_SETS.items():
            config = run.config.copy_and_resolve_references()
            config.eval.update(prompts_split=split, name=split)
            with plan.run(index) as report:
                (row,) = evaluate.evaluate(config, run_dir, progress=report)
            index += 1
            (setting,) = evaluate.sweep_settings(config)
            path = (epath.Path(run_dir) / "eval" / split / f"step_{row['checkpoint_step']:08d}"
                    / setting.name / "samples.npz")
            results.append(Result(run.name, name, setting.name, prompted_digit_rate(path, classifier),
                                  row["fd_digits"], str(path)))
    return results


def _picture(results: list[Result], path: epath.Path) -> list[str]:
    """Teacher and student samples of the first held-out prompts, a row each (same noise and
    prompts); returns those prompts."""
    rows, captions = [], []
    for result in results:
        if result.prompts != "held-out":
            continue
        with np.load(result.samples_path) as saved:
            rows.append(images.make_grid(saved["arr_0"][:PICTURE_PROMPTS], columns=PICTURE_PROMPTS))
            captions = [str(c) for c in saved["captions"][:PICTURE_PROMPTS]]
    picture = np.concatenate(rows, axis=0)
    images.save_png(str(path), np.repeat(np.repeat(picture, 3, axis=0), 3, axis=1))
    return captions


def report(results: list[Result], budget: Budget, out: epath.Path, seconds: float) -> str:
    """Writes text_digits.md and text_digits.png into `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    by = {(r.model.split("_")[0], r.prompts): r for r in results}
    lines = [
        "| model | sampler | prompts | prompted digit read | FD-digits |",
        "|---|---|---|---:|---:|",
    ] + [
        f"| {r.model} | {r.sampler} | {r.prompts} | {100 * r.prompted_digit:.1f}% | "
        f"{r.fd_digits:.2f} |" for r in results
    ]
    table = "\n".join(lines)
    checks = []
    for name in PROMPT_SETS:
        teacher, student = by[("teacher", name)], by[("student", name)]
        ratio = student.fd_digits / teacher.fd_digits - 1
        checks.append(
            f"- {name} prompts: teacher {100 * teacher.prompted_digit:.1f}%, student "
            f"{100 * student.prompted_digit:.1f}% (asked: >= 90% each); student FD-digits "
            f"{100 * ratio:+.1f}% against the teacher's (asked: within 10%)."
        )
    captions = _picture(results, out / "text_digits.png")
    text = "\n".join([
        "# Text-to-image miniature: captioned digits",
        "",
        "Made by `python -m mcm_jax.experiments.text_digits --workdir=WORKDIR --out=docs` "
        f"({progress.duration(seconds)} on this run's machine). Teacher: digits network with "
        f"cross-attention, {budget.teacher_steps} steps, prompt dropout 0.1, sampled with "
        f"{budget.teacher_sampling_steps} DDIM steps guided at w = {budget.guidance:g}. Student: "
        f"CD, S = {budget.student_sampling_steps}, {budget.student_steps} steps from the teacher "
        f"guided at w = {budget.guidance:g} (x_var from its conditional output), sampled with "
        f"{budget.student_sampling_steps} DDIM steps, unguided. {budget.samples} samples per row: "
        "the 359 test digits' captions, in training phrasings (seen) or in phrasings never seen "
        "in training (held-out). Prompted digit read: the digits classifier's class equals the "
        "caption's digit (chance 10%). FD-digits: against the test digits.",
        "",
        table,
        "",
        *checks,
        "",
        "![teacher (top) and student (bottom) on held-out prompts](text_digits.png)",
        "",
        "Prompts of the picture's columns (held-out phrasings): "
        + "; ".join(f'"{c}"' for c in captions) + ".",
        "",
    ])
    (out / "text_digits.md").write_text(text)
    return table


def run(workdir: str, budget: Budget, out: str, stream=None) -> str:
    """The whole miniature; returns the table."""
    start = time.time()
    info = captioned_digits.build(epath.Path(workdir) / "captioned_digits")
    all_runs = runs(workdir, info, budget)
    plan = progress.Plan(_stages(all_runs), stream)
    results = _execute(workdir, all_runs, plan)
    with plan.run(len(plan.stages) - 1):
        return report(results, budget, epath.Path(out), time.time() - start)


FLAGS = flags.FLAGS


def main(argv):
    del argv
    from mcm_jax.experiments.main_job import quiet_terminal

    workdir = paths.resolve_workdir(FLAGS.workdir)
    budget = QUICK if FLAGS.quick else Budget(
        teacher_steps=FLAGS.teacher_steps, student_steps=FLAGS.student_steps,
        guidance=FLAGS.guidance,
    )
    out = paths.resolve_directory(FLAGS.out, "out") if FLAGS.out else workdir
    terminal = quiet_terminal(epath.Path(workdir) / "text_digits.log")
    try:
        table = run(workdir, budget, out, stream=terminal)
    except digits_runs.Stopped as stopped:
        print(f"stopped: {stopped}", file=terminal)
        return
    print(table, file=terminal)
    print(f"report: {out}/text_digits.md", file=terminal)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "/tmp/text_digits", "Where the data, runs and logs go.")
    flags.DEFINE_string("out", "", "Where text_digits.md and .png go (default: the workdir).")
    flags.DEFINE_bool("quick", False, "Tiny network and a few steps: checks the whole path.")
    defaults = Budget()
    flags.DEFINE_integer("teacher_steps", defaults.teacher_steps, "Teacher training steps.",
                         lower_bound=1)
    flags.DEFINE_integer("student_steps", defaults.student_steps, "Student training steps.",
                         lower_bound=1)
    flags.DEFINE_float("guidance", defaults.guidance,
                       "Guidance weight of the teacher's samples and of the student's teacher.")
    cli.run(main)
