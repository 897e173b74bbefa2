"""The experiment configs: every file and argument builds and validates, the paper's settings are
there, every field can be overridden from the command line, and bad arguments name their key.

Cheap by design: configs are built and validated (the model module is constructed, never
initialised or compiled).
"""

import ast
import itertools
import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from mcm_jax.config import config_lib, data_config
from mcm_jax.method import losses
from mcm_jax.run import run_setup

STUDENT_ARGS = [
    ",".join(parts)
    for parts in itertools.product(("steps=1", "steps=8"), ("method=cd", "method=ct"))
]
CASES = [
    *[(f"imagenet{r}_diffusion", a) for r in (64, 128) for a in ("", "size=small", "size=large")],
    *[
        (f"imagenet{r}_mcm", f"{a},size={size}")
        for r in (64, 128)
        for a in STUDENT_ARGS
        for size in ("small", "large")
    ],
    ("imagenet64_mcm", ""),
    ("cifar10_diffusion", ""),
    *[("cifar10_mcm", a) for a in ("", *STUDENT_ARGS)],
    ("digits_diffusion", ""),
    ("digits_diffusion", "model=tiny"),
    *[("digits_mcm", f"{a},model=tiny") for a in STUDENT_ARGS],
]


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def get_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
    """The config file configs/<name>.py with its argument, loaded by path as --config loads it."""
    return config_lib.load_config_file(f"{os.path.join(CONFIGS, name)}.py:{arg}")


