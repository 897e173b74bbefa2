"""The fused layers of config.model.fused_norms and .split_skip_dense compute what the flax layers
they replace compute, with the same parameters, and keep fewer bytes for the backward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.models import build, model_config, validation
from mcm_jax.models.layers import ConcatDense
from mcm_jax.models.norms import norm

BF16_ROUNDING = 2.0**-8  # bf16 keeps 8 significant bits: rounding to nearest errs <= 2^-8 relative
# Relative to the largest value: float32 arithmetic in another order. The inputs' mean is 3 standard
# deviations, so the one-pass variance of both paths (E[x^2] - E[x]^2, as nn.GroupNorm's
# use_fast_variance) loses bits to cancellation: flax's output errs by 4e-5 of its largest value
# against a float64 computation here, the fused layer's by 1e-5.
F32_TOLERANCE = 1e-4


class _Norm(nn.Module):
    """One UViT norm, fused or the flax layers it replaces (norms.norm)."""

    fused: bool
    num_groups: int | None
    affine: bool
    modulated: bool
    activation: object
    dtype: object

    @nn.compact
    def __call__(self, x, scale, shift):
        return norm(
            x, fused=self.fused, name="norm", num_groups=self.num_groups, dtype=self.dtype,
            affine=self.affine, scale=scale if self.modulated else None,
            shift=shift if self.modulated else None, activation=self.activation,
        )


# Each use in the UViT: (num_groups, affine, modulated, activation, input shape).
USES = {
    "resnet_norm_out": (4, True, True, nn.silu, (2, 8, 8, 16)),  # GroupNorm, modulation, SiLU
    "resnet_norm_in": (4, True, False, nn.silu, (2, 8, 8, 16)),  # and the output head's
    "transformer_norm": (None, False, True, None, (2, 64, 16)),  # LayerNorm, modulation
    "cross_attention_norm": (None, True, False, None, (2, 64, 16)),  # LayerNorm, affine
}


def _inputs(shape, dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    # An offset and an uneven scale per channel, as activations have: the statistics matter.
    x = 3.0 + jax.random.normal(keys[0], shape) * jnp.linspace(0.5, 2.0, shape[-1])
    scale, shift = (0.3 * jax.random.normal(k, (shape[0], shape[-1])) for k in keys[1:3])
    cotangent = jax.random.normal(keys[3], shape)
    return [a.astype(dtype) for a in (x, scale, shift, cotangent)]


def _layer(use, fused, dtype):
    num_groups, affine, modulated, activation, shape = USES[use]
    layer = _Norm(fused, num_groups, affine, modulated, activation, dtype)
    x, scale, shift, cotangent = _inputs(shape, dtype)
    params = layer.init(jax.random.PRNGKey(1), x, scale, shift)
    # Non-trivial affine parameters (their initial values are ones and zeros).
    params = jax.tree.map(
        lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
    )
    return layer, params, (x, scale, shift), cotangent


def _output_and_gradients(layer, params, inputs, cotangent):
    out, vjp = jax.vjp(lambda p, *a: layer.apply(p, *a), params, *inputs)
    return out, vjp(cotangent)


def _f32(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


@pytest.mark.slow
@pytest.mark.parametrize("use", USES)
def test_fused_norm_equals_flax_in_float32(use):
    layer, params, inputs, cotangent = _layer(use, True, jnp.float32)
    reference, _, _, _ = _layer(use, False, jnp.float32)
    ref_params = reference.init(jax.random.PRNGKey(1), *inputs)
    assert jax.tree.structure(ref_params) == jax.tree.structure(params)  # the same parameters
    fused = _output_and_gradients(layer, params, inputs, cotangent)
    expected = _output_and_gradients(reference, params, inputs, cotangent)
    # Output; gradients wrt parameters, x, scale, shift.
    for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=F32_TOLERANCE * np.abs(want).max())


@pytest.mark.slow
@pytest.mark.parametrize("use", USES)
def test_fused_norm_in_bf16_is_within_one_bf16_rounding_of_the_exact_value(use):
    """bf16 inputs: the fused layer computes in float32 and rounds once, so its output and input
    gradients are within bf16 rounding of the flax layer's in float32 on the same values (the
    exact value), and never further from it than the flax layer in bf16, which rounds after
    each step."""
    layer, params, inputs, cotangent = _layer(use, True, jnp.bfloat16)
    reference, _, _, _ = _layer(use, False, jnp.float32)
    exact = _f32(_output_and_gradients(reference, params, _f32(inputs), _f32(cotangent)))
    fused = _f32(_output_and_gradients(layer, params, inputs, cotangent))
    unfused_layer, _, _, _ = _layer(use, False, jnp.bfloat16)
    unfused = _f32(_output_and_gradients(unfused_layer, params, inputs, cotangent))
    out, (param_grads, *input_grads) = fused
    exact_out, (exact_param_grads, *exact_input_grads) = exact
    for got, want in [(out, exact_out), *zip(input_grads, exact_input_grads)]:  # bf16
        bound = BF16_ROUNDING * np.abs(want) + F32_TOLERANCE * np.abs(want).max()
        assert np.all(np.abs(got - want) <= bound), np.abs(got - want).max()
    for got, want in zip(jax.tree.leaves(param_grads), jax.tree.leaves(exact_param_grads)):
        np.testing.assert_allclose(got, want, rtol=0, atol=F32_TOLERANCE * np.abs(want).max())
    bf16_leaves = lambda tree: [tree[0], *tree[1][1:]]  # output, gradients wrt x, scale, shift
    for got, flax_bf16, want in zip(*map(bf16_leaves, (fused, unfused, exact)), strict=True):
        assert np.abs(got - want).max() <= np.abs(flax_bf16 - want).max()


def _residual_bytes(layer, params, inputs):
    """The bytes of what jax.vjp keeps for the backward pass (its function's leaves)."""
    residuals = jax.eval_shape(lambda *a: jax.vjp(layer.apply, *a)[1], params, *inputs)
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals))


