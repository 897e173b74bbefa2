"""The experiment families behind the config files in configs/: one builder per file, taking the
same argument string (`presets.digits_mcm("steps=4,method=cd")` is
`--config=configs/digits_mcm.py:steps=4,method=cd`), and the pieces they share.

Each family declares the values its argument takes (`*_ARGS`, which its config file exposes as
`ARGUMENTS`: the tests run each value, launch/sweep.py sweeps them). Every file also takes
`runlocal` (big_vision's convention, `configs/<file>.py:...,runlocal`): the same experiment as a
smoke test on a laptop (`runlocal`).

A config file imports only mcm_jax, so configs/ is a folder of files loaded by path (as
ml_collections' config_flags loads them), not a package; tests and the main job build the same
configs from here. Each config file's docstring says where its settings come from.
"""

from __future__ import annotations

import ml_collections

from mcm_jax.config import config_lib, data_config
from mcm_jax.method import losses

SIZES = ("small", "large")
# The paper's student training length (section 5.1: 200k iterations at batch 2048).
STUDENT_ITERATIONS = 200_000
METHODS = ("cd", "ct")
# Classifier-free guidance of the small ImageNet128 teacher's eval and of its CD student: ours,
# the paper gives none (why it is small: configs/imagenet128_diffusion.py).
IMAGENET128_GUIDANCE_WEIGHT = 0.2
# Text-to-image (paper §5.2, appendix A.1): two CD students distil the teacher guided at these.
T2I_GUIDANCE_WEIGHTS = (0.5, 3.0)


# The values each family's argument takes: key -> values, the first the default. A str argument
# takes exactly these; a number any value in range, these being the ones its docstring names.
DIGITS_DIFFUSION_ARGS = {"model": ("digits", "tiny")}
STUDENT_ARGS = {"steps": (8, 1), "method": METHODS}
DIGITS_MCM_ARGS = {**STUDENT_ARGS, **DIGITS_DIFFUSION_ARGS}
NO_ARGS: dict[str, tuple] = {}
IMAGENET_DIFFUSION_ARGS = {"size": SIZES}
IMAGENET_MCM_ARGS = {**STUDENT_ARGS, "size": SIZES}
T2I_MCM_ARGS = {"steps": (8, 4, 16), "guidance": (T2I_GUIDANCE_WEIGHTS[1], T2I_GUIDANCE_WEIGHTS[0])}
# Progressive distillation (the baseline): S is the last round's student steps.
PD_ARGS = {"steps": (8, 1)}
DIGITS_PD_ARGS = {**PD_ARGS, **DIGITS_DIFFUSION_ARGS}
IMAGENET_PD_ARGS = {**PD_ARGS, "size": SIZES}
# Progressive distillation's first student steps (its teacher takes twice as many DDIM steps).
# Ours: the ImageNet teacher's 512 steps of the paper's Table 1 baseline (PD's are DDIM steps);
# digits: 64, the digits CD students' first teacher steps (configs/digits_mcm.py).
IMAGENET_PD_START_STEPS = 256
DIGITS_PD_START_STEPS = 32

# runlocal: the most positions a transformer level of the tiny network attends over (32x32).
RUNLOCAL_TOKENS = 32 * 32
# runlocal: the text encoder's width of the tiny random T5 that embeds synthetic captions.
RUNLOCAL_TEXT_WIDTH = 64
# runlocal: training steps, with a checkpoint at RUNLOCAL_CHECKPOINT_EVERY and the last.
RUNLOCAL_STEPS = 3
RUNLOCAL_CHECKPOINT_EVERY = 2


def parse_args(arg: str, spec: dict[str, tuple]) -> dict:
    """The config argument string parsed over `spec` (a `*_ARGS`) plus `runlocal`: each value of
    its default's type, a str one of the declared values, `steps` >= 1."""
    args = config_lib.parse_arg(arg, runlocal=False, **{k: v[0] for k, v in spec.items()})
    for key, values in spec.items():
        if isinstance(values[0], str):
            choice(args, key, values)
    if "steps" in spec and args["steps"] < 1:
        raise ValueError(f"config argument steps={args['steps']}: expected an integer >= 1")
    return args


