"""Digits teachers and students as the main job and the miniature run them.

Configs are built from a few numbers (steps, samples, overrides), and every run is trained then
evaluated as two stages of a `progress.Plan`, so a long job shows one line per stage and the time
left. Runs already finished in the workdir are reused: training and evaluation both resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from etils import epath

from mcm_jax import progress
from mcm_jax.config import presets
from mcm_jax.eval import evaluate
from mcm_jax.method import losses
from mcm_jax.train import train

# Forward-pass equivalents per example of one train step (a backward pass costs about two), for
# the time-left estimate: diffusion = student fwd + bwd; CT adds a target forward; CD adds the
# teacher's two aDDIM steps and the target forward; PD adds the teacher's two DDIM steps.
_TRAIN_FORWARDS = {"diffusion": 3, "ct": 4, "cd": 6, "pd": 5}
COMPILE_COST = 20_000  # image forwards that compiling a program costs, roughly, on a CPU


def _ema_decay(num_steps: int) -> float:
    """An EMA decay for a short run: the initial weights keep a 5% share at the end."""
    return 0.05 ** (1.0 / num_steps)


def _warmup(config: ml_collections.ConfigDict, num_steps: int) -> int:
    """The config's warm-up, at most a fifth of a short run."""
    return min(config.optimizer.warmup_steps, max(num_steps // 5, 1))


def _common(config: ml_collections.ConfigDict, workdir: str, samples: int, seed: int):
    config.data.data_dir = str(epath.Path(workdir) / "tensorflow_datasets")
    config.seed = seed
    config.training.sample_every = 0
    config.eval.num_samples = samples
    config.eval.batch_size = 128
    config.eval.save_samples = True  # for pictures across runs (same noise and labels)
    return config


def _override(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
    for dotted, value in overrides.items():
        *parents, field = dotted.split(".")
        block = config
        for parent in parents:
            block = block[parent]
        if field not in block:
            raise KeyError(f"config has no field {dotted!r}")
        block[field] = value
    return config


def teacher_config(
    workdir: str, *, model: str, steps: int, samples: int, sweep_steps: tuple[int, ...],
    sweep_methods: tuple[str, ...] = ("ddim", "addim"), seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """The digits diffusion teacher trained for `steps`, evaluated over a sampler sweep."""
    config = _common(presets.digits_diffusion(f"model={model}"), workdir, samples, seed)
    config.training.update(num_steps=steps, checkpoint_every=steps, log_every=50)
    config.optimizer.warmup_steps = _warmup(config, steps)
    config.ema_decays = (_ema_decay(steps),)
    config.eval.sweep_steps = tuple(sweep_steps)
    config.eval.sweep_methods = tuple(sweep_methods)
    return _override(config, overrides or {})


def student_config(
    workdir: str, teacher_dir: str, *, method: str, sampling_steps: int, model: str, steps: int,
    samples: int, seed: int = 0, overrides: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """A CD or CT student of `sampling_steps` (S) trained for `steps` from the teacher in
    `teacher_dir` (teacher steps annealed over the whole run unless overridden)."""
    config = presets.digits_mcm(f"steps={sampling_steps},method={method},model={model}")
    config = _common(config, workdir, samples, seed)
    config.teacher.workdir = teacher_dir
    config.mcm.anneal_iterations = steps
    config.optimizer.warmup_steps = _warmup(config, steps)
    config.training.update(num_steps=steps, checkpoint_every=steps, log_every=10)
    config.ema_decays = (_ema_decay(steps),)
    return _override(config, overrides or {})


def pd_config(
    workdir: str, teacher_dir: str, *, sampling_steps: int, start_steps: int, model: str,
    steps: int, samples: int, seed: int = 0, overrides: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """A progressive distillation student of the teacher in `teacher_dir`, from `start_steps` (N)
    down to `sampling_steps` (S), trained for `steps` iterations in all: equal rounds of
    steps // rounds (so at most `steps`, and exactly where the rounds divide it), each with its
    own warm-up and an EMA for the round's length."""
    config = presets.digits_pd(f"steps={sampling_steps},model={model}")
    config = _common(config, workdir, samples, seed)
    config.teacher.workdir = teacher_dir
    round_steps = steps // losses.pd_rounds(start_steps, sampling_steps)
    config.mcm.update(pd_start_steps=start_steps, pd_round_steps=round_steps)
    num_steps = round_steps * losses.pd_rounds(start_steps, sampling_steps)
    config.optimizer.warmup_steps = _warmup(config, round_steps)
    config.training.update(num_steps=num_steps, checkpoint_every=num_steps, log_every=10)
    config.ema_decays = (_ema_decay(round_steps),)
    return _override(config, overrides or {})


@dataclasses.dataclass(frozen=True)
class Run:
    """A run of a job: its directory name under the job's workdir and its config."""

    name: str
    config: ml_collections.ConfigDict

    def _kind(self) -> str:
        c = self.config
        return c.mcm.method if c.objective == "mcm" else "diffusion"

    def stages(self) -> list[progress.Stage]:
        c, e = self.config, self.config.eval
        train_cost = c.training.num_steps * c.training.batch_size * _TRAIN_FORWARDS[self._kind()]
        sampler_steps = (
            c.mcm.student_steps if c.objective == "mcm"
            else sum(e.sweep_steps) * len(e.sweep_methods)
        )
        return [
            progress.Stage(f"{self.name}: train {c.training.num_steps} steps",
                           train_cost + COMPILE_COST),
            progress.Stage(f"{self.name}: evaluate", sampler_steps * e.num_samples + COMPILE_COST),
        ]


def plan_for(runs: list[Run], extra: list[progress.Stage] = (), stream=None) -> progress.Plan:
    """A plan with the train and eval stages of every run, then `extra` stages."""
    return progress.Plan([s for run in runs for s in run.stages()] + list(extra), stream)


class Stopped(Exception):
    """A run saved and stopped early (SIGTERM: a preemption notice, a time limit)."""


def train_run(run: Run, run_dir: str, plan: progress.Plan, index: int) -> None:
    """Trains (or resumes) `run` in `run_dir` as stage `index` of `plan`; raises `Stopped` when it
    saved and stopped on a signal, so nothing is built on an unfinished run."""
    with plan.run(index) as report:
        state = train.train(run.config, run_dir, progress=report)
    if int(state.step) < run.config.training.num_steps:
        raise Stopped(
            f"{run.name} saved step {int(state.step)} of {run.config.training.num_steps} and "
            "stopped on a signal; rerun the same command to continue"
        )


def execute(runs: list[Run], workdir: str, plan: progress.Plan, first_stage: int = 0) -> int:
    """Trains and evaluates each run in <workdir>/<run.name> (resuming what is there), reporting
    to `plan` from stage `first_stage`; returns the index of the next stage. Raises `Stopped`
    when a run saved and stopped on a signal, so nothing is built on an unfinished run."""
    index = first_stage
    for run in runs:
        run_dir = str(epath.Path(workdir) / run.name)
        train_run(run, run_dir, plan, index)
        with plan.run(index + 1) as report:
            evaluate.evaluate(run.config, run_dir, progress=report)
        index += 2
    return index
