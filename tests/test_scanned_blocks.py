"""Scanned blocks (model.scan_blocks): the same function as the unrolled network, a fresh dropout
mask per block, stacked parameters sharded like one block's, unrolled checkpoints restored into
scanned runs (and back), and FSDP over two processes of a text-to-image-shaped network."""

import functools
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mcm_jax.config import config_lib, presets
from mcm_jax.models import build, model_config, param_count, stacking
from mcm_jax.run import checkpointing, run_setup, sharding
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = {"xla_backend_optimization_level": 0}
IO = dict(channels=3, num_classes=10, text_width=8)
RESOLUTION, TEXT_LENGTH = 16, 3
# Two blocks per level and in the middle stack, so every run is a real scan.
RUNS = dict(level_blocks=(2, 3), middle_blocks=2)


def _tiny(scan_blocks: bool, **overrides):
    config = model_config("tiny")
    config.update(RUNS, scan_blocks=scan_blocks, **overrides)
    return config


def _inputs(batch: int = 2):
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(batch, RESOLUTION, RESOLUTION, 3)), jnp.float32)
    logsnr = jnp.asarray(rng.uniform(-5, 5, size=(batch,)), jnp.float32)
    label = jnp.asarray(rng.integers(0, 10, size=(batch,)), jnp.int32)
    text = jnp.asarray(rng.normal(size=(batch, TEXT_LENGTH, IO["text_width"])), jnp.float32)
    text_mask = jnp.asarray([[True, True, False], [True, False, False]][:batch])
    return (z, logsnr, label), dict(text=text, text_mask=text_mask)


def _random_params(model, seed: int = 0):
    """Every entry random (the output head is zero at init, which would hide differences)."""
    args, text = _inputs(1)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), *args, train=False, **text)["params"]
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes
    )


def _apply(model):
    """params -> the model's output on _inputs(), without dropout."""
    args, text = _inputs()

    def apply(params):
        return model.apply({"params": params}, *args, train=False, **text)

    return apply


@pytest.mark.slow
def test_scanned_network_computes_the_unrolled_function_with_the_same_weights():
    unrolled, scanned = build(_tiny(False), **IO), build(_tiny(True), **IO)
    params = _random_params(unrolled)
    stacked = stacking.to_scanned(params)
    assert stacking.layout(params) == stacking.UNROLLED
    assert stacking.layout(stacked) == stacking.SCANNED
    assert set(stacked) >= {"down0_blocks", "down1_blocks", "middle_blocks", "up1_blocks"}
    assert stacked["up1_blocks"]["skip"]["kernel"].shape == (3, 32, 16)
    # The conversion gives exactly the scanned network's own parameter tree, and back.
    own = jax.eval_shape(lambda: _random_params(scanned))
    assert jax.tree.structure(stacked) == jax.tree.structure(own)
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(lambda s: s.shape, own)
    back = stacking.to_unrolled(stacked)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), back, params)))

    expected = jax.jit(_apply(unrolled)).lower(params).compile(FAST_COMPILE)(params)
    actual = jax.jit(_apply(scanned)).lower(stacked).compile(FAST_COMPILE)(stacked)
    # float32 rounding only (XLA fuses the loop body differently); a wrong block order or skip
    # would be O(1)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.max(np.abs(expected)))
    for scan_blocks in (False, True):
        assert param_count(_tiny(scan_blocks), RESOLUTION, **IO) == sum(
            leaf.size for leaf in jax.tree.leaves(params)
        )


@pytest.mark.slow
def test_every_scanned_block_draws_its_own_dropout_mask_and_the_same_key_the_same_masks():
    """The two network calls of the consistency loss share a dropout key and must drop the same
    units; within one call, each block of a scan must draw its own mask (split_rngs)."""
    config = _tiny(True, level_dropout=(0.5, 0.5), middle_dropout=0.5, remat="full")
    model = build(config, **IO)
    params = stacking.to_scanned(_random_params(build(_tiny(False), **IO)))
    masks = []

    def record(path, kept):
        masks.append((path, np.asarray(kept)))

    def interceptor(next_fun, args, kwargs, context):
        output = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Dropout) and context.module.rate > 0:
            path = "/".join(context.module.path)
            jax.debug.callback(functools.partial(record, path), output != 0, ordered=True)
        return output

    args, text = _inputs()

    def apply(params, key):
        with nn.intercept_methods(interceptor):
            return model.apply(
                {"params": params}, *args, train=True, rngs={"dropout": key}, **text
            )

    compiled = jax.jit(apply).lower(params, jax.random.key(0)).compile(FAST_COMPILE)

    def call(key):
        masks.clear()
        jax.block_until_ready(compiled(params, key))
        jax.effects_barrier()
        return list(masks)

    first, again, other = call(jax.random.key(1)), call(jax.random.key(1)), call(jax.random.key(2))
    middle = [mask for path, mask in first if path.startswith("middle_blocks/")]
    # Two middle blocks, each with its attention, cross-attention and MLP dropout.
    assert len(middle) == 6
    by_layer = [[m for i, m in enumerate(middle) if i % 3 == k] for k in range(3)]
    for block0, block1 in by_layer:
        assert block0.shape == block1.shape and not np.array_equal(block0, block1)
    assert len(again) == len(first) and all(
        np.array_equal(a, b) for (_, a), (_, b) in zip(first, again)
    )
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(first, other))


