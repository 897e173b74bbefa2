"""The `config.eval` fields: what to sample, how many, and which metric to compute.

Light on purpose (ml_collections only), so config_lib can attach it to every config.
"""

from __future__ import annotations

import ml_collections

METRICS = ("auto", "fid", "fd_digits", "none")


def default_eval_config() -> ml_collections.ConfigDict:
    """Defaults of every eval field (FID on 50,000 samples of the latest checkpoint)."""
    c = ml_collections.ConfigDict()
    # Which parameters.
    c.step = -1  # checkpoint step; -1: the latest
    c.ema_index = 0  # which of the run's EMA parameter sets
    c.poll = False  # evaluate every checkpoint as it appears, until training.num_steps
    c.poll_interval_s = 60.0
    c.poll_timeout_s = 7200.0  # polling stops after this long without a new checkpoint
    # What to sample.
    c.num_samples = 50_000  # exactly this many, whatever the device count
    c.batch_size = 512  # global sampling batch = one resumable chunk; divides by the devices
    c.seed = 0  # the noise of image i depends only on (seed, i)
    c.sweep_steps = ()  # sampler step counts; (): the run's own (teacher: training.sample_steps,
    #                     student: its S steps, the only count a student samples with)
    c.sweep_methods = ()  # "ddim" | "addim" (teachers); (): teacher training.sample_method,
    #                       student "ddim"
    c.guidance_weight = 0.0  # classifier-free guidance of a teacher (w; 0: none)
    # Text-to-image: sample i takes prompt i mod count of this embedded caption set's split.
    c.prompts_dir = ""  # "": data.data_dir
    c.prompts_split = ""  # "": data.eval_split
    c.x_var_table = ""  # aDDIM calibration npz (python -m mcm_jax.eval.calibrate); "": analytic x_var
    c.name = ""  # sub-directory of <workdir>/eval; "": n<num_samples>_seed<seed>_ema<ema_index>
    # Metric.
    c.metric = "auto"  # auto: fd_digits on digits, else fid | fid | fd_digits | none
    c.inception_weights = ""  # converted FID Inception .npz (python -m mcm_jax.eval.fid.convert)
    c.inception_sha256 = ""  # expected SHA-256 of it; "": the .sha256 file beside it
    c.reference_stats = ""  # npz with mu, sigma: ADM reference batch, or mcm_jax.eval.fid.reference's
    c.fd_digits_reference_split = "test"  # digits split whose classifier features are the reference
    # CLIP score of text-to-image samples against their captions (mcm_jax.eval.clip_score).
    c.clip_dir = ml_collections.config_dict.placeholder(str)  # KerasHub CLIP preset dir; None: off
    c.clip_batch_size = 64  # images per CLIP call (one compilation; the last batch is padded)
    # Outputs.
    c.grid_images = 64  # the first this many samples of each setting, as a PNG grid
    c.save_samples = False  # also write all samples as <dir>/samples.npz (uint8 arr_0, labels)
    # aDDIM calibration (python -m mcm_jax.eval.calibrate): η·‖x − x̂(z_t)‖²/d on a grid of t.
    c.calibration_eta = 0.75
    c.calibration_times = 33  # points of the uniform grid on [0, 1]
    c.calibration_batches = 4
    c.calibration_batch_size = 256  # global; divides by the devices
    c.calibration_split = ""  # TFDS split; "": data.eval_split
    return c


def check_ema_index(config: ml_collections.ConfigDict) -> None:
    """eval.ema_index must name one of the run's EMA parameter sets."""
    index, count = config.eval.ema_index, len(config.ema_decays)
    if not 0 <= index < count:
        raise ValueError(
            f"config.eval.ema_index: {index} but the run has {count} EMA parameter set(s) "
            f"(config.ema_decays={tuple(config.ema_decays)})"
        )


def check_clip_fields(eval_config: ml_collections.ConfigDict) -> None:
    """eval.clip_dir is None or a path; eval.clip_batch_size a positive integer."""
    clip_dir, batch_size = eval_config.clip_dir, eval_config.clip_batch_size
    if clip_dir is not None and not (isinstance(clip_dir, str) and clip_dir):
        raise ValueError(
            f"config.eval.clip_dir: a KerasHub CLIP preset directory or None (no CLIP score), "
            f"got {clip_dir!r}"
        )
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(
            f"config.eval.clip_batch_size: must be an integer >= 1, got {batch_size!r}"
        )
