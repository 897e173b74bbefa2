"""Will a config fit? Per-device memory of a train run, worked out on the CPU from shapes alone.

    python -m mcm_jax.train.memory --config=configs/imagenet64_mcm.py:size=large --devices=64 --chip=v5e \
        [--config.mesh.fsdp=8] [--remat=none,full]
    python -m mcm_jax.train.memory --config=configs/t2i_512_diffusion.py --chip=h100 --plan

prints, per device of a `--devices`-device (data, fsdp) mesh (config.mesh) at the per-device batch
config.training.batch_size / devices:
- the bytes of parameters, optimizer state, EMA parameters and teacher parameters (MCM students
  hold them for CT and CD alike): exact, from the shapes `jax.eval_shape` gives and the partition
  rule of `mcm_jax.run.sharding`;
- gradients: one more copy of the parameters, sharded like them;
- for each remat policy, the activations the forward pass saves for the backward pass: the
  residuals of `jax.vjp` of the loss, whose shapes `jax.eval_shape` gives without running
  anything. Their per-example bytes are the difference between batch 2 and batch 1 (what does not
  grow with the batch, such as the weights, is counted above), times the per-device batch;
- their sum against the chip's HBM (`--chip`, a name in `mcm_jax.train.hardware.CHIPS`).

XLA's working buffers inside one layer, and its fusions that avoid storing some residuals, are
not modelled: the total is an estimate to plan with, not a guarantee. The compiled CPU step's
`memory_analysis()` is no substitute: on the CPU its temporaries came out the same for every remat
policy (checked on the digits network), so it cannot compare policies.

With --plan it answers the other question: how many chips of kind --chip, and what per-device
batch, a config needs at its global batch (every chip on the fsdp axis; the smallest power of
two whose estimate fits).

An MCM config needs no teacher checkpoint here: the teacher has the student's network.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mcm_jax.config import config_lib
from mcm_jax.method import losses
from mcm_jax.models.blocks import CHECKPOINT_POLICIES
from mcm_jax.run import cli, run_setup, sharding
from mcm_jax.train import hardware, train_step

REMAT_POLICIES = ("none", *CHECKPOINT_POLICIES)
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class StateBytes:
    """Per-device bytes of what a run holds between steps."""

    params: int
    optimizer: int
    ema: int
    teacher: int

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.ema + self.teacher


def _per_device_bytes(tree, fsdp: int, min_size: int) -> int:
    """Bytes one device holds of `tree` when its leaves are split by `sharding.tree_specs`."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        nbytes = leaf.size * leaf.dtype.itemsize
        split = sharding.FSDP in sharding.leaf_spec(path, tuple(leaf.shape), fsdp, min_size)
        total += nbytes // fsdp if split else nbytes
    return total


def abstract_state(config: ml_collections.ConfigDict) -> train_step.TrainState:
    """The train state's shapes and dtypes (jax.eval_shape: nothing is computed)."""
    model = run_setup.build_model(config)
    optimizer = train_step.make_optimizer(config)
    return jax.eval_shape(
        lambda rng: train_step.create_train_state(
            run_setup.init_params(model, config, rng), optimizer, len(config.ema_decays)
        ),
        jax.random.PRNGKey(0),
    )


def state_bytes(
    config: ml_collections.ConfigDict, state: train_step.TrainState | None = None
) -> StateBytes:
    """Exact per-device bytes of parameters, optimizer state, EMA and teacher for config.mesh
    (`state`: abstract_state(config), if already traced)."""
    state = abstract_state(config) if state is None else state
    size = lambda tree: _per_device_bytes(tree, config.mesh.fsdp, config.mesh.fsdp_min_size)
    return StateBytes(
        params=size(state.params),
        optimizer=size(state.opt_state),
        ema=size(state.ema_params),
        teacher=size(state.params) if config.objective == "mcm" else 0,
    )


def residual_bytes(config: ml_collections.ConfigDict, batch_size: int) -> int:
    """Bytes of everything the loss's forward pass keeps for its backward pass (`jax.vjp`'s
    residuals, under config.model.remat) for a batch of `batch_size`; nothing is computed."""
    model = run_setup.build_model(config)
    model_fn = losses.make_model_fn(model.apply, config_lib.schedule_from_config(config))
    loss_fn = train_step.make_loss_fn(config, model_fn, model_fn)
    params = jax.eval_shape(lambda rng: run_setup.init_params(model, config, rng), jax.random.PRNGKey(0))
    teacher = params if config.objective == "mcm" else None
    batch = run_setup.batch_spec(config, batch_size)

    def backward_closure(params, batch, teacher):
        loss = lambda p: loss_fn(p, batch, jax.random.PRNGKey(0), jnp.int32(0), teacher)[0]
        return jax.vjp(loss, params)[1]  # a pytree whose leaves are the residuals

    residuals = jax.eval_shape(backward_closure, params, batch, teacher)
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals))


def activation_bytes_per_example(config: ml_collections.ConfigDict) -> int:
    """Residual bytes that grow with the batch, per example: batch 2's minus batch 1's."""
    return residual_bytes(config, 2) - residual_bytes(config, 1)


