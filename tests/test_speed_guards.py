"""Guards of GPU speed that a CPU can check: the bf16 UViT multiplies in bf16 everywhere (forward
and the train step's gradient), and the training loop syncs with the host only on log and
checkpoint steps."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import source_info_util
from jax.extend import core as jax_core

from mcm_jax.benchmarks.train_step_bench import synthetic_batch
from mcm_jax.config import config_lib, presets
from mcm_jax.models import build, model_config
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import profiling, train

MATMULS = ("dot_general", "conv_general_dilated")
BF16 = jnp.dtype(jnp.bfloat16)

# The matmuls that may take a float32 operand, each with its reason. There is one: the XLA path of
# jax.nn.dot_product_attention (the path on the CPU and TPU; 'auto' takes cuDNN on a GPU) computes
# the attention logits in float32, so on the backward pass the logits' cotangent is float32 and
# the two matmuls that take it (dQ = dS·K and dK = dSᵀ·Q) have one float32 operand. JAX pins
# them to the BF16_BF16_F32 dot algorithm: the float32 operand is rounded to bf16 and the product
# is a bf16 product with float32 accumulation, so they too multiply in bf16. The method itself
# keeps no matmul in float32: the log-SNR Fourier features are cast to bf16 before the time MLP,
# the losses and samplers are elementwise, and normalisation statistics involve no matmul.
BF16_ALGORITHM = jax.lax.DotAlgorithmPreset.BF16_BF16_F32
ALLOWED_F32_OPERAND = {
    "attention_backward_dq_dk": (
        "jax.nn.dot_product_attention (XLA path): float32 logits' cotangent times bf16 Q or K, "
        "pinned to DotAlgorithmPreset.BF16_BF16_F32 (multiplies in bf16)"
    ),
}


def _equations(jaxpr: jax_core.Jaxpr, times: int = 1):
    """(equation, how many times it runs) for every equation of `jaxpr` and of the jaxprs inside
    it (jit, remat, custom_vjp, loops); a scan's body runs `length` times (scanned blocks)."""
    for eqn in jaxpr.eqns:
        yield eqn, times
        inner = times * eqn.params["length"] if eqn.primitive.name == "scan" else times
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr, inner)
                elif isinstance(sub, jax_core.Jaxpr):
                    yield from _equations(sub, inner)


def _matmul_kinds(closed_jaxpr) -> collections.Counter:
    """Counts each matmul as "bf16" (bf16 operands), "attention_backward_dq_dk" (an allowed
    exception, see ALLOWED_F32_OPERAND) or "other: ..." (a matmul not in bf16)."""
    kinds = collections.Counter()
    for eqn, times in _equations(closed_jaxpr.jaxpr):
        if eqn.primitive.name not in MATMULS:
            continue
        dtypes = tuple(v.aval.dtype for v in eqn.invars)
        where = source_info_util.summarize(eqn.source_info)
        if all(d == BF16 for d in dtypes):
            kinds["bf16"] += times
        elif (
            eqn.primitive.name == "dot_general"
            and eqn.params.get("precision") == BF16_ALGORITHM
            and set(dtypes) == {BF16, jnp.dtype(jnp.float32)}
            and where.endswith("(SelfAttention.__call__)")
        ):
            kinds["attention_backward_dq_dk"] += times
        else:
            shapes = [v.aval.shape for v in eqn.invars]
            kinds[f"other: {eqn.primitive.name} {dtypes} {shapes} at {where}"] += times
    return kinds


def _attention_layers(model) -> int:
    """Transformer blocks of a UViT config: down and up path of each transformer level, middle."""
    per_level = sum(
        2 * blocks for kind, blocks in zip(model.level_kinds, model.level_blocks)
        if kind == "transformer"
    )
    return per_level + model.middle_blocks


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def test_bf16_uvit_forward_multiplies_in_bf16():
    config = model_config("imagenet64_small")
    assert config.dtype == "bfloat16"
    model = build(config, channels=3, num_classes=1000)  # ImageNet's
    z = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    logsnr, label = jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32)
    params = jax.eval_shape(
        lambda *x: model.init(jax.random.PRNGKey(0), *x, train=False), z, logsnr, label
    )
    dropout = {"dropout": jax.random.PRNGKey(0)}
    jaxpr = jax.make_jaxpr(lambda p, *x: model.apply(p, *x, train=True, rngs=dropout))(
        params, z, logsnr, label
    )
    kinds = _matmul_kinds(jaxpr)
    assert set(kinds) == {"bf16"}, kinds  # no exception is needed on the forward pass
    assert kinds["bf16"] > 100