def with_teacher(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    if config.objective == "mcm":
        config.teacher.workdir = "/teachers/run"
    return config


@pytest.mark.parametrize("name,arg", CASES, ids=[f"{n}:{a}" for n, a in CASES])
def test_every_config_builds_and_validates(name, arg):
    config = with_teacher(get_config(name, arg))
    for num_devices in (8, 256) if name.startswith("imagenet") else (8,):
        run_setup.validate(config, num_devices=num_devices)


@pytest.mark.parametrize("name,arg", CASES, ids=[f"{n}:{a}" for n, a in CASES])
def test_each_fact_has_one_field(name, arg):
    """The network's name is model.name only; resolution, channels and classes are the data's."""
    config = get_config(name, arg)
    assert "model_name" not in config
    assert not {"resolution", "channels", "num_classes"} & set(config.model)
    channels = 1 if config.data.name == "digits" else 3
    assert data_config.image_shape(config.data) == (config.data.resolution,) * 2 + (channels,)


def test_an_unknown_network_name_fails_naming_the_field():
    config = get_config("digits_diffusion", "model=tiny")
    config.model.name = "bogus"
    with pytest.raises(ValueError, match=r"config.model.name: 'bogus' is not one of \("):
        run_setup.validate(config, num_devices=8)


def test_mcm_configs_need_the_teacher_workdir():
    config = get_config("imagenet64_mcm", "steps=4")
    assert config.teacher.workdir == ""
    with pytest.raises(ValueError, match="config.teacher.workdir"):
        run_setup.validate(config, num_devices=8)


def _leaves(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", config, key


@pytest.mark.parametrize("name", sorted({n for n, _ in CASES}))
def test_every_field_has_a_type_the_command_line_can_set(name):
    """config_flags cannot override a plain None: such fields need a typed FieldReference."""
    for path, parent, key in _leaves(get_config(name)):
        if parent[key] is None:
            assert parent.get_ref(key).get_type() is not type(None), path


def test_command_line_overrides_reach_the_config():
    argv = [
        "main",
        "--config=configs/imagenet128_mcm.py:steps=4,method=cd,size=small",
        "--config.mcm.student_steps=2",
        "--config.teacher.workdir=gs://bucket/teacher",
        "--config.data.data_dir=gs://bucket/tfds",
        "--config.ema_decays=(0.999,0.9999)",
        "--config.model.middle_dropout=0.3",
        "--config.mcm.weighting=snr_plus_one",
        "--config.mcm.multiscale_pools=0",
    ]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert config.mcm.student_steps == 2
    assert config.teacher.workdir == "gs://bucket/teacher"
    assert config.data.data_dir == "gs://bucket/tfds"
    assert tuple(config.ema_decays) == (0.999, 0.9999)
    assert config.model.middle_dropout == 0.3
    assert config.mcm.guidance_weight == 0.2
    assert (config.mcm.weighting, config.mcm.multiscale_pools) == ("snr_plus_one", 0)


def test_imagenet_networks_are_those_of_the_paper_appendix_a1():
    small = get_config("imagenet64_diffusion", "size=small").model
    assert small.level_kinds == ("resnet", "transformer")
    assert small.level_channels == (256, 512)
    assert small.level_blocks == (3, 3)
    assert (small.middle_blocks, small.middle_channels, small.mlp_ratio) == (16, 1024, 4)
    assert small.level_dropout == (0.0, 0.0) and small.middle_dropout == 0.2

    large = get_config("imagenet64_diffusion", "size=large").model
    assert large.level_channels == (512, 1024) and large.middle_channels == 2048
    assert large.level_dropout == (0.0, 0.1) and large.middle_dropout == 0.1

    # ImageNet128 (paper appendix A.1): small 0.1 on the middle stack only; large 0.1 everywhere
    # except the 128x128 ResNet level.
    for size, channels, level_dropout in (
        ("small", (128, 256, 512), (0.0, 0.0, 0.0)),
        ("large", (256, 512, 1024), (0.0, 0.1, 0.1)),
    ):
        config = get_config("imagenet128_diffusion", f"size={size}")
        model = config.model
        assert model.level_kinds == ("resnet", "resnet", "transformer")
        assert model.level_channels == channels and model.level_blocks == (3, 3, 3)
        assert model.middle_blocks == 16 and model.middle_dropout == 0.1
        assert model.level_dropout == level_dropout
        assert config.data.resolution == 128
    assert get_config("cifar10_diffusion").model.name == "cifar10"


@pytest.mark.parametrize("resolution", [64, 128])
def test_imagenet_teachers_have_the_paper_data_and_schedule(resolution):
    config = get_config(f"imagenet{resolution}_diffusion", "size=large")
    assert config.objective == "diffusion"
    assert (config.data.name, config.data.resolution) == ("imagenet2012", resolution)
    assert config.data.random_flip and config.data.eval_split == "validation"
    s = config.schedule
    assert (s.name, s.noise_resolution_low, s.noise_resolution_high) == ("interpolated_cosine", 32, resolution)
    assert config.diffusion.label_dropout == 0.1
    # ImageNet128: simple diffusion's multiscale loss with one 2x2 pooling (paper appendix A.1).
    assert config.diffusion.multiscale_pools == (1 if resolution == 128 else 0)
    assert config.model.dtype == "bfloat16"
    assert config.training.batch_size == 2048


@pytest.mark.parametrize(
    "resolution,size,method", list(itertools.product((64, 128), ("small", "large"), ("cd", "ct")))
)
def test_imagenet_students_carry_the_paper_settings(resolution, size, method):
    config = get_config(f"imagenet{resolution}_mcm", f"steps=4,method={method},size={size}")
    m = config.mcm
    assert config.objective == "mcm" and (m.method, m.student_steps) == (method, 4)
    assert config.training.batch_size == 2048 and config.training.num_steps == 200_000
    assert (m.teacher_steps_start, m.teacher_steps_end, m.anneal_iterations) == (64, 1280, 100_000)
    assert (m.xvar_frac, m.huber_c, m.weighting) == (0.75, 1e-4, "v")
    # ImageNet128: the multiscale loss of appendix A.1 read literally, for students too.
    assert m.multiscale_pools == (1 if resolution == 128 else 0)
    guided = resolution == 128 and size == "small" and method == "cd"
    assert (m.guidance_weight > 0) == guided
    assert config.teacher.workdir == ""
    # The student starts from the teacher's weights: same network (dropout included), data, schedule.
    teacher = get_config(f"imagenet{resolution}_diffusion", f"size={size}")
    for field in ("model", "data", "schedule"):
        assert config[field].to_dict() == teacher[field].to_dict(), field


@pytest.mark.parametrize("resolution,size", list(itertools.product((64, 128), ("small", "large"))))
def test_imagenet_evals_default_to_the_paper_baselines(resolution, size):
    """Teachers: 512 aDDIM steps (Table 1's diffusion row), the small ImageNet128 one guided with
    the weight its CD student distils; students: their own S-step DDIM."""
    from mcm_jax.eval.evaluate import sweep_settings
    from mcm_jax.run.batch_sampler import SamplerSetting

    teacher = get_config(f"imagenet{resolution}_diffusion", f"size={size}")
    guided = resolution == 128 and size == "small"
    student = get_config(f"imagenet{resolution}_mcm", f"steps=4,method=cd,size={size}")
    assert student.mcm.guidance_weight == (0.2 if guided else 0.0)
    weight = student.mcm.guidance_weight
    assert sweep_settings(teacher) == [SamplerSetting("addim", 512, weight)]
    assert sweep_settings(student) == [SamplerSetting("ddim", 4)]


def test_cifar10_student_keeps_the_paper_anneal_proportion():
    config = get_config("cifar10_mcm", "steps=2,method=ct")
    assert config.mcm.anneal_iterations * 2 == config.training.num_steps
    assert (config.mcm.method, config.mcm.student_steps) == ("ct", 2)
    assert (config.data.name, config.data.resolution) == ("cifar10", 32)


@pytest.mark.parametrize(
    "name,arg,key",
    [
        ("imagenet64_diffusion", "sise=small", "sise"),
        ("imagenet64_diffusion", "size=medium", "size"),
        ("imagenet128_diffusion", "steps=8", "steps"),
        ("imagenet64_mcm", "steps=0", "steps"),
        ("imagenet128_mcm", "steps=two", "steps"),
        ("imagenet64_mcm", "method=gan", "method"),
        ("imagenet128_mcm", "steps=4,size=huge", "size"),
        ("imagenet64_mcm", "step=4", "step"),
        ("cifar10_diffusion", "size=small", "size"),
        ("cifar10_mcm", "method=xx", "method"),
        ("digits_mcm", "steps=-1", "steps"),
    ],
)
def test_bad_arguments_fail_naming_the_key(name, arg, key):
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        get_config(name, arg)


def test_parse_arg_casts_to_the_defaults_types():
    defaults = dict(steps=8, scale=1.0, flip=False, name="cd")
    args = config_lib.parse_arg("steps=4,scale=2.5,flip=True,name=ct", **defaults)
    assert args == dict(steps=4, scale=2.5, flip=True, name="ct")
    assert type(args["steps"]) is int and type(args["scale"]) is float
    assert config_lib.parse_arg("", **defaults) == defaults
    assert [config_lib.parse_arg(f"flip={v}", flip=True)["flip"] for v in ("false", "0", "1")] == [
        False,
        False,
        True,
    ]


@pytest.mark.parametrize(
    "arg,match",
    [
        ("steps=two", r"steps='two': expected an int"),
        ("steps=1.5", r"steps='1.5': expected an int"),
        ("scale=big", r"scale='big': expected a float"),
        ("flip=yes", r"flip='yes': expected true, false, 1 or 0"),
    ],
)
def test_parse_arg_errors_name_the_argument_and_type(arg, match):
    with pytest.raises(ValueError, match=match):
        config_lib.parse_arg(arg, steps=8, scale=1.0, flip=False)


@pytest.mark.parametrize("pools,match", [(5, "divisible by 32"), (-1, "integer >= 0")])
def test_bad_multiscale_pools_fail_naming_the_field(pools, match):
    config = get_config("digits_diffusion", "model=tiny")  # 16 px
    config.diffusion.multiscale_pools = pools
    with pytest.raises(ValueError, match=rf"config\.diffusion.*{match}"):
        run_setup.validate(config, num_devices=8)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("multiscale_pools", 5, "divisible by 32"),
        ("multiscale_pools", -1, "integer >= 0"),
        ("weighting", "snr", "weighting must be one of .*snr_plus_one"),
    ],
)
def test_bad_consistency_loss_fields_fail_naming_the_field(field, value, match):
    config = with_teacher(get_config("digits_mcm", "model=tiny"))  # 16 px
    config.mcm[field] = value
    with pytest.raises(ValueError, match=rf"config\.mcm.*{match}"):
        run_setup.validate(config, num_devices=8)


