"""UViT: shapes and dtypes, conditioning, dropout, mixed precision, remat, FLOPs, sizes, errors.

Everything that compiles uses the tiny configuration; the paper configurations are only traced
(jax.eval_shape). Parameters are drawn at random rather than initialised, because the
zero-initialised output head makes a freshly initialised model output 0 whatever its inputs.
Compiles use LLVM optimisation level 0: about 3x faster on CPU, and runtime does not matter here.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.models import build, flops_per_example, model_config, NAMES, param_count, validate
from mcm_jax.models.layers import choose_attention_implementation

PAPER_PARAMS = {
    "imagenet64_small": 394e6,
    "imagenet64_large": 1.23e9,
    "imagenet128_small": 397e6,
    "imagenet128_large": 1.25e9,
}
NUM_CLASSES = 10
IO = dict(channels=3, num_classes=NUM_CLASSES)  # the data's: inputs() are 3-channel images
# The resolution each named network was made for (the data's, in a run).
NATIVE_RESOLUTION = {
    "imagenet64_small": 64, "imagenet64_large": 64, "imagenet128_small": 128,
    "imagenet128_large": 128, "t2i512": 512, "cifar10": 32, "digits": 16, "tiny": 16,
}
BATCH = 4
FAST_COMPILE = {"xla_backend_optimization_level": 0}
ONE_LEVEL = dict(
    level_kinds=("resnet",), level_channels=(8,), level_blocks=(1,), level_dropout=(0.0,)
)


def tiny(**overrides):
    config = model_config("tiny")
    config.update(overrides)
    return config


def compile_fast(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def inputs(resolution: int, batch: int = BATCH, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.normal(size=(batch, resolution, resolution, 3)), jnp.float32)
    logsnr = jnp.asarray(rng.uniform(-10, 10, size=(batch,)), jnp.float32)
    label = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch,)), jnp.int32)
    return z, logsnr, label


def param_shapes(model, resolution: int):
    init = functools.partial(model.init, train=False)
    return jax.eval_shape(init, jax.random.key(0), *inputs(resolution, batch=1))


def random_params(model, resolution: int, seed: int = 0):
    """Parameters of the right shapes with every entry random (no zero head), without init."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        if len(shape.shape) == 1:
            return jnp.asarray(1.0 + 0.1 * rng.normal(size=shape.shape), shape.dtype)
        fan_in = np.prod(shape.shape[:-1])
        return jnp.asarray(rng.normal(size=shape.shape) / np.sqrt(fan_in), shape.dtype)

    return jax.tree.map(draw, param_shapes(model, resolution))


@functools.lru_cache(maxsize=None)
def forward(resolution: int, train: bool, **overrides):
    """Compiled (params, z, logsnr, label, dropout_key) -> v_hat of the tiny model, batch BATCH."""
    model = build(tiny(**overrides), **IO)

    def apply(params, z, logsnr, label, key):
        return model.apply(params, z, logsnr, label, train=train, rngs={"dropout": key})

    return compile_fast(
        apply, param_shapes(model, resolution), *inputs(resolution), jax.random.key(0)
    )


@pytest.mark.slow
def test_init_holds_float32_params_only_and_a_zero_head():
    model = build(tiny(dtype="bfloat16"), **IO)
    key = jax.random.key(0, impl="rbg")  # compiles ~2.5x faster on CPU than threefry
    init = functools.partial(model.init, train=False)
    variables = compile_fast(init, key, *inputs(8))(key, *inputs(8))
    assert set(variables) == {"params"}
    leaves = jax.tree.leaves(variables)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert sum(leaf.size for leaf in leaves) == param_count(tiny(), 8, **IO)
    head = variables["params"]["conv_out"]
    assert not np.any(head["kernel"]) and not np.any(head["bias"])  # so v_hat = 0 at init


@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
def test_output_shape_and_dtype(resolution):
    params = random_params(build(tiny(), **IO), resolution)
    z, logsnr, label = inputs(resolution)
    v_hat = forward(resolution, False)(params, z, logsnr, label, jax.random.key(0))
    assert v_hat.shape == z.shape and v_hat.dtype == jnp.float32
    assert np.all(np.isfinite(v_hat)) and np.std(v_hat) > 1e-3


def test_label_and_logsnr_change_the_output_and_null_label_works():
    params = random_params(build(tiny(), **IO), 16)
    z = jnp.repeat(inputs(16, batch=1)[0], BATCH, axis=0)
    logsnr = jnp.array([2.0, 2.0, 2.1, 2.0])  # a small step in log-SNR must be resolved
    label = jnp.array([3, 4, 3, NUM_CLASSES])  # the last one is the null label
    v_hat = np.asarray(forward(16, False)(params, z, logsnr, label, jax.random.key(0)))
    assert np.all(np.isfinite(v_hat))
    for changed in (1, 2, 3):
        assert np.max(np.abs(v_hat[changed] - v_hat[0])) > 1e-3 * np.max(np.abs(v_hat[0]))


def test_unconditional_model_has_only_the_null_label():
    shapes = param_shapes(build(tiny(), channels=3, num_classes=0), 8)
    assert shapes["params"]["conditioning"]["label"]["embedding"].shape[0] == 1


def test_dropout_follows_the_rng_and_is_off_without_train():
    params = random_params(build(tiny(), **IO), 16)
    z, logsnr, label = inputs(16)
    train, evaluate = forward(16, True), forward(16, False)
    first, again = (
        np.asarray(train(params, z, logsnr, label, jax.random.key(1))) for _ in range(2)
    )
    other = np.asarray(train(params, z, logsnr, label, jax.random.key(2)))
    eval_1 = np.asarray(evaluate(params, z, logsnr, label, jax.random.key(1)))
    eval_2 = np.asarray(evaluate(params, z, logsnr, label, jax.random.key(2)))
    np.testing.assert_array_equal(first, again)
    assert np.max(np.abs(first - other)) > 1e-3
    np.testing.assert_array_equal(eval_1, eval_2)
    assert np.max(np.abs(first - eval_1)) > 1e-3