@pytest.mark.parametrize("use", ["resnet_norm_out", "transformer_norm"])
def test_fused_norm_keeps_the_bf16_input_and_the_statistics_only(use):
    layer, params, inputs, _ = _layer(use, True, jnp.bfloat16)
    unfused_layer, _, _, _ = _layer(use, False, jnp.bfloat16)
    x, scale, shift = inputs
    num_groups = USES[use][0]
    statistics = 2 * 4 * x.shape[0] * (num_groups or np.prod(x.shape[1:-1]))  # f32 mean, 1/std
    kept = x.nbytes + statistics + scale.nbytes + shift.nbytes + sum(
        p.nbytes for p in jax.tree.leaves(params)
    )
    assert _residual_bytes(layer, params, inputs) == kept
    # The flax layers keep float32 copies of the activation: at least two x's worth at 4 bytes.
    assert _residual_bytes(unfused_layer, params, inputs) >= kept + 3 * x.nbytes


def test_concat_dense_equals_dense_of_the_concatenation():
    h, skip = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 4, 4, 8))
    dense = nn.Dense(8, dtype=jnp.float32)
    concat_dense = ConcatDense(8, jnp.float32)
    params = concat_dense.init(jax.random.PRNGKey(1), h, skip)
    merged = jnp.concatenate([h, skip], -1)
    dense_params = dense.init(jax.random.PRNGKey(1), merged)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(dense_params), strict=True):
        np.testing.assert_array_equal(got, want)  # same names, shapes and initial values
    cotangent = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 8))
    got = _output_and_gradients(concat_dense, params, (h, skip), cotangent)
    out, vjp = jax.vjp(lambda p, a, b: dense.apply(p, jnp.concatenate([a, b], -1)), params, h, skip)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves((out, vjp(cotangent))), strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=F32_TOLERANCE * np.abs(w).max())


def _tiny(fused: bool, scan_blocks: bool):
    config = model_config("tiny")
    config.update(fused_norms=fused, split_skip_dense=fused, scan_blocks=scan_blocks)
    if scan_blocks:  # two blocks per run, so each scan loops; each block rematerialised
        config.update(level_blocks=(2, 2), middle_blocks=2, remat="dots_saveable")
    return config


@pytest.mark.slow  # 40-50 s each: whole-network outputs and gradients, twice
@pytest.mark.parametrize("scan_blocks", [False, True], ids=["unrolled", "scanned"])
def test_uvit_is_the_same_function_with_the_fused_layers(scan_blocks):
    """Same parameters (either setting's initial values), outputs and gradients with
    fused_norms and split_skip_dense on and off; the scanned network has text conditioning and
    remat (the fused norm's backward pass inside jax.checkpoint inside nn.scan)."""
    text_width = 8 if scan_blocks else 0
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    z = jax.random.normal(keys[0], (2, 8, 8, 3))
    logsnr, label = jnp.array([-3.0, 2.0]), jnp.array([1, 10])
    text = dict(
        text=jax.random.normal(keys[1], (2, 4, text_width)),
        text_mask=jnp.array([[True, True, False, False], [False] * 4]),
    ) if text_width else {}
    results = []
    for fused in (False, True):
        model = build(_tiny(fused, scan_blocks), channels=3, num_classes=10, text_width=text_width)
        params = model.init(keys[2], z, logsnr, label, train=False, **text)
        # Perturbed so the zero-initialised output head passes gradients to every layer.
        params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(keys[3], p.shape), params)

        def loss(params, z, model=model):
            out = model.apply(params, z, logsnr, label, train=True, rngs={"dropout": keys[3]},
                              **text)
            return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

        results.append((params, jax.value_and_grad(loss, argnums=(0, 1))(params, z)))
    (params_off, out_off), (params_on, out_on) = results
    assert jax.tree.structure(params_off) == jax.tree.structure(params_on)
    for a, b in zip(jax.tree.leaves(params_off), jax.tree.leaves(params_on)):
        np.testing.assert_array_equal(a, b)
    for got, want in zip(jax.tree.leaves(out_on), jax.tree.leaves(out_off), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=F32_TOLERANCE * np.abs(want).max())


@pytest.mark.parametrize("field", ["fused_norms", "split_skip_dense"])
def test_a_bad_switch_fails_naming_the_field(field):
    config = model_config("tiny")
    config[field] = None  # what a config file can set (the command line takes booleans only)
    with pytest.raises(ValueError, match=f"^config.model.{field}: must be True or False, got None"):
        validation.validate(config, 16, prefix="config.model.")