@pytest.mark.parametrize(
    "name,arg,overrides",
    [
        # Paper Table 2: constant teacher steps instead of the 64 -> 1280 anneal.
        *[
            ("imagenet128_mcm", "steps=4,method=cd,size=large",
             {"mcm.teacher_steps_start": n, "mcm.teacher_steps_end": n})
            for n in (128, 256, 1024)
        ],
        # Paper Table 4: a DDIM teacher (aDDIM with x_var = 0).
        ("imagenet64_mcm", "steps=8,method=cd", {"mcm.xvar_frac": 0.0}),
    ],
)
def test_paper_ablation_overrides_validate(name, arg, overrides):
    """The overrides docs/launch.md gives for the paper's ablations build valid configs."""
    config = with_teacher(get_config(name, arg))
    for field, value in overrides.items():
        section, key = field.split(".")
        config[section][key] = value
    run_setup.validate(config, num_devices=8)
    m = config_lib.consistency_loss_config(config)
    if "mcm.teacher_steps_start" in overrides:
        n = overrides["mcm.teacher_steps_start"]
        for i in (0, 50_000, 200_000):
            steps = losses.teacher_steps_at(i, m.teacher_steps_start, m.teacher_steps_end, m.anneal_iterations)
            assert float(steps) == pytest.approx(n)