def report(
    config: ml_collections.ConfigDict, num_devices: int, remats: tuple[str, ...] = REMAT_POLICIES
) -> dict:
    """Per-device state bytes, and activation bytes per remat policy, for `num_devices` devices."""
    config = config.copy_and_resolve_references()
    if config.objective == "mcm" and not config.teacher.workdir:
        config.teacher.workdir = "(not read by mcm_jax.train.memory)"  # validate asks for one
    run_setup.validate(config, num_devices=num_devices)
    fsdp = config.mesh.fsdp
    batch_per_device = config.training.batch_size // num_devices
    result = {
        "devices": num_devices,
        "mesh": {"data": num_devices // fsdp, "fsdp": fsdp},
        "batch_per_device": batch_per_device,
        "state": state_bytes(config),
        "activations": {},
        "seconds": {},
    }
    for remat in remats:
        config.model.remat = remat
        start = time.perf_counter()
        result["activations"][remat] = batch_per_device * activation_bytes_per_example(config)
        result["seconds"][remat] = time.perf_counter() - start
    return result


def plan(
    config: ml_collections.ConfigDict, chips: tuple[hardware.Chip, ...], max_devices: int = 2**14
) -> dict[str, dict | None]:
    """For each chip kind, the fewest chips (a power of two, all of them on the fsdp axis: the
    least memory per chip) whose memory holds a train run of `config` at its global batch
    config.training.batch_size under config.model.remat, by this module's estimate:
    {chip name: {"devices", "batch_per_device", "needed", "hbm"} (bytes), or None if no count
    up to max_devices does}."""
    config = config.copy_and_resolve_references()
    if config.objective == "mcm" and not config.teacher.workdir:
        config.teacher.workdir = "(not read by mcm_jax.train.memory)"
    state = abstract_state(config)
    per_example = activation_bytes_per_example(config)
    batch = config.training.batch_size
    counts = [2**k for k in range(max_devices.bit_length()) if 2**k <= batch and batch % 2**k == 0]
    needed = {}
    for devices in counts:
        config.mesh.update(data=1, fsdp=devices)
        held = state_bytes(config, state)
        needed[devices] = held.total + held.params + batch // devices * per_example
    result = {}
    for chip in chips:
        fits = [d for d in counts if needed[d] <= chip.hbm_bytes]
        result[chip.name] = fits and {
            "devices": fits[0], "batch_per_device": batch // fits[0], "needed": needed[fits[0]],
            "hbm": chip.hbm_bytes,
        } or None
    return result


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def format_report(result: dict, chip: hardware.Chip | None) -> str:
    """The report as text: one line per item, then one per remat policy."""
    state = result["state"]
    mesh = result["mesh"]
    lines = [
        f"{result['devices']} devices, mesh data {mesh['data']} x fsdp {mesh['fsdp']}, "
        f"batch {result['batch_per_device']} per device; per device:",
        f"  parameters   {_gib(state.params)}",
        f"  optimizer    {_gib(state.optimizer)}",
        f"  EMA          {_gib(state.ema)}",
        f"  teacher      {_gib(state.teacher)}",
        f"  gradients    {_gib(state.params)}",
    ]
    available = f" of {_gib(chip.hbm_bytes)} ({chip.name})" if chip else ""
    for remat, activations in result["activations"].items():
        needed = state.total + state.params + activations
        fits = "" if chip is None else ("  fits" if needed <= chip.hbm_bytes else "  does not fit")
        lines.append(
            f"  remat {remat:<33} activations {_gib(activations)}, needed {_gib(needed)}"
            f"{available}{fits}  [{result['seconds'][remat]:.0f} s]"
        )
    return "\n".join(lines)


def format_plan(config: ml_collections.ConfigDict, chip: hardware.Chip, found: dict | None) -> str:
    """One line: how many chips at which per-device batch, or that none is enough."""
    what = (f"{config.model.name} {config.objective}, batch {config.training.batch_size}, "
            f"remat {config.model.remat} on {chip.name}")
    if found is None:
        return f"{what}: does not fit on any number of chips tried"
    return (
        f"{what}: {found['devices']} chips (mesh data 1 x fsdp {found['devices']}), per-device "
        f"batch {found['batch_per_device']}: needs {_gib(found['needed'])} of "
        f"{_gib(found['hbm'])} per chip"
    )


def main(argv):
    del argv
    jax.config.update("jax_platforms", "cpu")
    for remat in FLAGS.remat:
        if remat not in REMAT_POLICIES:
            raise app.UsageError(f"--remat: {remat!r} is not one of {REMAT_POLICIES}")
    try:
        chips = tuple(hardware.chip_by_name(name) for name in FLAGS.chip.split(",") if name)
    except ValueError as e:
        raise app.UsageError(f"--chip: {e}") from None
    if FLAGS.plan:
        if not chips:
            raise app.UsageError("--plan: needs --chip (one or more, comma-separated)")
        found = plan(FLAGS.config, chips)
        for chip in chips:
            print(format_plan(FLAGS.config, chip, found[chip.name]), flush=True)
        return
    if len(chips) > 1:
        raise app.UsageError("--chip: one chip, unless --plan")
    result = report(FLAGS.config, FLAGS.devices, tuple(FLAGS.remat))
    print(format_report(result, chips[0] if chips else None), flush=True)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).")
    flags.DEFINE_integer("devices", 8, "Devices of the planned mesh (nothing runs on them).",
                         lower_bound=1)
    flags.DEFINE_string("chip", "", "Chip whose HBM to compare with: v4, v5e, v5p, h100, ... "
                        "(with --plan, a comma-separated list)")
    flags.DEFINE_list("remat", list(REMAT_POLICIES), "Remat policies to report.")
    flags.DEFINE_bool("plan", False, "Instead: the fewest --chip chips, and the per-device batch, "
                      "that hold the run at config.training.batch_size (config.model.remat).")
    flags.mark_flags_as_required(["config"])
    cli.run(main)
