"""The eval job (`python -m mcm_jax.main --mode=eval`): sample a run's EMA parameters, score them.

For one checkpoint (eval.step, or the latest), or every newest checkpoint as training writes it
(eval.poll), it draws exactly eval.num_samples images with each sampler of the sweep (a student's
S-step DDIM; a teacher's DDIM or aDDIM at each of eval.sweep_steps, optionally guided), sharded
over all devices and processes and resumable after a kill, then scores them with FID or
FD-digits (docs/method.md §9). A text-to-image model samples sample i from prompt i mod count of
the prompt set (eval.prompts_dir, eval.prompts_split; mcm_jax.eval.prompts) and adds the CLIP
score where eval.clip_dir is set. Layout, under <workdir>/eval/<eval.name or n<N>_seed<seed>_ema<i>>/:

    events.out.tfevents.*               scores and grids per checkpoint step (TensorBoard)
    step_<step>/sweep.{csv,json,png}    the score against steps, per sampler
    step_<step>/<method>_<steps>steps[_guidance<w>]/
        spec.json, chunk_*.npz          while sampling (chunks go once scored)
        metrics.json, samples.png       [samples.npz: uint8 arr_0, labels (and captions),
                                         eval.save_samples]

A setting whose metrics.json exists is not recomputed, so rerunning a finished job is cheap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from mcm_jax import files, images, paths
from mcm_jax.config import data_config
from mcm_jax.config.eval_config import (
    check_clip_fields, check_ema_index, default_eval_config, METRICS,
)
from mcm_jax.eval import metrics, prompts, report, sampling
from mcm_jax.eval.calibrate import load_x_var_table
from mcm_jax.eval.fid.weights import file_sha256
from mcm_jax.method import samplers
from mcm_jax.progress import ProgressFn
from mcm_jax.run import checkpointing, multihost
from mcm_jax.run.batch_sampler import SamplerSetting
from mcm_jax.run.run_setup import check_run_matches, own_sampler, RunSetup

__all__ = ["default_eval_config", "evaluate", "sweep_settings", "validate"]

def sweep_settings(config: ml_collections.ConfigDict) -> list[SamplerSetting]:
    """The samplers to evaluate: every (method, steps) of the sweep, or the run's own sampler
    (`run_setup.own_sampler`) where the sweep leaves steps or methods empty."""
    e = config.eval
    steps, methods = tuple(e.sweep_steps), tuple(e.sweep_methods)
    own = own_sampler(config)
    if config.objective == "mcm":
        s = own.steps
        if steps not in ((), (s,)):
            raise ValueError(
                f"config.eval.sweep_steps: a student trained for S={s} steps samples with exactly "
                f"{s} steps, got {steps}; evaluate students of other S in their own workdirs"
            )
        if methods not in ((), ("ddim",)):
            raise ValueError(
                f"config.eval.sweep_methods: a student samples with DDIM (paper's Algorithm 2), "
                f"got {methods}"
            )
        if e.guidance_weight:
            raise ValueError(
                "config.eval.guidance_weight: guidance applies to teachers; a CD student distils "
                "the guided teacher (config.mcm.guidance_weight)"
            )
        return [own]
    steps = steps or (own.steps,)
    methods = methods or (own.method,)
    for method in methods:
        if method not in samplers.METHODS:
            raise ValueError(
                f"config.eval.sweep_methods: {method!r} is not one of {samplers.METHODS}"
            )
    for count in steps:
        if not (isinstance(count, int) and count >= 1):
            raise ValueError(f"config.eval.sweep_steps: {count!r} is not an integer >= 1")
    if e.guidance_weight < 0:
        raise ValueError(f"config.eval.guidance_weight: must be >= 0, got {e.guidance_weight}")
    conditional = data_config.num_classes(config.data) or data_config.text_shape(config.data)
    if e.guidance_weight and not conditional:
        raise ValueError(
            "config.eval.guidance_weight: guidance needs a class- or text-conditional model"
        )
    weight = float(e.guidance_weight)
    return [
        SamplerSetting(m, int(n), weight)
        for m in dict.fromkeys(methods)
        for n in dict.fromkeys(steps)
    ]


def validate(config: ml_collections.ConfigDict, num_devices: int) -> list[SamplerSetting]:
    """Checks config.eval before any compute; returns the sweep's settings. The rest of the
    config is the run's, checked once by `RunSetup.create`."""
    if "eval" not in config:
        raise ValueError(
            "config.eval: missing; config_lib.base_config() should attach "
            "mcm_jax.config.eval_config.default_eval_config()"
        )
    e = config.eval
    check_ema_index(config)
    settings = sweep_settings(config)
    if e.metric not in METRICS:
        raise ValueError(f"config.eval.metric: {e.metric!r} is not one of {METRICS}")
    minimum = 1 if e.metric == "none" else 2  # a covariance needs two samples
    if not (isinstance(e.num_samples, int) and e.num_samples >= minimum):
        raise ValueError(
            f"config.eval.num_samples: must be an integer >= {minimum}, got {e.num_samples!r}"
        )
    if not (isinstance(e.batch_size, int) and e.batch_size >= 1 and not e.batch_size % num_devices):
        raise ValueError(
            f"config.eval.batch_size: {e.batch_size!r} must be a positive multiple of the "
            f"{num_devices} devices"
        )
    if e.grid_images < 0:
        raise ValueError(f"config.eval.grid_images: must be >= 0, got {e.grid_images}")
    check_clip_fields(e)
    if e.clip_dir is not None and data_config.text_shape(config.data) is None:
        raise ValueError("config.eval.clip_dir: a CLIP score needs a text-to-image model")
    if e.poll and e.step != -1:
        raise ValueError(
            f"config.eval.step: {e.step} with eval.poll; polling follows the latest (-1)"
        )
    if e.poll and not (e.poll_interval_s > 0 and e.poll_timeout_s >= 0):
        raise ValueError("config.eval.poll_interval_s must be > 0 and poll_timeout_s >= 0")
    return settings


