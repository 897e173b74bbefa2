"""The experiment configuration: defaults for every field and the checks run before any compute.

Config files in configs/ (loaded by path: `load_config_file`) build on `base_config()` through
mcm_jax.config.presets; every field can be overridden on the command line (`--config.mcm.student_steps=8`)
except `model.name` (the config file's argument picks the network). `validate` turns a bad value
into a ValueError that names the field and says what is allowed; the loss blocks are checked by
the loss layer as `diffusion_loss_config` and `consistency_loss_config` build their configs, and
`run_setup.validate` runs all three, once per job.
"""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections
from flax import traverse_util

from mcm_jax.config.data_config import default_data_config, num_classes, text_shape
from mcm_jax.config.eval_config import default_eval_config
from mcm_jax.method import losses
from mcm_jax.method.schedules import get_schedule

OBJECTIVES = ("diffusion", "mcm")
SAMPLERS = ("ddim", "addim")
LR_DECAYS = ("constant", "cosine")


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults (the paper's MCM settings where it gives them)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.objective = "diffusion"  # "diffusion" (teacher) | "mcm" (student, CT or CD)
    # A laptop smoke test of the experiment (the config file's `runlocal` argument,
    # presets.runlocal): where its data is not prepared, synthetic examples (mcm_jax.runlocal).
    c.runlocal = False

    # The network: a named mcm_jax.models.model_config (model.name) with fields overridden;
    # filled by with_model(). Image resolution, channels and classes are the data's.
    c.model = ml_collections.ConfigDict()

    c.data = default_data_config("digits")  # fields: see mcm_jax.config.data_config

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "cosine"  # cosine | shifted_cosine | interpolated_cosine
    c.schedule.logsnr_min = -15.0
    c.schedule.logsnr_max = 15.0
    c.schedule.noise_resolution = 0  # shifted_cosine: r_n
    c.schedule.noise_resolution_low = 0  # interpolated_cosine: r_lo
    c.schedule.noise_resolution_high = 0  # interpolated_cosine: r_hi

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.weighting = "v"  # v | x | snr_plus_one | truncated_snr (see mcm.weighting)
    c.diffusion.distance = "mse"
    c.diffusion.huber_c = 1e-4
    c.diffusion.label_dropout = 0.0  # > 0 trains for classifier-free guidance
    c.diffusion.multiscale_pools = 0  # > 0: simple diffusion's multiscale loss over this many 2x2 pools

    c.mcm = ml_collections.ConfigDict()
    c.mcm.method = "cd"  # ct | cd | pd (progressive distillation, the baseline: docs/method.md §10)
    c.mcm.student_steps = 8
    c.mcm.teacher_steps_start = 64
    c.mcm.teacher_steps_end = 1280
    c.mcm.anneal_iterations = 100_000
    c.mcm.xvar_frac = 0.75
    c.mcm.huber_c = 1e-4
    # v: pseudo-Huber of the v-space error (x − x̂)/σ_t, the paper's "v-loss"; snr_plus_one:
    # (SNR(t) + 1) × pseudo-Huber of the x-space error, Algorithm 1 read literally; x: unweighted;
    # truncated_snr: max(SNR(t), 1) × the x-space distance (progressive distillation's).
    c.mcm.weighting = "v"
    c.mcm.guidance_weight = 0.0
    c.mcm.multiscale_pools = 0  # > 0: the consistency loss over this many 2x2 pools, as diffusion's
    # pd: the first round's student takes pd_start_steps (its teacher twice as many DDIM steps);
    # each round of pd_round_steps iterations halves it, down to student_steps in the last round.
    c.mcm.pd_start_steps = 1024
    c.mcm.pd_round_steps = 50_000

    c.teacher = ml_collections.ConfigDict()
    c.teacher.workdir = ""  # a diffusion run's workdir (needed by objective "mcm")
    c.teacher.step = -1  # -1: the latest checkpoint
    c.teacher.ema_index = 0  # which of the teacher's EMA parameter sets to use

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.decay = "constant"  # constant | cosine (to 0 at num_steps)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.99
    c.optimizer.eps = 1e-12
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 1.0
    c.ema_decays = (0.9999,)

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 2048  # global, over all processes and devices
    c.training.num_steps = 200_000
    c.training.log_every = 100
    c.training.checkpoint_every = 5000
    c.training.keep_checkpoints = 3  # the last N ...
    c.training.keep_period = 50_000  # ... and every K-th forever (0: none)
    c.training.async_checkpointing = True
    c.training.sample_every = 10_000  # sample grids from the EMA parameters (0: never)
    c.training.sample_images = 64
    c.training.sample_method = "addim"  # the teacher's sampler; students always use S-step DDIM
    c.training.sample_steps = 128  # the teacher's sampler steps
    c.training.profile_steps = 0  # > 0: trace this many steps after warm-up (process 0) into the workdir

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis; -1: all that the fsdp axis leaves
    c.mesh.fsdp = 1  # devices that shard parameters and optimizer state
    c.mesh.fsdp_min_size = 2**18  # parameters smaller than this stay replicated

    # bf16 dense peak per device for MFU. 0: look up jax.devices()[0].device_kind in
    # mcm_jax.train.hardware (an unknown device reports no MFU); > 0: use this value instead.
    c.peak_tflops_per_device = 0.0
    # JAX's persistent compilation cache (with GPU autotuning results): a restart or the next run
    # of the same program skips its compile. Local or gs://; "" turns it off; the environment
    # variable JAX_COMPILATION_CACHE_DIR, where set, takes precedence.
    c.compilation_cache_dir = "~/.cache/mcm_jax/jax_compilation_cache"
    c.eval = default_eval_config()  # the eval job (--mode=eval); fields: see mcm_jax.config.eval_config
    return c


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file in `spec`, "path[:arg]" as --config takes it. The file
    is loaded by path, as ml_collections' config_flags loads it (configs/ is not a package);
    a missing file is a ValueError naming it."""
    path, _, arg = spec.partition(":")
    return config_module(path).get_config(arg)


def config_module(path: str):
    """The config file at `path` as a module (its `get_config`, its `ARGUMENTS`: the values its
    argument takes, presets.*_ARGS); a missing file is a ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"config: no config file {path!r}")
    module_name = "mcm_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def parse_arg(arg: str, **defaults: bool | int | float | str) -> dict:
    """Parses a config argument string 'a=1,b=x' over `defaults`, each value cast to its default's
    type (bool from true/false/1/0, as big_vision's `parse_arg`; a bare key of a bool is True:
    'runlocal'); unknown keys are an error."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep and isinstance(defaults.get(key), bool):
            sep, value = "=", "true"
        if not sep or key not in defaults:
            raise ValueError(
                f"config argument {item!r}: expected key=value with key in {sorted(defaults)}"
            )
        values[key] = _cast_arg(key, value, defaults[key])
    return values


_BOOLS = {"true": True, "1": True, "false": False, "0": False}
_EXPECTED = {bool: "true, false, 1 or 0", int: "an int", float: "a float", str: "a str"}


def _cast_arg(key: str, value: str, default: bool | int | float | str) -> bool | int | float | str:
    """`value` as the type of `default`; a ValueError names `key` and the type expected."""
    kind = type(default)
    if kind not in _EXPECTED:
        raise TypeError(f"config argument {key}: default {default!r} is not one of {list(_EXPECTED)}")
    try:
        return _BOOLS[value.lower()] if kind is bool else kind(value)
    except (KeyError, ValueError):
        raise ValueError(f"config argument {key}={value!r}: expected {_EXPECTED[kind]}") from None


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """Every field as {"optimizer.learning_rate": 1e-4, ...} for `write_hparams`, which takes only
    scalars: nested fields get dotted keys, and other values (tuples, None) their `str`."""
    flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def override_error(config: ml_collections.ConfigDict, dotted: str) -> str | None:
    """Why a command-line override of the dotted path `dotted` (e.g. "training.bogus_key") cannot
    apply to `config`, naming the closest valid keys for an unknown one; None if it can."""
    node, where = config, "config"
    for part in dotted.split("."):
        key, index = part.split("[", 1) if "[" in part else (part, None)
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{where} holds a value ({node!r}), not fields such as {key!r}"
        if key not in node:
            closest = difflib.get_close_matches(key, list(node.keys()), n=3, cutoff=0.0)
            return f"unknown field {key!r} in {where}; closest: {', '.join(closest)}"
        node, where = node[key], f"{where}.{key}"
        if index is not None and isinstance(node, tuple):
            return f"{where} is a tuple and cannot be set item by item; set it whole: '(a, b)'"
    return None


def with_model(config: ml_collections.ConfigDict, name: str, **overrides) -> ml_collections.ConfigDict:
    """Sets `model` to the named UViT configuration plus overrides of its fields; its `name` field
    says which, the one place the name is kept (the command line cannot change it: that would
    change no layer)."""
    from mcm_jax.models import model_config

    config.model = model_config(name)
    for key, value in overrides.items():
        if key not in config.model or key == "name":
            raise ValueError(f"with_model: {key!r} is no field of the network config to override")
        config.model[key] = value
    return config


def schedule_from_config(config: ml_collections.ConfigDict):
    """The noise schedule the config names, at the data resolution."""
    s = config.schedule
    kwargs = {"logsnr_min": s.logsnr_min, "logsnr_max": s.logsnr_max}
    if s.name == "shifted_cosine":
        kwargs.update(image_resolution=config.data.resolution, noise_resolution=s.noise_resolution)
    elif s.name == "interpolated_cosine":
        kwargs.update(
            image_resolution=config.data.resolution,
            noise_resolution_low=s.noise_resolution_low,
            noise_resolution_high=s.noise_resolution_high,
        )
    try:
        return get_schedule(s.name, **kwargs)
    except ValueError as e:
        raise ValueError(f"config.schedule: {e}") from None


def null_label(config: ml_collections.ConfigDict) -> int:
    """The label index that means 'no class' (classifier-free guidance, unconditional data): the
    data set's number of classes."""
    return num_classes(config.data)


