"""The main job on digits, in one process: teacher, MCM students, evals, one results table.

    python -m mcm_jax.main_job --workdir=/tmp/mcm_local [--quick]

Trains a diffusion teacher on the bundled digits, distils multistep consistency students (CD for
S = 1, 2, 4, 8 and CT for S = 8 by default), evaluates FD-digits and class accuracy for each and
for the teacher (DDIM and aDDIM over a step sweep), and prints a markdown table. Everything runs
in one process so TensorFlow, JAX and the compiled programs are set up once.
"""

from __future__ import annotations

import time

import ml_collections
from absl import app, flags, logging
from etils import epath

from mcm_jax import paths, presets, results_table, train
from mcm_jax.eval import evaluate

STUDENTS = (("cd", 1), ("cd", 2), ("cd", 4), ("cd", 8), ("ct", 8))
TEACHER_SWEEP = (1, 2, 4, 8, 16)


def _common(config: ml_collections.ConfigDict, workdir: str, samples: int) -> ml_collections.ConfigDict:
    config.data.data_dir = str(epath.Path(workdir) / "tensorflow_datasets")
    config.training.sample_every = 0
    config.eval.num_samples = samples
    config.eval.batch_size = 128
    return config


def _ema_decay(num_steps: int) -> float:
    """An EMA decay for a short run: the initial weights keep a 5% share at the end."""
    return 0.05 ** (1.0 / num_steps)


def run(
    workdir: str,
    *,
    model: str = "digits",
    teacher_steps: int = 400,
    student_steps: int = 40,
    samples: int = 384,
    students: tuple[tuple[str, int], ...] = STUDENTS,
    teacher_sweep: tuple[int, ...] = TEACHER_SWEEP,
) -> str:
    """Runs (or resumes) every stage in `workdir`; returns the results table (also results.md)."""
    start = time.time()
    teacher_dir = str(epath.Path(workdir) / "teacher")
    teacher = _common(presets.digits_diffusion(f"model={model}"), workdir, samples)
    teacher.training.update(num_steps=teacher_steps, checkpoint_every=teacher_steps, log_every=50)
    teacher.ema_decays = (_ema_decay(teacher_steps),)
    teacher.eval.sweep_steps = teacher_sweep
    teacher.eval.sweep_methods = ("ddim", "addim")
    train.train(teacher, teacher_dir)
    evaluate.evaluate(teacher, teacher_dir)
    logging.info("teacher done after %.0f s", time.time() - start)

    for method, steps in students:
        student_dir = str(epath.Path(workdir) / f"{method}_s{steps}")
        student = _common(
            presets.digits_mcm(f"steps={steps},method={method},model={model}"), workdir, samples
        )
        student.teacher.workdir = teacher_dir
        student.mcm.anneal_iterations = student_steps
        student.training.update(num_steps=student_steps, checkpoint_every=student_steps, log_every=10)
        student.ema_decays = (_ema_decay(student_steps),)
        train.train(student, student_dir)
        evaluate.evaluate(student, student_dir)
        logging.info("student %s S=%d done after %.0f s", method, steps, time.time() - start)

    table = results_table.format_table(results_table.collect(workdir))
    (epath.Path(workdir) / "results.md").write_text(table + "\n")
    return table


FLAGS = flags.FLAGS


def main(argv):
    del argv
    quick = FLAGS.quick
    start = time.time()
    table = run(
        paths.resolve_workdir(FLAGS.workdir),
        model="tiny" if quick else FLAGS.model,
        teacher_steps=20 if quick else FLAGS.teacher_steps,
        student_steps=4 if quick else FLAGS.student_steps,
        samples=64 if quick else FLAGS.samples,
    )
    print(table)
    print(f"total {time.time() - start:.0f} s; results in {FLAGS.workdir}/results.md")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "/tmp/mcm_local", "Where runs, data and results go.")
    flags.DEFINE_bool("quick", False, "Tiny network and a few steps: checks the whole path.")
    flags.DEFINE_enum("model", "digits", ["digits", "tiny"], "The network.")
    flags.DEFINE_integer("teacher_steps", 400, "Teacher training steps.")
    flags.DEFINE_integer("student_steps", 40, "Training steps of each student.")
    flags.DEFINE_integer("samples", 384, "Samples per evaluated sampler.")
    app.run(main)