def _agreed(value: int) -> int:
    """`value` as process 0 has it, so every process evaluates the same checkpoint."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def _poll_steps(
    ckpt: checkpointing.Checkpointer, config: ml_collections.ConfigDict, workdir: str
) -> Iterator[int]:
    """Each newest checkpoint step as it appears, until training.num_steps is evaluated or none
    appears for eval.poll_timeout_s. Steps written while one is evaluated are skipped."""
    e = config.eval
    last, waiting_since = None, time.time()
    while last != config.training.num_steps:
        ckpt.manager.reload()
        latest = ckpt.latest_step()
        latest = _agreed(-1 if latest is None else latest)
        if latest >= 0 and latest != last:
            yield latest
            last, waiting_since = latest, time.time()
        elif time.time() - waiting_since > e.poll_timeout_s:
            logging.warning(
                "no new checkpoint in %s for %.0f s; polling stops", workdir, e.poll_timeout_s
            )
            return
        else:
            time.sleep(e.poll_interval_s)


class _Job:
    """Evaluates sweeps of one run; keeps the compiled samplers across checkpoint steps."""

    def __init__(self, setup: RunSetup, settings: list[SamplerSetting], root: epath.Path):
        config = setup.config
        e = config.eval
        self.config, self.settings, self.root = config, settings, root
        self.x_var_fn = load_x_var_table(e.x_var_table) if e.x_var_table else None
        self.setup = setup
        self.space = metrics.feature_space(config, self.setup.mesh)
        self.clip = metrics.clip_scorer(e)
        self.prompts, self.prompt_feed = None, None
        if data_config.text_shape(config.data) is not None:
            self.prompts = prompts.eval_prompts(config)
            self.prompt_feed = prompts.PromptFeed(self.prompts, e.batch_size, setup.mesh)
        self.writer = multihost.metric_writer(str(root), asynchronous=False)
        self._samplers: dict[SamplerSetting, Any] = {}

    def evaluate_step(
        self, ckpt: checkpointing.Checkpointer, step: int, max_chunks: int | None,
        progress: ProgressFn,
    ) -> list[dict]:
        """Every setting of the sweep at checkpoint `step`; writes the sweep table and plot.
        `progress(done, total)` counts sampler steps times images over the whole sweep."""
        ema = ckpt.restore_ema_params(step, self.setup.abstract_ema_params())
        params = ema[self.config.eval.ema_index]
        step_dir = self.root / f"step_{step:08d}"
        e = self.config.eval
        chunks = sampling.num_chunks(e.num_samples, e.batch_size)
        total = sum(s.steps for s in self.settings) * chunks
        rows, done = [], 0
        for setting in self.settings:
            row = self.evaluate_setting(
                params, step, setting, step_dir / setting.name, max_chunks,
                lambda k, before=done, s=setting.steps: progress(before + k * s, total),
            )
            if row is None:
                return []
            rows.append(row)
            done += setting.steps * chunks
        if jax.process_index() == 0:
            report.write_sweep(step_dir, rows, self.space.metric if self.space else None)
        self.writer.flush()
        return rows

    def _sampler(self, setting: SamplerSetting):
        if setting not in self._samplers:
            e = self.config.eval
            self._samplers[setting] = self.setup.batch_sampler(
                setting, seed=e.seed, batch_size=e.batch_size, x_var_fn=self.x_var_fn
            )
        return self._samplers[setting]

    def _spec(self, step: int, setting: SamplerSetting) -> dict:
        e = self.config.eval
        spec = {
            "checkpoint_step": step, "ema_index": e.ema_index, "method": setting.method,
            "steps": setting.steps, "guidance_weight": setting.guidance_weight, "seed": e.seed,
            "num_samples": e.num_samples, "batch_size": e.batch_size,
        }
        if setting.method == "addim":
            spec["x_var_table_sha256"] = file_sha256(e.x_var_table) if e.x_var_table else "analytic"
        return spec

    def evaluate_setting(
        self, params: Any, step: int, setting: SamplerSetting, directory: epath.Path,
        max_chunks: int | None, progress: ProgressFn,
    ) -> dict | None:
        """Samples (resuming), scores and reports one setting; None if max_chunks stopped it.
        `progress(chunks_done, chunks)` is called after each chunk."""
        e = self.config.eval
        metrics_path = directory / "metrics.json"
        sampling.check_or_write_spec(directory, self._spec(step, setting))
        if metrics_path.exists():
            return json.loads(metrics_path.read_text())
        sampler = self._sampler(setting)
        if self.prompts is None:
            sample_batch, captions = (lambda first: sampler(params, first)), None
        else:
            sample_batch = lambda first: sampler(params, first, self.prompt_feed(first))
            captions = self.prompts.captions_of
        complete = sampling.generate_samples(
            sample_batch, directory, num_samples=e.num_samples,
            batch_size=e.batch_size, num_classes=data_config.num_classes(self.config.data),
            max_chunks=max_chunks, progress=progress, captions=captions,
        )
        if not complete:
            return None
        row = {
            "checkpoint_step": step, "method": setting.method, "steps": setting.steps,
            "guidance_weight": setting.guidance_weight, "num_samples": e.num_samples,
            **self._score_and_save(directory, step, setting),
        }
        if jax.process_index() == 0:
            report.write_json(metrics_path, row)
        sampling.remove_chunks(directory, sampling.num_chunks(e.num_samples, e.batch_size))
        logging.info("step %d, %s: %s", step, setting.name, row)
        self.writer.write_scalars(
            step, {f"{setting.name}/{k}": v for k, v in row.items() if isinstance(v, float)}
        )
        return row

    def _score_and_save(self, directory: epath.Path, step: int, setting: SamplerSetting) -> dict:
        """One pass over the chunks: the score (and CLIP score), the grid PNG and, if asked for,
        samples.npz."""
        e = self.config.eval
        conditional = data_config.num_classes(self.config.data) > 0
        scorer = metrics.Scorer(self.space, conditional) if self.space else None
        kept_images, kept_labels, kept_captions, clip_scores = [], [], [], []
        keep = e.num_samples if e.save_samples else e.grid_images
        for samples, labels, mask, captions in sampling.iterate_chunks(
            directory, num_samples=e.num_samples, batch_size=e.batch_size
        ):
            if scorer:
                scorer.update(samples, labels, mask)
            if self.clip is not None:
                clip_scores.append(self.clip.scores(samples[mask], list(captions[mask])))
            if sum(map(len, kept_images)) < keep:
                kept_images.append(samples[mask])
                kept_labels.append(labels[mask])
                if captions is not None:
                    kept_captions.append(captions[mask])
        if jax.process_index() == 0 and keep:
            kept = np.concatenate(kept_images)[:keep]
            if e.grid_images:
                grid = images.make_grid(kept[: e.grid_images])
                images.save_png(str(directory / "samples.png"), grid)
                self.writer.write_images(step, {setting.name: grid[None]})
            if e.save_samples:
                extra = {"captions": np.concatenate(kept_captions)[:keep]} if kept_captions else {}
                files.save_npz(
                    directory / "samples.npz", arr_0=kept,
                    labels=np.concatenate(kept_labels)[:keep], **extra,
                )
        result = scorer.result() if scorer else {}
        if clip_scores:
            result["clip_score"] = metrics.mean_clip_score(np.concatenate(clip_scores))
        return result


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, max_chunks: int | None = None,
    progress: ProgressFn | None = None,
) -> list[dict]:
    """Runs the eval job on the run in `workdir`; returns the sweep rows of the last step evaluated.

    `max_chunks` stops after that many new sample chunks (a time slice; rerun to continue), in
    which case nothing is scored and the result is []. `progress(done, total)` follows the sweep
    of each evaluated step, in sampler steps times chunks.
    """
    from mcm_jax.data import input_pipeline  # TensorFlow only here

    setup = RunSetup.create(config)  # validates the run's config, the one time in an eval job
    settings = validate(config, jax.device_count())
    input_pipeline.prepare(config.data)
    e = config.eval
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    if e.poll:
        steps: Iterator[int] | list[int] = _poll_steps(ckpt, config, workdir)
    else:  # a missing step fails here, before anything heavy
        steps = [_agreed(checkpointing.resolve_step(ckpt, e.step, workdir))]
    check_run_matches(config, workdir)
    tag = e.name or f"n{e.num_samples}_seed{e.seed}_ema{e.ema_index}"
    root = epath.Path(workdir) / "eval" / tag
    paths.check_writable(
        str(root), "workdir", f"the eval job writes its samples and scores into {root}"
    )
    job = _Job(setup, settings, root)
    rows: list[dict] = []
    for step in steps:
        rows = job.evaluate_step(ckpt, step, max_chunks, progress or (lambda done, total: None))
    job.writer.close()
    ckpt.close()
    return rows
