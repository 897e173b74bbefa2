"""What every job of a run builds from its config: mesh, model, schedule, model_fn, the sharded
layout of the parameters, and the sampler over the mesh; no optimizer. Also the checks that a
config describes the same network as a run on disk (a teacher, or the run being evaluated) and
the loading of a teacher's parameters, shared by the train and eval jobs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util
from jax.sharding import Mesh

from mcm_jax.config import config_lib, data_config
from mcm_jax.method import conditioning, losses, samplers
from mcm_jax.method.schedules import Schedule
from mcm_jax.models import build
from mcm_jax.models import configs as model_configs
from mcm_jax.run import batch_sampler, checkpointing, sharding

Params = Any

# Model fields that change how a network computes or trains, not which parameters it has.
ARCHITECTURE_EXEMPT = (
    "dtype", "attention_impl", "remat", "scan_blocks", "fused_norms", "split_skip_dense",
    "level_dropout", "middle_dropout", "name",
)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Every check of a run's config before compute: `config_lib.validate`'s, then the loss
    blocks as the loss layer builds them (`config.diffusion`; `config.mcm` for a student).
    `RunSetup.create` runs it, once per job."""
    config_lib.validate(config, num_devices=num_devices)
    config_lib.diffusion_loss_config(config)
    if config.objective == "mcm":
        config_lib.consistency_loss_config(config)


def enable_compilation_cache(config: ml_collections.ConfigDict) -> str | None:
    """Points JAX's persistent compilation cache at config.compilation_cache_dir (home expanded)
    unless JAX_COMPILATION_CACHE_DIR is set or the field is empty; returns the directory in
    use, or None. On a GPU the cache also keeps XLA's autotuning results
    (jax_persistent_cache_enable_xla_caches), so a restart does not autotune again."""
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or config.compilation_cache_dir
    if not directory:
        return None
    if not directory.startswith("gs://"):
        directory = os.path.expanduser(directory)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The network of `config.model` for the data of `config.data` (its channels, classes and,
    for caption data, the text encoder's width)."""
    _, _, channels = data_config.image_shape(config.data)
    _, text_width = data_config.text_shape(config.data) or (0, 0)
    return build(
        config.model, channels=channels, num_classes=data_config.num_classes(config.data),
        text_width=text_width,
    )


def batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a training batch of the config's data (input_pipeline's layout):
    image and label, and for caption data the prompts' text (float16) and text_mask."""
    spec = {
        "image": jax.ShapeDtypeStruct((batch_size, *data_config.image_shape(config.data)), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }
    text = data_config.text_shape(config.data)
    if text is not None:
        spec["text"] = jax.ShapeDtypeStruct((batch_size, *text), jnp.float16)
        spec["text_mask"] = jax.ShapeDtypeStruct((batch_size, text[0]), jnp.bool_)
    return spec


def init_params(model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array) -> Params:
    """The model's initial parameters; inputs of batch 1 from `batch_spec` (a prompt of all real
    tokens for text models)."""
    batch = {k: jnp.ones(s.shape, s.dtype) for k, s in batch_spec(config, 1).items()}
    label, text = conditioning.model_kwargs(conditioning.from_batch(batch))
    logsnr = jnp.zeros((1,), jnp.float32)
    return model.init({"params": rng}, batch["image"], logsnr, label, train=False, **text)["params"]


def abstract_params(model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh) -> Params:
    """ShapeDtypeStructs of `model`'s parameters with their shardings over `mesh`: what
    checkpoints restore into."""
    shapes = jax.eval_shape(lambda r: init_params(model, config, r), jax.random.PRNGKey(config.seed))
    shardings = sharding.tree_shardings(shapes, mesh, config.mesh.fsdp_min_size)
    return checkpointing.abstract_like(shapes, shardings)


def own_sampler(config: ml_collections.ConfigDict) -> batch_sampler.SamplerSetting:
    """The run's own sampler: a student's S-step DDIM (the paper's Algorithm 2), a teacher's
    training.sample_method at training.sample_steps. Training's sample grids use it, and the eval
    job where config.eval.sweep_steps / sweep_methods are empty."""
    if config.objective == "mcm":
        return batch_sampler.SamplerSetting("ddim", config.mcm.student_steps)
    return batch_sampler.SamplerSetting(config.training.sample_method, config.training.sample_steps)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """The pieces of a run that need no optimizer: enough to sample, score or calibrate."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    model: nn.Module
    schedule: Schedule
    model_fn: losses.ModelFn
    abstract_params: Params  # ShapeDtypeStructs carrying their NamedShardings

    @classmethod
    def create(cls, config: ml_collections.ConfigDict, devices: list | None = None) -> RunSetup:
        """Validates `config` for the devices (default: all) and builds the run's pieces."""
        devices = jax.devices() if devices is None else devices
        validate(config, num_devices=len(devices))
        mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp, devices)
        model = build_model(config)
        schedule = config_lib.schedule_from_config(config)
        return cls(
            config=config, mesh=mesh, model=model, schedule=schedule,
            model_fn=losses.make_model_fn(model.apply, schedule),
            abstract_params=abstract_params(model, config, mesh),
        )

    @property
    def param_shardings(self) -> Any:
        return jax.tree.map(lambda a: a.sharding, self.abstract_params)

    def abstract_ema_params(self) -> tuple[Params, ...]:
        """The restore target of a checkpoint's EMA parameter sets."""
        return (self.abstract_params,) * len(self.config.ema_decays)

    def batch_sampler(
        self,
        setting: batch_sampler.SamplerSetting,
        *,
        seed: int,
        batch_size: int,
        x_var_fn: samplers.XVarFn | None = None,
        labels: bool = False,
    ):
        """The jitted `sample_batch(params, first_index[, prompts][, labels])` of batch_sampler
        for this run's model and mesh (prompts for text models, labels if `labels`): build it
        once and call it for every batch, so it compiles once."""
        data = self.config.data
        return batch_sampler.make_batch_sampler(
            self.model_fn, self.schedule, self.mesh, self.param_shardings,
            setting=setting, image_shape=data_config.image_shape(data),
            num_classes=data_config.num_classes(data), null_label=config_lib.null_label(self.config),
            seed=seed, batch_size=batch_size, x_var_fn=x_var_fn,
            text=data_config.text_shape(data) is not None, labels=labels,
        )