def _train_step_jaxpr(config):
    trainer = train.Trainer(RunSetup.create(config, devices=jax.devices()[:1]))  # one GPU
    teacher = trainer.abstract_teacher_params if config.objective == "mcm" else None
    batch = _abstract(synthetic_batch(config))
    return jax.make_jaxpr(trainer.train_step)(trainer.abstract_state, batch, teacher)


def _tiny_bf16(objective: str, method: str = "cd", remat: str = "none", scan_blocks=False):
    """The tiny network in bf16; scanned with two blocks per run (so each scan loops) and, as
    the paper's networks, the fused norms and split skip merges."""
    runs = dict(level_blocks=(2, 2), middle_blocks=2) if scan_blocks else {}
    config = config_lib.with_model(
        config_lib.base_config(), "tiny", dtype="bfloat16", remat=remat, scan_blocks=scan_blocks,
        fused_norms=scan_blocks, split_skip_dense=scan_blocks, **runs,
    )
    config.objective = objective
    config.mcm.method = method
    config.teacher.workdir = "unused-by-the-step"
    config.training.batch_size = 4
    return config


def _paper_cd_small():
    config = presets.imagenet_mcm(64, "steps=8,method=cd,size=small")
    config.teacher.workdir = "unused-by-the-step"
    config.training.batch_size = 2
    return config


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_config",
    [
        pytest.param(_paper_cd_small, id="imagenet64_small-cd"),
        pytest.param(lambda: _tiny_bf16("diffusion"), id="tiny_bf16-diffusion"),
        pytest.param(lambda: _tiny_bf16("mcm", "ct"), id="tiny_bf16-ct"),
        pytest.param(lambda: _tiny_bf16("mcm", "cd", remat="dots_saveable"), id="tiny_bf16-cd-remat"),
        pytest.param(
            lambda: _tiny_bf16("mcm", "cd", remat="dots_saveable", scan_blocks=True),
            id="tiny_bf16-cd-remat-scanned",
        ),
    ],
)
def test_train_step_gradient_multiplies_in_bf16(make_config):
    config = make_config()
    kinds = _matmul_kinds(_train_step_jaxpr(config))
    others = [k for k in kinds if k.startswith("other")]
    assert not others, f"matmuls not in bf16 (fix them, or list them in ALLOWED_F32_OPERAND): {others}"
    # Exactly the allowed exception: dQ and dK of each attention layer's backward pass, for the
    # one network that gets a gradient (the reference and teacher forwards have none).
    assert kinds["attention_backward_dq_dk"] == 2 * _attention_layers(config.model)
    assert set(kinds) <= {"bf16", *ALLOWED_F32_OPERAND}


# --- host syncs of the training loop ---
#
# jax.transfer_guard_device_to_host does not fire on the CPU backend (a CPU array is read in
# place: float(x), np.asarray(x) and jax.device_get(x) pass even under "disallow_explicit"), so
# the test guards the step's outputs themselves: after a step that may not sync, every array it
# returns is wrapped in a _Guarded proxy that raises on any read by the host (float, int, bool,
# np.asarray, jax.device_get, .item(), printing, comparisons, block_until_ready) until the loop
# calls the next step, which unwraps them; jnp functions refuse a proxy (not a JAX type) at any
# time, so between steps the loop may only store the outputs and pass them on. On log, checkpoint and the
# first step the outputs are plain arrays, and proxies kept from earlier steps read normally.

_WINDOW: list[int] = []  # the step whose outputs may not be read now, if any


class HostSyncError(AssertionError):
    pass


class _Guarded:
    """A step output that fails the test if the host reads it inside its step's window."""

    __slots__ = ("_array",)

    def __init__(self, array):
        self._array = array

    def _check(self, what: str) -> None:
        if _WINDOW:
            raise HostSyncError(
                f"the training loop read a device value ({what}) after step {_WINDOW[0]}, which "
                "is not a log, checkpoint or sample step: a host sync on every step"
            )

    def __getattr__(self, name):  # shape, dtype, sharding, ...; methods wrap what they return
        value = getattr(self._array, name)
        if not callable(value):
            return value
        return lambda *args, **kwargs: _wrap(value(*args, **kwargs))

    def __array__(self, dtype=None, copy=None):
        self._check("np.asarray")
        return np.asarray(self._array, dtype)