def check_pools_fit(config: ml_collections.ConfigDict, section: str) -> None:
    """config.<section>.multiscale_pools 2x2 poolings must divide the image resolution."""
    pools = config[section].multiscale_pools
    _require(
        config.data.resolution % 2**pools == 0,
        f"config.{section}.multiscale_pools: {pools} 2x2 poolings need a resolution divisible by "
        f"{2**pools}, got config.data.resolution={config.data.resolution}",
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks every field the trainer uses, except the loss blocks (`config.diffusion`,
    `config.mcm`), which the loss layer checks as it builds its configs
    (`run_setup.validate` runs both); raises ValueError naming the first bad one."""
    import jax

    from mcm_jax.models import NAMES, validate as validate_model

    _require(
        config.objective in OBJECTIVES,
        f"config.objective: {config.objective!r} is not one of {OBJECTIVES}",
    )
    _require(
        not config.data.synthetic or config.runlocal,
        "config.data.synthetic: only a runlocal smoke test (the config file's runlocal argument) "
        "trains on synthetic examples; a real run reads its data from config.data.data_dir",
    )
    _require(
        config.model.name in NAMES,
        f"config.model.name: {config.model.name!r} is not one of {NAMES}; choose the network "
        "with the config file's argument (e.g. --config=configs/digits_diffusion.py:model=digits)",
    )
    validate_model(config.model, config.data.resolution, "config.data.resolution", "config.model.")
    try:
        text_shape(config.data)  # caption data: text_length and text_width
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    schedule_from_config(config)
    check_pools_fit(config, "diffusion")
    if config.objective == "mcm":
        check_pools_fit(config, "mcm")
        _require(
            bool(config.teacher.workdir),
            "config.teacher.workdir: objective 'mcm' needs the workdir of a trained diffusion teacher",
        )
    t = config.training
    for field in ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        _require(
            isinstance(t[field], int) and t[field] >= 1,
            f"config.training.{field}: must be an integer >= 1, got {t[field]!r}",
        )
    _require(t.sample_every >= 0, f"config.training.sample_every: must be >= 0, got {t.sample_every}")
    if t.sample_every:
        for field in ("sample_images", "sample_steps"):
            _require(
                isinstance(t[field], int) and t[field] >= 1,
                f"config.training.{field}: must be an integer >= 1 while sample_every > 0, got "
                f"{t[field]!r} (sample_every=0 draws no sample grids)",
            )
    _require(
        isinstance(t.profile_steps, int) and t.profile_steps >= 0,
        f"config.training.profile_steps: must be an integer >= 0, got {t.profile_steps!r}",
    )
    _require(
        config.peak_tflops_per_device >= 0,
        "config.peak_tflops_per_device: must be >= 0 (0 looks the device up in mcm_jax.train.hardware), "
        f"got {config.peak_tflops_per_device}",
    )
    _require(
        isinstance(config.compilation_cache_dir, str),
        "config.compilation_cache_dir: must be a directory (local or gs://), or '' for no cache; "
        f"got {config.compilation_cache_dir!r}",
    )
    _require(
        t.sample_method in SAMPLERS,
        f"config.training.sample_method: {t.sample_method!r} is not one of {SAMPLERS}",
    )
    _require(
        len(config.ema_decays) >= 1
        and all(isinstance(d, (int, float)) and 0.0 <= d < 1.0 for d in config.ema_decays),
        f"config.ema_decays: need at least one decay in [0, 1), got {tuple(config.ema_decays)}",
    )
    _require(
        0 <= config.teacher.ema_index,
        f"config.teacher.ema_index: must be >= 0, got {config.teacher.ema_index}",
    )
    o = config.optimizer
    _require(o.learning_rate > 0, f"config.optimizer.learning_rate: must be > 0, got {o.learning_rate}")
    _require(o.warmup_steps >= 0, f"config.optimizer.warmup_steps: must be >= 0, got {o.warmup_steps}")
    _require(o.decay in LR_DECAYS, f"config.optimizer.decay: {o.decay!r} is not one of {LR_DECAYS}")
    _require(
        o.decay != "cosine" or o.warmup_steps < config.training.num_steps,
        f"config.optimizer.warmup_steps: {o.warmup_steps} leaves no steps of the cosine decay "
        f"(training.num_steps {config.training.num_steps}); warm up for fewer steps",
    )
    _require(
        o.grad_clip_norm >= 0, f"config.optimizer.grad_clip_norm: must be >= 0, got {o.grad_clip_norm}"
    )

    num_devices = jax.device_count() if num_devices is None else num_devices
    fsdp = config.mesh.fsdp
    _require(
        isinstance(fsdp, int) and fsdp >= 1 and num_devices % fsdp == 0,
        f"config.mesh.fsdp: must be an integer >= 1 dividing the {num_devices} devices, got {fsdp!r}",
    )
    data = num_devices // fsdp if config.mesh.data == -1 else config.mesh.data
    _require(
        data * fsdp == num_devices,
        f"config.mesh.data ({config.mesh.data}) × config.mesh.fsdp ({fsdp}) must equal the "
        f"{num_devices} devices (use data=-1 to fill)",
    )
    _require(
        t.batch_size % num_devices == 0,
        f"config.training.batch_size: {t.batch_size} is not divisible by the {num_devices} devices",
    )


def diffusion_loss_config(config: ml_collections.ConfigDict) -> losses.DiffusionLossConfig:
    """The teacher's loss: `config.diffusion`'s fields as they are, plus the data's null label;
    errors name the field."""
    try:
        return losses.DiffusionLossConfig(**config.diffusion, null_label=null_label(config))
    except ValueError as e:
        raise ValueError(f"config.diffusion: {e}") from None


def consistency_loss_config(config: ml_collections.ConfigDict) -> losses.ConsistencyLossConfig:
    """The student's loss: `config.mcm`'s fields as they are, plus the data's null label; errors
    name the field. Progressive distillation must reach its last round within training.num_steps."""
    try:
        loss_config = losses.ConsistencyLossConfig(
            **config.mcm, null_label=null_label(config)
        )
    except ValueError as e:
        raise ValueError(f"config.mcm: {e}") from None
    if loss_config.method == "pd":
        rounds = losses.pd_rounds(loss_config.pd_start_steps, loss_config.student_steps)
        last_start = (rounds - 1) * loss_config.pd_round_steps
        if config.training.num_steps <= last_start:
            raise ValueError(
                f"config.training.num_steps: {config.training.num_steps} ends before the last of "
                f"the {rounds} progressive distillation rounds ({loss_config.pd_start_steps} → "
                f"{loss_config.student_steps} steps) starts at step {last_start} "
                f"(mcm.pd_round_steps={loss_config.pd_round_steps}); give at least "
                f"{rounds * loss_config.pd_round_steps}"
            )
    return loss_config