def test_bfloat16_compute_agrees_with_float32():
    params = random_params(build(tiny(), **IO), 16)
    z, logsnr, label = inputs(16)
    key = jax.random.key(0)
    full = np.asarray(forward(16, False)(params, z, logsnr, label, key))
    half = forward(16, False, dtype="bfloat16")(params, z, logsnr, label, key)
    assert half.dtype == jnp.float32
    assert np.linalg.norm(half - full) < 0.03 * np.linalg.norm(full)


@pytest.mark.slow
def test_remat_gives_the_same_gradients():
    """With dropout on, so the rematerialised blocks must also redraw the same masks."""
    z, logsnr, label = inputs(8)
    params = random_params(build(tiny(**ONE_LEVEL), **IO), 8)

    def gradients(remat):
        model = build(tiny(remat=remat, **ONE_LEVEL), **IO)

        def loss(params):
            v_hat = model.apply(
                params, z, logsnr, label, train=True, rngs={"dropout": jax.random.key(3)}
            )
            return jnp.mean(v_hat**2)

        grad = jax.grad(loss)
        return compile_fast(grad, params)(params), str(jax.make_jaxpr(grad)(params))

    reference, plain_jaxpr = gradients("none")
    rematerialised, remat_jaxpr = gradients("full")
    assert "remat" not in plain_jaxpr and "remat" in remat_jaxpr
    for remat_leaf, leaf in zip(jax.tree.leaves(rematerialised), jax.tree.leaves(reference)):
        # float32 rounding only (fusions sum in another order); a different mask would be O(1)
        np.testing.assert_allclose(remat_leaf, leaf, rtol=1e-5, atol=1e-5 * np.max(np.abs(leaf)))


@pytest.mark.parametrize("remat", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_every_remat_policy_wraps_the_blocks(remat):
    model = build(tiny(remat=remat), **IO)
    z, logsnr, label = inputs(8)
    params = param_shapes(model, 8)
    jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(params, z, logsnr, label)
    assert str(jaxpr).count("remat") == 5  # two per level (down and up) and one middle block


def test_flops_match_xla_cost_analysis():
    config = tiny(
        level_channels=(32, 64), middle_channels=64, head_dim=32, norm_groups=8, embedding_width=64
    )
    model = build(config, **IO)
    apply = functools.partial(model.apply, train=False)
    cost = compile_fast(apply, param_shapes(model, 16), *inputs(16, batch=1)).cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    assert abs(flops_per_example(config, 16, channels=3) / xla_flops - 1) < 0.10


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_paper_parameter_counts(name):
    count = param_count(
        model_config(name), NATIVE_RESOLUTION[name], channels=3, num_classes=1000  # ImageNet's
    )
    print(f"{name}: {count / 1e6:.1f}M parameters (paper {PAPER_PARAMS[name] / 1e6:.0f}M)")
    assert abs(count / PAPER_PARAMS[name] - 1) < 0.03


@pytest.mark.parametrize("name", NAMES)
def test_named_configs_are_valid_at_their_resolution(name):
    config = model_config(name)
    validate(config, NATIVE_RESOLUTION[name])
    assert flops_per_example(config, NATIVE_RESOLUTION[name], channels=3) > 0


def test_attention_implementation_choice():
    assert choose_attention_implementation("auto", jnp.bfloat16, 64) == "xla"  # tests run on CPU
    assert choose_attention_implementation("xla", jnp.bfloat16, 64) == "xla"
    with pytest.raises(ValueError, match="attention_impl"):
        choose_attention_implementation("cudnn", jnp.bfloat16, 64)
    cudnn = tiny(attention_impl="cudnn", dtype="bfloat16")
    assert param_count(cudnn, 8, **IO) == param_count(tiny(), 8, **IO)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"dtype": "float64"}, "dtype"),
        ({"attention_impl": "flash"}, "attention_impl"),
        ({"remat": "some"}, "remat"),
        ({"level_channels": (8, 12)}, r"level_channels\[1\]"),  # 12 not divisible by head_dim 8
        ({"level_channels": (6, 16)}, r"level_channels\[0\]"),  # 6 not divisible by norm_groups 4
        ({"middle_channels": 12}, "middle_channels"),
        ({"level_blocks": (1,)}, "level_blocks"),
        ({"level_kinds": ("resnet", "conv")}, r"level_kinds\[1\]"),
        ({"middle_dropout": 1.0}, "middle_dropout"),
        ({"attention_impl": "cudnn", "dtype": "float32"}, "attention_impl"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        build(tiny(**overrides), **IO)


def test_bad_data_facts_name_the_argument():
    with pytest.raises(ValueError, match="channels"):
        build(tiny(), channels=0, num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        build(tiny(), channels=3, num_classes=-1)


def test_bad_resolution_and_inputs_name_the_field():
    with pytest.raises(ValueError, match="resolution"):
        param_count(tiny(), 10, **IO)
    with pytest.raises(ValueError, match="resolution"):
        flops_per_example(tiny(), 6, channels=3)
    with pytest.raises(ValueError, match="model config name"):
        model_config("imagenet32_small")
    model = build(tiny(), **IO)
    z, logsnr, label = inputs(8)
    init = functools.partial(model.init, train=False)
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(init, jax.random.key(0), z[..., :1], logsnr, label)
    with pytest.raises(ValueError, match="label"):
        jax.eval_shape(init, jax.random.key(0), z, logsnr, label[:1])