def _reader(name):
    def read(self, *args):
        self._check(name)
        return getattr(self._array, name)(*args)

    return read


for _name in ("__float__", "__int__", "__bool__", "__index__", "__complex__", "__repr__",
              "__str__", "__format__", "__len__", "__iter__", "item", "tolist",
              "copy_to_host_async", "block_until_ready", "is_ready"):
    setattr(_Guarded, _name, _reader(_name))


def _operator(name):
    def apply(self, *args):
        args = [a._array if isinstance(a, _Guarded) else a for a in args]
        return _wrap(getattr(self._array, name)(*args))

    return apply


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
              "__rtruediv__", "__pow__", "__neg__", "__abs__", "__lt__", "__le__", "__gt__",
              "__ge__", "__eq__", "__ne__", "__getitem__", "__invert__", "__and__", "__or__"):
    setattr(_Guarded, _name, _operator(_name))


def _wrap(tree):
    return jax.tree.map(lambda x: _Guarded(x) if isinstance(x, jax.Array) else x, tree)


def _unwrap(tree):
    is_guarded = lambda x: isinstance(x, _Guarded)
    return jax.tree.map(lambda x: x._array if is_guarded(x) else x, tree, is_leaf=is_guarded)


def _sync_steps(t) -> set[int]:
    """Steps after which the loop may wait for the device: the first (timing starts after it, so
    compilation is not counted as speed), log, checkpoint and sample steps, the last."""
    every = [t.log_every, t.checkpoint_every] + ([t.sample_every] if t.sample_every else [])
    return {1, t.num_steps} | {s for s in range(1, t.num_steps + 1) if any(s % e == 0 for e in every)}


class _GuardedTrainer(train.Trainer):
    """A Trainer whose step returns _Guarded outputs after steps that may not sync."""

    guarded_steps: list[int] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        step_fn, sync_steps, calls = self.train_step, _sync_steps(self.setup.config.training), [0]

        def guarded_step(*args):
            _WINDOW.clear()
            outputs = step_fn(*_unwrap(args))
            calls[0] += 1  # a fresh run: the call number is the step number
            if calls[0] in sync_steps:
                return outputs
            _GuardedTrainer.guarded_steps.append(calls[0])
            _WINDOW.append(calls[0])
            return _wrap(outputs)

        self.train_step = guarded_step


def _run_guarded(monkeypatch, tmp_path, data_dir):
    config = presets.digits_diffusion("model=tiny")
    config.data.data_dir = str(data_dir)
    config.data.shuffle_buffer = 100
    t = config.training
    t.batch_size, t.num_steps, t.log_every, t.checkpoint_every, t.sample_every = 8, 9, 4, 6, 0
    _GuardedTrainer.guarded_steps = []
    monkeypatch.setattr(train, "Trainer", _GuardedTrainer)
    try:
        train.train(config, str(tmp_path / "run"))
    finally:
        _WINDOW.clear()
    return _GuardedTrainer.guarded_steps


@pytest.mark.slow
def test_training_loop_syncs_with_the_host_only_on_log_and_checkpoint_steps(
    monkeypatch, tmp_path, digits_data_dir
):
    guarded = _run_guarded(monkeypatch, tmp_path, digits_data_dir)
    assert guarded == [2, 3, 5, 7]  # 1 first, 4 and 8 log, 6 checkpoint, 9 last


@pytest.mark.slow
@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda metrics: float(metrics["loss"]), id="float"),
        pytest.param(jax.device_get, id="device_get"),
        pytest.param(lambda metrics: print(metrics["loss"] > 10), id="compare"),
        pytest.param(lambda metrics: bool(jnp.isfinite(metrics["loss"])), id="jnp"),
    ],
)
def test_host_sync_guard_catches_a_read_on_every_step(monkeypatch, tmp_path, digits_data_dir, read):
    after_step = profiling.StepProfiler.after_step

    def read_every_step(self, step, outputs):
        read(outputs)  # what a careless per-step log line does
        return after_step(self, step, outputs)

    monkeypatch.setattr(profiling.StepProfiler, "after_step", read_every_step)
    # jnp refuses the proxy with a TypeError, or raises HostSyncError while formatting it.
    with pytest.raises((HostSyncError, TypeError)) as raised:
        _run_guarded(monkeypatch, tmp_path, digits_data_dir)
    if raised.type is HostSyncError:
        assert "after step 2, which is not a log" in str(raised.value)