def test_flat_hparams_keeps_every_field_as_a_scalar():
    config = get_config("digits_mcm", "model=tiny")
    hparams = config_lib.flat_hparams(config)
    assert hparams["optimizer.learning_rate"] == config.optimizer.learning_rate
    assert hparams["mcm.student_steps"] == 8 and hparams["objective"] == "mcm"
    assert hparams["ema_decays"] == str(tuple(config.ema_decays))
    assert all(isinstance(v, (bool, int, float, str)) for v in hparams.values())
    assert hparams["model.level_channels"] == str(tuple(config.model.level_channels))
    assert hparams["data.data_dir"] == "None" and hparams["data.resolution"] == 16


def test_config_files_are_files_that_import_only_mcm_jax():
    """configs/ is a folder of files loaded by path, not a package: no __init__.py, and no config
    file imports another (shared builders live in mcm_jax.config.presets)."""
    assert not os.path.exists(os.path.join(CONFIGS, "__init__.py"))
    names = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py"))
    assert len(names) == 13
    for name in names:
        with open(os.path.join(CONFIGS, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] == "mcm_jax", (name, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] == "mcm_jax" for a in node.names), name


def test_cosine_decay_needs_steps_after_the_warm_up():
    from mcm_jax.config import config_lib, presets

    config = presets.digits_diffusion("model=tiny")
    config.optimizer.decay = "cosine"
    config.training.num_steps = config.optimizer.warmup_steps
    with pytest.raises(ValueError, match=r"config.optimizer.warmup_steps: 100 leaves no steps"):
        config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("training.sample_images", 0,
         r"config.training.sample_images: must be an integer >= 1 while sample_every > 0, got 0"),
        ("training.sample_steps", 0,
         r"config.training.sample_steps: must be an integer >= 1 while sample_every > 0, got 0"),
        ("ema_decays", ("abc",), r"config.ema_decays: need at least one decay in \[0, 1\)"),
        ("model.dtype", "bfloat61", r"config.model.dtype: 'bfloat61' is not one of"),
        ("model.level_channels", (64,), r"config.model.level_kinds, level_channels, "),
    ],
)
def test_mistakes_caught_at_start_name_the_whole_field(field, value, message):
    """Values that used to fail only mid-run (sample grids) or without the field's group."""
    from mcm_jax.config import presets

    config = presets.digits_diffusion("model=tiny")
    config.training.sample_every = 5
    group, name = field.rsplit(".", 1) if "." in field else ("", field)
    (config[group] if group else config)[name] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config, num_devices=1)
    config.training.sample_every = 0  # no grids: their settings do not matter
    if field.startswith("training."):
        config_lib.validate(config, num_devices=1)