def check_teacher_workdir(config: ml_collections.ConfigDict) -> None:
    """config.teacher.workdir must be an existing directory."""
    workdir = epath.Path(config.teacher.workdir)
    if not workdir.exists():
        raise ValueError(f"config.teacher.workdir: {str(workdir)!r} does not exist")
    if not workdir.is_dir():
        raise ValueError(
            f"config.teacher.workdir: {str(workdir)!r} is a file; give a diffusion run's workdir"
        )


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run wrote into `workdir`, with every field added to the code since then set
    to its default (new fields default to what older code did, e.g.
    data.class_conditional = True), so runs of older versions stay teachers and eval targets."""
    saved = checkpointing.read_config(workdir)
    name = saved.get("model", {}).get("name")
    defaults = config_lib.base_config()
    if name in model_configs.NAMES:
        defaults = config_lib.with_model(defaults, name)
    flat = traverse_util.flatten_dict(saved.to_dict(), sep=".")
    for key, value in traverse_util.flatten_dict(defaults.to_dict(), sep=".").items():
        flat.setdefault(key, value)
    return ml_collections.ConfigDict(traverse_util.unflatten_dict(flat, sep="."))


def check_teacher_matches(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Reads the teacher's config and fails, naming the field, if it is not a diffusion run or
    its network differs."""
    workdir = config.teacher.workdir
    try:
        teacher_config = saved_config(workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config.teacher.workdir: {e}") from None
    if teacher_config.get("objective") != "diffusion":
        raise ValueError(
            f"config.teacher.workdir: {workdir} holds a run with objective "
            f"{teacher_config.get('objective')!r}; a teacher is a run with objective 'diffusion'"
        )
    if bool(teacher_config.get("runlocal", False)) != bool(config.runlocal):
        which = ("is", "is not") if teacher_config.get("runlocal", False) else ("is not", "is")
        raise ValueError(
            f"config.teacher.workdir: the teacher in {workdir} {which[0]} a runlocal smoke test "
            f"and this student {which[1]}; give a runlocal student a runlocal teacher of its "
            "family (configs/<family>_diffusion.py:runlocal), and a real student a real teacher"
        )
    for key, value in config.model.items():
        if key in ARCHITECTURE_EXEMPT:
            continue
        teacher_value = teacher_config.model.get(key)
        if teacher_value is None or tuple(np.atleast_1d(teacher_value)) != tuple(np.atleast_1d(value)):
            raise ValueError(
                f"config.model.{key}: the student has {value!r} but the teacher in "
                f"{config.teacher.workdir} has {teacher_value!r}; students start from the teacher's "
                "weights, so the networks must match"
            )
    if teacher_config.data.resolution != config.data.resolution:
        raise ValueError(
            f"config.data.resolution: {config.data.resolution} differs from the teacher's "
            f"{teacher_config.data.resolution}"
        )
    ours, theirs = _data_io(config), _data_io(teacher_config)
    if ours != theirs:
        raise ValueError(
            f"config.data.name: the student's data ({config.data.name!r}) has (channels, classes, "
            f"text width) {ours}, the teacher's in {config.teacher.workdir} "
            f"({teacher_config.data.name!r}) {theirs}; students start from the teacher's "
            "weights, so the networks must match"
        )
    return teacher_config


def _data_io(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(channels, classes, text width) of the config's data: the network's input, label table and
    text projections."""
    _, text_width = data_config.text_shape(config.data) or (0, 0)
    return (
        data_config.dataset_spec(config.data.name).channels,
        data_config.num_classes(config.data),
        text_width,
    )


def check_run_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Fails, naming the field, if `config` describes another network or method than the run."""
    run = saved_config(workdir)
    fields = [f"model.{k}" for k in config.model if k not in ARCHITECTURE_EXEMPT]
    fields += [f"schedule.{k}" for k in config.schedule]
    fields += ["objective", "data.resolution", "ema_decays"]
    if config.objective == "mcm":
        fields.append("mcm.student_steps")
    for field in fields:
        ours, theirs = _get(config, field), _get(run, field)
        if ours != theirs:
            raise ValueError(
                f"config.{field}: {ours!r} but the run in {workdir} has {theirs!r}; evaluate with "
                "the run's config"
            )
    if _data_io(config) != _data_io(run):
        raise ValueError(
            f"config.data.name: {config.data.name!r} (channels, classes {_data_io(config)}) but "
            f"the run in {workdir} has {run.data.name!r} ({_data_io(run)}); evaluate with the "
            "run's config"
        )


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """The value at a dotted path (None if absent), sequences as tuples."""
    node = config
    for part in dotted.split("."):
        if part not in node:
            return None
        node = node[part]
    return tuple(node) if isinstance(node, (list, tuple)) else node


def load_teacher(config: ml_collections.ConfigDict, abstract_teacher_params: Params) -> Params:
    """The teacher's EMA parameters (config.teacher), restored into `abstract_teacher_params`'s
    shapes and shardings."""
    t = config.teacher
    teacher_config = saved_config(t.workdir)
    ckpt = checkpointing.Checkpointer(t.workdir, read_only=True)
    try:
        step = checkpointing.resolve_step(ckpt, t.step, t.workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config.teacher.workdir: {e}") from None
    except ValueError as e:
        raise ValueError(f"config.teacher.step: {e}") from None
    num_ema = len(teacher_config.ema_decays)
    if t.ema_index >= num_ema:
        raise ValueError(
            f"config.teacher.ema_index: {t.ema_index} but the teacher has {num_ema} EMA parameter sets"
        )
    ema = ckpt.restore_ema_params(step, (abstract_teacher_params,) * num_ema)
    ckpt.close()
    return ema[t.ema_index]