@pytest.mark.slow
def test_stacked_parameters_are_sharded_like_one_block_on_a_4x2_mesh():
    mesh = sharding.create_mesh(data=4, fsdp=2)
    unrolled, scanned = build(_tiny(False), **IO), build(_tiny(True), **IO)
    params = _random_params(unrolled)
    stacked = stacking.to_scanned(params)
    min_size = 64
    stacked_specs = sharding.tree_specs(stacked, mesh.shape[sharding.FSDP], min_size)
    unrolled_specs = sharding.tree_specs(params, mesh.shape[sharding.FSDP], min_size)
    split = 0
    for path, spec in jax.tree_util.tree_leaves_with_path(
        stacked_specs, is_leaf=lambda x: isinstance(x, P)
    ):
        if not stacking.is_stacked(path):
            continue
        assert spec[0] is None, (path, spec)  # the block axis is never split
        split += sharding.FSDP in spec
    assert split > 10
    # Each block of a stack is split as that block is in the unrolled network.
    for name in ("middle_blocks", "down1_blocks"):
        block0 = jax.tree.map(lambda spec: tuple(spec)[1:], stacked_specs[name],
                              is_leaf=lambda x: isinstance(x, P))
        unrolled_block0 = unrolled_specs[f"{name[:-len('_blocks')]}_block0"]
        assert block0["block"] == jax.tree.map(
            tuple, unrolled_block0, is_leaf=lambda x: isinstance(x, P)
        )
    # The sharded network over the mesh computes what it computes on one device.
    shardings = sharding.tree_shardings(stacked, mesh, min_size)
    placed = jax.device_put(stacked, shardings)
    on_mesh = jax.jit(_apply(scanned)).lower(placed).compile(FAST_COMPILE)(placed)
    on_one = jax.jit(_apply(scanned)).lower(stacked).compile(FAST_COMPILE)(stacked)
    np.testing.assert_allclose(on_mesh, on_one, rtol=1e-5, atol=1e-5 * np.max(np.abs(on_one)))


def _digits_config(scan_blocks: bool):
    config = presets.digits_diffusion("model=tiny")
    config.model.update(RUNS, scan_blocks=scan_blocks)
    config.training.batch_size = 8
    config.mesh.fsdp = 2
    config.mesh.fsdp_min_size = 64
    return config


@pytest.mark.slow
@pytest.mark.parametrize("written,restored", [(False, True), (True, False)],
                         ids=["unrolled-into-scanned", "scanned-into-unrolled"])
def test_a_checkpoint_and_a_teachers_weights_load_into_the_other_block_layout(
    tmp_path, written, restored
):
    writer = train.Trainer(RunSetup.create(_digits_config(written)))
    state = writer.init_state()
    # Distinct values everywhere (Adam's moments are zero at init).
    rng = np.random.default_rng(0)
    state = state.replace(
        opt_state=jax.tree.map(lambda a: a + jnp.asarray(rng.normal(size=a.shape), a.dtype)
                               if jnp.issubdtype(a.dtype, jnp.floating) else a, state.opt_state),
        ema_params=jax.tree.map(lambda a: a + 1.0, state.ema_params),
    )
    ckpt = checkpointing.Checkpointer(str(tmp_path), async_checkpointing=False)
    ckpt.save(5, state, {"position": 7})
    ckpt.wait()

    reader = train.Trainer(RunSetup.create(_digits_config(restored)))
    step, items, meta = checkpointing.Checkpointer(str(tmp_path), read_only=True).restore_latest(
        reader.abstract_state
    )
    assert step == 5 and meta["data_state"] == {"position": 7}
    target = stacking.SCANNED if restored else stacking.UNROLLED
    for name in checkpointing.ARRAY_ITEMS:
        expected = stacking.to_layout(jax.device_get(getattr(state, name)), target)
        assert jax.tree.structure(items[name]) == jax.tree.structure(
            getattr(reader.abstract_state, name)
        )
        assert all(jax.tree.leaves(jax.tree.map(
            lambda a, b: bool(np.array_equal(a, b)), jax.device_get(items[name]), expected
        )))
        shardings = jax.tree.map(lambda a: a.sharding, getattr(reader.abstract_state, name))
        assert all(jax.tree.leaves(
            jax.tree.map(lambda a, s: a.sharding == s, items[name], shardings)
        ))
    # A student starts from a teacher's weights of the other layout.
    teacher = jax.device_get(state.params)
    started = reader.state_from_params(teacher)
    assert all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), jax.device_get(started.params),
        stacking.to_layout(teacher, target),
    )))
    # A teacher or eval job restores the EMA parameters alone the same way.
    ema = checkpointing.Checkpointer(str(tmp_path), read_only=True).restore_ema_params(
        5, reader.setup.abstract_ema_params()
    )
    assert stacking.tree_layout(ema) == target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _t2i_tiny_config():
    """The text-to-image config with a tiny network of its shape: three ResNet levels, a
    transformer level and a middle stack, all scanned, text conditioning, FSDP over 2."""
    config = presets.t2i_diffusion()
    config_lib.with_model(
        config, "tiny", level_kinds=("resnet", "resnet", "resnet", "transformer"),
        level_channels=(8, 8, 16, 16), level_blocks=(1, 1, 1, 2),
        level_dropout=(0.0, 0.0, 0.0, 0.1), middle_blocks=2, scan_blocks=True,
    )
    config.data.update(resolution=16, text_length=4, text_width=8)
    config.schedule.noise_resolution_high = 16
    config.schedule.noise_resolution_low = 8
    config.diffusion.multiscale_pools = 1
    config.training.batch_size = 8
    config.mesh.update(data=2, fsdp=2, fsdp_min_size=256)
    return config


