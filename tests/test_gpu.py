"""Checks that need an NVIDIA GPU (skipped elsewhere): cuDNN's fused attention in the UViT's self-
and text cross-attention, with padding masks and the null prompt, agrees with XLA's attention.

On a GPU machine: JAX_PLATFORMS=cuda python -m pytest -q tests/test_gpu.py
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.benchmarks.train_step_bench import cudnn_attention_calls
from mcm_jax.models import build, model_config
from test_text_conditioning import _prune

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")

TEXT_WIDTH, TEXT_LENGTH, RESOLUTION, BATCH = 32, 16, 32, 4


def _config(attention_impl: str):
    config = model_config("tiny")
    config.update(
        level_channels=(64, 128), middle_channels=128, head_dim=64, embedding_width=64,
        norm_groups=8, dtype="bfloat16", attention_impl=attention_impl,
    )
    return config


@functools.lru_cache(maxsize=None)
def _model(attention_impl: str, text_width: int = TEXT_WIDTH):
    return build(_config(attention_impl), channels=3, num_classes=10, text_width=text_width)


def _inputs():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(BATCH, RESOLUTION, RESOLUTION, 3)), jnp.float32)
    logsnr = jnp.asarray(rng.uniform(-10, 10, BATCH), jnp.float32)
    label = jnp.arange(BATCH, dtype=jnp.int32)
    text = jnp.asarray(rng.normal(size=(BATCH, TEXT_LENGTH, TEXT_WIDTH)), jnp.float32)
    lengths = np.array([TEXT_LENGTH, 5, 1, 0])  # full, padded, one token, the null prompt
    mask = jnp.asarray(np.arange(TEXT_LENGTH)[None, :] < lengths[:, None])
    return z, logsnr, label, text, mask


@functools.lru_cache(maxsize=None)
def _params():
    z, logsnr, label, text, mask = _inputs()
    variables = _model("xla").init(
        jax.random.PRNGKey(0), z, logsnr, label, train=False, text=text, text_mask=mask
    )
    # A non-zero output head, so that the attention paths show in the output.
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(
        treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )


def _apply(attention_impl: str):
    model = _model(attention_impl)
    return jax.jit(lambda p, z, logsnr, label, text, mask: model.apply(
        p, z, logsnr, label, train=False, text=text, text_mask=mask
    ))


def test_cudnn_attention_is_selected_for_self_and_cross_attention():
    hlo = _apply("cudnn").lower(_params(), *_inputs()).compile().as_text()
    assert cudnn_attention_calls(hlo), "no cuDNN fused-attention call in the compiled program"
    assert _apply("auto").lower(_params(), *_inputs()).compile().as_text().count("__cudnn$fmha") \
        == hlo.count("__cudnn$fmha")  # "auto" picks cuDNN on this GPU


def test_cudnn_and_xla_attention_agree():
    params, inputs = _params(), _inputs()
    cudnn = np.asarray(_apply("cudnn")(params, *inputs))
    xla = np.asarray(_apply("xla")(params, *inputs))
    assert np.all(np.isfinite(cudnn))
    error = np.linalg.norm(cudnn - xla) / np.linalg.norm(xla)
    assert error < 2e-2, error  # bfloat16 compute


def test_under_cudnn_padding_changes_nothing_and_the_null_prompt_is_the_network_without_text():
    params = _params()
    z, logsnr, label, text, mask = _inputs()
    garbage = jnp.where(mask[..., None], text, 50.0)
    apply = _apply("cudnn")
    out = np.asarray(apply(params, z, logsnr, label, text, mask))
    np.testing.assert_allclose(out, apply(params, z, logsnr, label, garbage, mask), atol=1e-6)
    plain = _model("cudnn", text_width=0)
    without_text = np.asarray(jax.jit(functools.partial(plain.apply, train=False))(
        _prune(params), z, logsnr, label
    ))[3]
    error = np.linalg.norm(out[3] - without_text) / np.linalg.norm(without_text)
    assert error < 1e-2, error  # example 3 has the null prompt; bfloat16 roundings differ


def test_cudnn_gradients_are_finite_and_agree_with_xla():
    params, (z, logsnr, label, text, mask) = _params(), _inputs()

    def loss(attention_impl):
        model = _model(attention_impl)
        return jax.jit(jax.grad(lambda p: jnp.mean(model.apply(
            p, z, logsnr, label, train=False, text=text, text_mask=mask
        ) ** 2)))

    cudnn, xla = loss("cudnn")(params), loss("xla")(params)
    flat_cudnn, flat_xla = jax.tree.leaves(cudnn), jax.tree.leaves(xla)
    assert all(np.all(np.isfinite(g)) for g in flat_cudnn)
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(flat_cudnn, flat_xla))
    den = sum(float(jnp.sum(b**2)) for b in flat_xla)
    assert (num / den) ** 0.5 < 5e-2