def given(arg: str, key: str) -> bool:
    """Whether the argument string sets `key` (rather than leaving it at its default)."""
    return any(item.partition("=")[0] == key for item in (arg or "").split(","))


def choice(args: dict, key: str, allowed: tuple[str, ...]) -> str:
    """The config argument `key`, checked against `allowed`."""
    value = args[key]
    if value not in allowed:
        raise ValueError(f"config argument {key}={value!r}: expected one of {', '.join(allowed)}")
    return value


def runlocal(config: ml_collections.ConfigDict, *, tiny: bool = True) -> ml_collections.ConfigDict:
    """The experiment of `config` as a laptop smoke test: the same data, resolution, schedule,
    losses, guidance, text conditioning and samplers, on the `tiny` network with the family's
    levels (its ResNet or transformer at each resolution, but a ResNet where a transformer would
    attend over more than 32x32 positions; its dropout; `tiny=False` keeps the network), batch 8,
    3 steps with checkpoints at 2 and 3 (a run stopped at 2 resumes) and a grid of 4 samples at
    the last (a second grid would run the same compiled sampler again), one device, and an eval
    of 8 samples with 4 teacher steps. FID needs the converted Inception weights, so the eval
    scores with FD-digits on digits and nothing elsewhere (`--config.eval.metric=fid` and its
    files turn it back on). Text-to-image data is embedded by a tiny random T5 of width
    RUNLOCAL_TEXT_WIDTH; the data is made at the training run's start, the CLIP at the first
    eval's (mcm_jax.runlocal)."""
    from mcm_jax.models.configs import RESNET, TRANSFORMER

    config.runlocal = True
    if tiny:
        m = config.model
        # Level i is at resolution / 2**i; attention over more positions than RUNLOCAL_TOKENS
        # (a transformer level above 32 px) takes minutes a step on a CPU: a ResNet level there.
        side = config.data.resolution
        kinds = tuple(
            kind if kind == RESNET or (side // 2**i) ** 2 <= RUNLOCAL_TOKENS else RESNET
            for i, kind in enumerate(m.level_kinds)
        )
        config_lib.with_model(
            config, "tiny", level_kinds=kinds,
            level_channels=tuple(16 if kind == TRANSFORMER else 8 for kind in kinds),
            level_blocks=(1,) * len(kinds), level_dropout=tuple(m.level_dropout),
            middle_dropout=m.middle_dropout,
        )
    config.data.shuffle_buffer = 64
    config.data.autotune = False  # its teardown would hold the run's end (data_config)
    if data_config.dataset_spec(config.data.name).captioned:
        config.data.text_width = RUNLOCAL_TEXT_WIDTH
    config.mesh.update(data=-1, fsdp=1)
    config.optimizer.warmup_steps = 1
    config.training.update(
        batch_size=8, num_steps=RUNLOCAL_STEPS, log_every=1,
        checkpoint_every=RUNLOCAL_CHECKPOINT_EVERY, keep_period=0,
        sample_every=RUNLOCAL_STEPS, sample_images=4, sample_steps=4,  # one grid, at the last step
    )
    config.eval.update(num_samples=8, batch_size=8, grid_images=8)
    if config.eval.sweep_steps:
        config.eval.sweep_steps = (4,)
    if config.data.name != "digits":
        config.eval.metric = "none"
    return config


def student_args(arg: str, spec: dict[str, tuple] = STUDENT_ARGS) -> dict:
    """Parses `steps=S,method=cd|ct` and the rest of `spec`; `steps` comes back as an int."""
    return parse_args(arg, spec)


def make_student(config: ml_collections.ConfigDict, steps: int, method: str):
    """Turns a teacher config into its S-step student with the paper's MCM settings: the other
    `config.mcm` fields keep `config_lib.base_config`'s defaults, which are the paper's."""
    config.objective = "mcm"
    config.mcm.method = method
    config.mcm.student_steps = steps
    config.teacher.workdir = ""
    config.training.num_steps = STUDENT_ITERATIONS
    return config


def digits_diffusion(arg: str = "") -> ml_collections.ConfigDict:
    """configs/digits_diffusion.py; arg: `model=digits|tiny` (tiny: the test network), `runlocal`
    (tiny unless `model` is given)."""
    args = parse_args(arg, DIGITS_DIFFUSION_ARGS)
    model = args["model"] if given(arg, "model") or not args["runlocal"] else "tiny"
    config = config_lib.with_model(config_lib.base_config(), model)
    config.objective = "diffusion"
    config.data.update(name="digits", resolution=16)
    config.diffusion.label_dropout = 0.1
    config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
    config.ema_decays = (0.999,)
    config.training.update(
        batch_size=128, num_steps=3000, log_every=100, checkpoint_every=500, keep_period=0,
        sample_every=1000, sample_steps=64,
    )
    return runlocal(config, tiny=False) if args["runlocal"] else config


def digits_mcm(arg: str = "") -> ml_collections.ConfigDict:
    """configs/digits_mcm.py; arg: `steps=S,method=cd|ct,model=digits|tiny`, `runlocal`."""
    args = student_args(arg, DIGITS_MCM_ARGS)
    model = args["model"] if given(arg, "model") or not args["runlocal"] else "tiny"
    config = make_student(digits_diffusion(f"model={model}"), args["steps"], args["method"])
    config.mcm.teacher_steps_end = 256
    config.mcm.anneal_iterations = 1000
    config.optimizer.learning_rate = 2e-4
    config.optimizer.warmup_steps = 50
    config.training.num_steps = 1500
    return runlocal(config, tiny=False) if args["runlocal"] else config


def cifar10_diffusion(arg: str = "") -> ml_collections.ConfigDict:
    """configs/cifar10_diffusion.py; arg: `runlocal` only."""
    args = parse_args(arg, NO_ARGS)
    config = config_lib.with_model(config_lib.base_config(), "cifar10")
    config.objective = "diffusion"

    config.data.update(name="cifar10", resolution=32, eval_split="test", random_flip=True)
    config.schedule.name = "cosine"
    config.diffusion.label_dropout = 0.1
    config.optimizer.update(learning_rate=2e-4, warmup_steps=1000, b2=0.99, grad_clip_norm=1.0)
    config.ema_decays = (0.9999,)
    config.training.update(
        batch_size=512, num_steps=200_000, checkpoint_every=5000, keep_period=50_000,
        sample_every=10_000,
    )
    return runlocal(config) if args["runlocal"] else config


def cifar10_mcm(arg: str = "") -> ml_collections.ConfigDict:
    """configs/cifar10_mcm.py; arg: `steps=S,method=cd|ct`, `runlocal`."""
    args = student_args(arg)
    config = make_student(cifar10_diffusion(), args["steps"], args["method"])
    config.mcm.anneal_iterations = 50_000
    config.training.num_steps = 100_000
    return runlocal(config) if args["runlocal"] else config


def imagenet_teacher(resolution: int, arg: str) -> ml_collections.ConfigDict:
    """The ImageNet teacher at `resolution` (64 or 128) for the argument string `size=...`, before
    the eval defaults and the 128 px specifics of `imagenet_diffusion`."""
    size = parse_args(arg, IMAGENET_DIFFUSION_ARGS)["size"]
    config = config_lib.with_model(config_lib.base_config(), f"imagenet{resolution}_{size}")
    config.objective = "diffusion"

    config.data.update(
        name="imagenet2012", resolution=resolution, eval_split="validation", random_flip=True
    )
    config.schedule.update(
        name="interpolated_cosine", noise_resolution_low=32, noise_resolution_high=resolution
    )
    config.diffusion.update(weighting="v", distance="mse", label_dropout=0.1)
    config.optimizer.update(
        learning_rate=1e-4, warmup_steps=1000, decay="constant", b1=0.9, b2=0.99,
        weight_decay=0.0, grad_clip_norm=1.0,
    )
    config.ema_decays = (0.9999,)
    config.training.update(
        batch_size=2048, num_steps=500_000, checkpoint_every=5000, keep_period=50_000,
        sample_every=10_000,
    )
    return config


def imagenet_diffusion(resolution: int, arg: str = "") -> ml_collections.ConfigDict:
    """configs/imagenet{64,128}_diffusion.py; arg: `size=small|large`, `runlocal`. Evaluates as
    the paper's diffusion baseline (Table 1, last row): 512 aDDIM steps; at 128 px the multiscale
    loss with one pooling and, for the small network, guided evals."""
    args = parse_args(arg, IMAGENET_DIFFUSION_ARGS)
    config = imagenet_teacher(resolution, f"size={args['size']}")
    config.eval.sweep_steps = (512,)
    config.eval.sweep_methods = ("addim",)
    if resolution == 128:
        config.diffusion.multiscale_pools = 1
        if config.model.name == "imagenet128_small":
            config.eval.guidance_weight = IMAGENET128_GUIDANCE_WEIGHT
    return runlocal(config) if args["runlocal"] else config


def imagenet_mcm(resolution: int, arg: str = "") -> ml_collections.ConfigDict:
    """configs/imagenet{64,128}_mcm.py; arg: `steps=S,method=cd|ct,size=small|large`,
    `runlocal`. At 128 px the multiscale consistency loss, and the small CD student distils the
    guided teacher."""
    args = student_args(arg, IMAGENET_MCM_ARGS)
    teacher = imagenet_teacher(resolution, f"size={args['size']}")
    config = make_student(teacher, args["steps"], args["method"])
    if resolution == 128:
        if config.model.name == "imagenet128_small" and config.mcm.method == "cd":
            config.mcm.guidance_weight = IMAGENET128_GUIDANCE_WEIGHT
        config.mcm.multiscale_pools = 1
    return runlocal(config) if args["runlocal"] else config


def t2i_diffusion(arg: str = "") -> ml_collections.ConfigDict:
    """configs/t2i_512_diffusion.py; arg: `runlocal` only. The paper's 512 px text-to-image
    teacher (appendix A.1, Table 6) on caption data embedded by T5 v1.1 XXL (4096 wide, 128
    tokens)."""
    args = parse_args(arg, NO_ARGS)
    config = config_lib.with_model(config_lib.base_config(), "t2i512")
    config.objective = "diffusion"
    config.data = data_config.default_data_config("captions")
    config.data.update(resolution=512, text_length=128, text_width=4096)
    config.schedule.update(
        name="interpolated_cosine", noise_resolution_low=32, noise_resolution_high=512
    )
    # Simple diffusion's multiscale loss from 512 down to 32 px, the schedule's low end.
    config.diffusion.update(weighting="v", distance="mse", label_dropout=0.1, multiscale_pools=4)
    config.optimizer.update(
        learning_rate=1e-4, warmup_steps=1000, decay="constant", b1=0.9, b2=0.99,
        weight_decay=0.0, grad_clip_norm=1.0,
    )
    config.ema_decays = (0.9999,)
    config.mesh.fsdp = 8
    config.training.update(
        batch_size=2048, num_steps=500_000, checkpoint_every=2000, keep_period=50_000,
        sample_every=10_000, sample_images=16,
    )
    config.eval.update(
        num_samples=30_000, batch_size=256, sweep_steps=(256,), sweep_methods=("ddim",),
        guidance_weight=T2I_GUIDANCE_WEIGHTS[1],
    )
    return runlocal(config) if args["runlocal"] else config


def t2i_mcm(arg: str = "") -> ml_collections.ConfigDict:
    """configs/t2i_512_mcm.py; arg: `steps=S,guidance=W` (defaults 8 and 3.0), `runlocal`. The
    paper's CD students: 256 teacher steps without annealing, x_var from the conditional output
    (losses.consistency_loss_at), pseudo-Huber c = 1, 30k steps at batch 2048."""
    args = parse_args(arg, T2I_MCM_ARGS)
    if args["guidance"] < 0:
        raise ValueError(f"config argument guidance={args['guidance']}: expected a weight >= 0")
    config = make_student(t2i_diffusion(), args["steps"], "cd")
    config.mcm.update(
        teacher_steps_start=256, teacher_steps_end=256, xvar_frac=0.75, huber_c=1.0,
        guidance_weight=float(args["guidance"]), multiscale_pools=config.diffusion.multiscale_pools,
    )
    config.training.num_steps = 30_000
    config.eval.update(sweep_steps=(), sweep_methods=(), guidance_weight=0.0)
    return runlocal(config) if args["runlocal"] else config


def make_pd(
    config: ml_collections.ConfigDict, steps: int, start_steps: int, budget: int
) -> ml_collections.ConfigDict:
    """Turns a teacher config into progressive distillation down to `steps` (S) from
    `start_steps` (N) student steps: rounds of equal length that together take at most `budget`
    iterations (the family's MCM budget: a like-for-like comparison), squared x-space error with
    the truncated SNR weighting max(SNR, 1) (Salimans & Ho 2022; docs/method.md §10)."""
    try:
        rounds = losses.pd_rounds(start_steps, steps)
    except ValueError as e:
        raise ValueError(f"config argument steps={steps}: {e}") from None
    config = make_student(config, steps, "pd")
    config.mcm.update(
        pd_start_steps=start_steps, pd_round_steps=budget // rounds, weighting="truncated_snr"
    )
    config.training.num_steps = rounds * (budget // rounds)
    return config


def pd_runlocal(config: ml_collections.ConfigDict, *, tiny: bool) -> ml_collections.ConfigDict:
    """`runlocal` for progressive distillation: two rounds (from 2S to S student steps), the
    first of one step, so a smoke test crosses a round and resumes in the last."""
    config = runlocal(config, tiny=tiny)
    config.mcm.update(pd_start_steps=2 * config.mcm.student_steps, pd_round_steps=1)
    return config


def digits_pd(arg: str = "") -> ml_collections.ConfigDict:
    """configs/digits_pd.py; arg: `steps=S,model=digits|tiny`, `runlocal`."""
    args = parse_args(arg, DIGITS_PD_ARGS)
    model = args["model"] if given(arg, "model") or not args["runlocal"] else "tiny"
    digits = digits_mcm(f"model={model}")
    config = make_pd(
        digits_diffusion(f"model={model}"), args["steps"], DIGITS_PD_START_STEPS,
        budget=digits.training.num_steps,
    )
    config.optimizer.update(
        learning_rate=digits.optimizer.learning_rate, warmup_steps=digits.optimizer.warmup_steps
    )
    return pd_runlocal(config, tiny=False) if args["runlocal"] else config


def imagenet_pd(resolution: int, arg: str = "") -> ml_collections.ConfigDict:
    """configs/imagenet{64,128}_pd.py; arg: `steps=S,size=small|large`, `runlocal`. The MCM
    students' budget (200k iterations at batch 2048) split into equal rounds from 256 student
    steps; at 128 px the multiscale loss, and the small network's first round distils the guided
    teacher (as its CD student does)."""
    args = parse_args(arg, IMAGENET_PD_ARGS)
    teacher = imagenet_teacher(resolution, f"size={args['size']}")
    config = make_pd(teacher, args["steps"], IMAGENET_PD_START_STEPS, STUDENT_ITERATIONS)
    if resolution == 128:
        if config.model.name == "imagenet128_small":
            config.mcm.guidance_weight = IMAGENET128_GUIDANCE_WEIGHT
        config.mcm.multiscale_pools = 1
    return pd_runlocal(config, tiny=True) if args["runlocal"] else config
