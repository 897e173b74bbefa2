"""The main job on digits, in one process: teacher, MCM students, evals, a table and a picture.

    python -m mcm_jax.experiments.main_job --workdir=/tmp/mcm_local [--quick]

Trains a diffusion teacher on the bundled digits, distils multistep consistency students (CD for
S = 1, 2, 4, 8 and CT for S = 8 by default) from it, evaluates FD-digits and class accuracy for
each and for the teacher (DDIM and aDDIM over a step sweep up to 64 steps), and writes
<workdir>/results.md (the table) and <workdir>/results.png (samples of the teacher at 64 aDDIM
steps and of each CD student, from the same noise and labels). The terminal gets one line per
stage with the time left; library logs go to <workdir>/main_job.log. Everything runs in one
process so TensorFlow, JAX and the compiled programs are set up once; rerunning reuses what a
previous (or interrupted) run finished.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import sys
import time
from typing import TextIO

from absl import flags, logging
from etils import epath

from mcm_jax import paths, progress
from mcm_jax.experiments import digits_runs, results_picture, results_table
from mcm_jax.run import cli

STUDENTS = (("cd", 1), ("cd", 2), ("cd", 4), ("cd", 8), ("ct", 8))
TEACHER_SWEEP = (1, 2, 4, 8, 16, 64)


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the main job trains and samples."""

    model: str = "digits"
    teacher_steps: int = 1500
    student_steps: int = 60
    samples: int = 512
    students: tuple[tuple[str, int], ...] = STUDENTS
    teacher_sweep: tuple[int, ...] = TEACHER_SWEEP


# A path check: every kind of stage once, on the tiny network.
QUICK = Budget(
    model="tiny", teacher_steps=20, student_steps=4, samples=128,
    students=(("cd", 2), ("ct", 2)), teacher_sweep=(2, 64),
)


def runs(workdir: str, budget: Budget) -> list[digits_runs.Run]:
    """The teacher, then its students."""
    teacher_dir = str(epath.Path(workdir) / "teacher")
    teacher = digits_runs.teacher_config(
        workdir, model=budget.model, steps=budget.teacher_steps, samples=budget.samples,
        sweep_steps=budget.teacher_sweep,
    )
    result = [digits_runs.Run("teacher", teacher)]
    for method, steps in budget.students:
        student = digits_runs.student_config(
            workdir, teacher_dir, method=method, sampling_steps=steps, model=budget.model,
            steps=budget.student_steps, samples=budget.samples,
        )
        result.append(digits_runs.Run(f"{method}_s{steps}", student))
    return result


def write_picture(workdir: str, budget: Budget) -> str:
    """results.png: the teacher at 64 aDDIM steps and each CD student, one row each, from the
    same noise and labels; returns its path."""
    path = epath.Path(workdir) / "results.png"
    results_picture.write_teacher_and_students(
        path, workdir, budget.teacher_sweep,
        {s: f"cd_s{s}" for kind, s in budget.students if kind == "cd"},
    )
    return str(path)


def run(workdir: str, budget: Budget = Budget(), stream=None) -> str:
    """Runs (or resumes) every stage in `workdir`; returns the results table (also results.md).
    Progress lines go to `stream` (default stdout)."""
    job = runs(workdir, budget)
    plan = digits_runs.plan_for(job, [progress.Stage("table and picture", 1.0)], stream)
    index = digits_runs.execute(job, workdir, plan)
    with plan.run(index) as report:
        table = results_table.format_table(results_table.collect(workdir))
        (epath.Path(workdir) / "results.md").write_text(table + "\n")
        write_picture(workdir, budget)
        report(1, 1)
    return table


class _ForTheTerminal(std_logging.Filter):
    """The project's own warnings (a damaged checkpoint set aside, a data epoch restarted) and
    every library's errors; library warnings stay in the log file."""

    PACKAGE_DIR = str(epath.Path(__file__).parents[1])  # mcm_jax/

    def filter(self, record: std_logging.LogRecord) -> bool:
        own = record.pathname.startswith(self.PACKAGE_DIR)
        return record.levelno >= (std_logging.WARNING if own else std_logging.ERROR)


def quiet_terminal(log_path: epath.Path) -> TextIO:
    """Sends every log record (absl, orbax, jax, TensorFlow's Python side, Python warnings) and
    stray library prints (TFDS's preparation notes) to `log_path`; the terminal keeps only what
    `_ForTheTerminal` lets through. Returns the terminal's stdout, for the job's own lines."""
    import tensorflow_datasets as tfds

    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the process)
    logging.get_absl_handler().python_handler.stream = log_file
    terminal = std_logging.StreamHandler(sys.stderr)
    terminal.addFilter(_ForTheTerminal())
    terminal.setFormatter(std_logging.Formatter("%(levelname)s: %(message)s"))
    std_logging.getLogger().addHandler(terminal)
    std_logging.captureWarnings(True)
    tfds.disable_progress_bar()
    stdout, sys.stdout = sys.stdout, log_file
    return stdout


FLAGS = flags.FLAGS


def main(argv):
    del argv
    workdir = paths.resolve_workdir(FLAGS.workdir)
    budget = QUICK if FLAGS.quick else Budget(
        model=FLAGS.model, teacher_steps=FLAGS.teacher_steps,
        student_steps=FLAGS.student_steps, samples=FLAGS.samples,
    )
    log_path = epath.Path(workdir) / "main_job.log"
    terminal = quiet_terminal(log_path)
    print(f"main job in {workdir}; logs in {log_path}", file=terminal, flush=True)
    start = time.time()
    try:
        table = run(workdir, budget, stream=terminal)
    except digits_runs.Stopped as stopped:
        print(f"stopped: {stopped}", file=terminal)
        return
    print(table, file=terminal)
    print(
        f"total {progress.duration(time.time() - start)}; table in {workdir}/results.md, "
        f"samples in {workdir}/results.png", file=terminal,
    )


if __name__ == "__main__":
    defaults = Budget()
    flags.DEFINE_string("workdir", "/tmp/mcm_local", "Where runs, data and results go.")
    flags.DEFINE_bool("quick", False, "Tiny network and a few steps: checks the whole path.")
    flags.DEFINE_enum("model", defaults.model, ["digits", "tiny"], "The network.")
    flags.DEFINE_integer("teacher_steps", defaults.teacher_steps, "Teacher training steps.",
                         lower_bound=1)
    flags.DEFINE_integer("student_steps", defaults.student_steps,
                         "Training steps of each student.", lower_bound=1)
    flags.DEFINE_integer("samples", defaults.samples, "Samples per evaluated sampler.",
                         lower_bound=1)
    cli.run(main)