FSDP_STEPS = 2


def fsdp_losses(devices: list | None = None) -> list[float]:
    """Train losses of FSDP_STEPS steps of the tiny text-to-image config over `devices` (default:
    every process's), on a fixed global batch of which each process feeds its share."""
    if "JAX_NUM_PROCESSES" in os.environ:  # as mcm_jax.main starts a local launch
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    config = _t2i_tiny_config()
    trainer = train.Trainer(RunSetup.create(config, devices))
    assert dict(trainer.setup.mesh.shape) == {"data": 2, "fsdp": 2}
    spec = run_setup.batch_spec(config, config.training.batch_size)
    rng = np.random.default_rng(0)  # every process draws the same global batch
    batch = {
        "image": rng.uniform(-1, 1, spec["image"].shape).astype(np.float32),
        "label": np.zeros(spec["label"].shape, np.int32),
        "text": rng.normal(size=spec["text"].shape).astype(np.float16),
        "text_mask": np.arange(spec["text_mask"].shape[1]) < rng.integers(1, 5, (8, 1)),
    }
    share = config.training.batch_size // jax.process_count()
    local = {k: v[jax.process_index() * share:][:share] for k, v in batch.items()}
    global_batch = sharding.host_local_to_global(local, trainer.setup.mesh)
    state = trainer.init_state()
    split = [leaf for leaf in jax.tree.leaves(state.params)
             if sharding.FSDP in leaf.sharding.spec]
    assert split, "no parameter is split over fsdp"
    step = trainer.train_step.lower(state, global_batch, None).compile()
    if jax.process_count() > 1:
        # The processes finish compiling at different times, and the first collective waits only
        # 30 s for its peer (gloo's context set-up): meet at the coordination service first.
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier("fsdp_test_compiled", 600_000)
    losses = []
    for _ in range(FSDP_STEPS):
        state, metrics = step(state, global_batch, None)
        losses.append(float(metrics["loss"]))
    return losses


_FSDP_SCRIPT = (
    f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'tests')!r}); "
    "from test_scanned_blocks import fsdp_losses; print('losses', *fsdp_losses(), flush=True)"
)


def _run_fsdp(processes: int, devices_per_process: int) -> list[list[float]]:
    """The losses each process prints, for `processes` local processes (jax.distributed over
    gloo) of `devices_per_process` CPU devices each."""
    port = _free_port()
    launched = []
    for process_id in range(processes):
        env = dict(
            os.environ,
            XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
                "device_count=8", f"device_count={devices_per_process}"
            ),
        )
        if processes > 1:
            env.update(
                JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(process_id),
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            )
        launched.append(subprocess.Popen(
            [sys.executable, "-c", _FSDP_SCRIPT], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    losses = []
    for process in launched:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        line = [l for l in output.splitlines() if l.startswith("losses ")][-1]
        losses.append([float(x) for x in line.split()[1:]])
    return losses


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_a_scanned_text_to_image_network_with_fsdp():
    """Two processes of two devices each (a 2 x 2 data x fsdp mesh) take the same steps as this
    process on four of its devices."""
    first, second = _run_fsdp(processes=2, devices_per_process=2)
    alone = fsdp_losses(jax.devices()[:4])
    assert first == second and len(first) == FSDP_STEPS and np.all(np.isfinite(first))
    np.testing.assert_allclose(first, alone, rtol=1e-5)
