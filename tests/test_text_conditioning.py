"""Text conditioning of the UViT (paper §5.2): padding, the null prompt, errors, FLOPs, and that
networks without text are exactly as before.

Uses the tiny network in float32 with random parameters (see test_models) and a 12-wide text.
"""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcm_jax.models import build, flops_per_example, param_count
from test_models import IO, compile_fast, inputs, model_config, random_params, tiny

TEXT_WIDTH = 12
TEXT_LENGTH = 5
RESOLUTION = 16
# Computed with the code before text conditioning (main at 73e39a3): for random_params(model, 16)
# and inputs(16, batch=2), the sha256 of the parameter paths and shapes, the first outputs, and
# the sum of |v_hat|.
BEFORE_TEXT = {
    "tiny": (
        73,
        "ddab5bd5385add6132c18df974f27c5699a09ba0326ffb46d99a1083da1010a9",
        [-0.7696806192398071, 1.2354167699813843, 0.9626476764678955, -1.4242647886276245],
        1592.297607421875,
    ),
    "digits": (
        83,
        "f4fc49031f7eb6824da9f0cec8b89725312ee77114c4100a620d248a9c8262c1",
        [0.5742217302322388, 1.1140766143798828, 0.8453292846679688, 0.3305091857910156],
        1174.86474609375,
    ),
}


def text_inputs(batch: int, length: int = TEXT_LENGTH, seed: int = 1):
    """Random token embeddings and a mask with padding at the end, in the middle and at the start;
    the last example of a batch of 4 is the null prompt (all padding)."""
    rng = np.random.default_rng(seed)
    text = jnp.asarray(rng.normal(size=(batch, length, TEXT_WIDTH)), jnp.float32)
    masks = [[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]
    mask = jnp.asarray(np.resize(np.array(masks, bool), (batch, length)))
    return text, mask


@functools.lru_cache(maxsize=None)
def text_model(num_classes: int = IO["num_classes"]):
    return build(tiny(), channels=3, num_classes=num_classes, text_width=TEXT_WIDTH)


def text_params(model, seed: int = 0):
    """Random parameters (no zero head) of a text model, shapes from a traced init."""
    rng = np.random.default_rng(seed)
    text, mask = text_inputs(1)
    init = functools.partial(model.init, train=False)
    shapes = jax.eval_shape(
        init, jax.random.key(0), *inputs(RESOLUTION, batch=1), text=text, text_mask=mask
    )

    def draw(shape):
        if len(shape.shape) == 1:
            return jnp.asarray(1.0 + 0.1 * rng.normal(size=shape.shape), shape.dtype)
        fan_in = np.prod(shape.shape[:-1])
        return jnp.asarray(rng.normal(size=shape.shape) / np.sqrt(fan_in), shape.dtype)

    return jax.tree.map(draw, shapes)


@functools.lru_cache(maxsize=None)
def text_forward():
    """Jitted (params, z, logsnr, label, text, text_mask) -> v_hat (one compile per shape)."""
    model = text_model()

    def apply(params, z, logsnr, label, text, text_mask):
        return model.apply(params, z, logsnr, label, train=False, text=text, text_mask=text_mask)

    return jax.jit(apply)


def run(params, text, mask, label=None, seed: int = 0):
    z, logsnr, default_label = inputs(RESOLUTION, batch=text.shape[0], seed=seed)
    label = default_label if label is None else label
    return np.asarray(text_forward()(params, z, logsnr, label, text, mask))


@pytest.mark.parametrize("name", BEFORE_TEXT)
def test_networks_without_text_are_unchanged(name):
    count, digest, first, abs_sum = BEFORE_TEXT[name]
    model = build(model_config(name), **IO)
    params = random_params(model, RESOLUTION)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = ";".join(f"{jax.tree_util.keystr(p)}:{tuple(leaf.shape)}" for p, leaf in leaves)
    assert len(leaves) == count
    assert hashlib.sha256(paths.encode()).hexdigest() == digest
    z, logsnr, label = inputs(RESOLUTION, batch=2)
    apply = jax.jit(functools.partial(model.apply, train=False))
    v_hat = np.asarray(apply(params, z, logsnr, label))
    np.testing.assert_allclose(v_hat.ravel()[:4], first, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.abs(v_hat).sum(), abs_sum, rtol=1e-4)


def test_padding_tokens_change_nothing():
    params = text_params(text_model())
    text, mask = text_inputs(4)
    rng = np.random.default_rng(7)
    noisy = jnp.where(mask[..., None], text, jnp.asarray(rng.normal(size=text.shape), jnp.float32))
    extra = jnp.asarray(10 * rng.normal(size=(4, 3, TEXT_WIDTH)), jnp.float32)
    longer_text = jnp.concatenate([noisy, extra], axis=1)
    longer_mask = jnp.concatenate([mask, jnp.zeros((4, 3), bool)], axis=1)
    reference = run(params, text, mask)
    np.testing.assert_allclose(run(params, noisy, mask), reference, rtol=1e-5, atol=1e-5)
    longer = run(params, longer_text, longer_mask)
    np.testing.assert_allclose(longer, reference, rtol=1e-5, atol=1e-5)


def test_prompts_and_labels_change_the_output():
    params = text_params(text_model())
    text, mask = text_inputs(4)
    one = jnp.repeat(text[:1], 4, axis=0)
    other = text_inputs(1, seed=2)[0]
    texts = one.at[1].set(other[0])
    masks = jnp.repeat(mask[:1], 4, axis=0).at[3].set(False)  # example 3: the null prompt
    label = jnp.array([3, 3, 4, 3])
    v_hat = run(params, texts, masks, label=label, seed=0)
    z_same = run(params, one, jnp.repeat(mask[:1], 4, axis=0), label=jnp.full(4, 3))
    # Same z, logsnr per example index: compare example i of v_hat with example i of z_same.
    for changed in (1, 2, 3):  # other prompt, other label, null prompt
        gap = np.max(np.abs(v_hat[changed] - z_same[changed]))
        assert gap > 1e-3 * np.max(np.abs(z_same[changed]))
    np.testing.assert_allclose(v_hat[0], z_same[0], rtol=1e-5, atol=1e-5)


def test_null_prompt_is_the_network_without_text():
    """An all-padding prompt ignores the token values and gives exactly the text-free network with
    the same other parameters: the unconditional model for classifier-free guidance."""
    params = text_params(text_model())
    text, mask = text_inputs(4)
    null = jnp.zeros_like(mask)
    first = run(params, text, null)
    np.testing.assert_allclose(run(params, 100 * text[:, ::-1], null), first, rtol=1e-6, atol=1e-6)
    plain = build(tiny(), **IO)
    z, logsnr, label = inputs(RESOLUTION, batch=4)
    v_plain = np.asarray(jax.jit(functools.partial(plain.apply, train=False))(
        _prune(params), z, logsnr, label
    ))
    np.testing.assert_allclose(first, v_plain, rtol=1e-5, atol=1e-5)


def _prune(tree):
    """The parameter tree without the text parameters (text, text_pooled, cross-attention)."""
    if not isinstance(tree, dict):
        return tree
    return {
        key: _prune(value)
        for key, value in tree.items()
        if key not in ("text", "text_pooled", "cross_attention", "norm_cross")
    }


@pytest.mark.slow
def test_text_only_model_jits_and_differentiates():
    model = text_model(num_classes=0)
    params = text_params(model)
    text, mask = text_inputs(4)
    z, logsnr, _ = inputs(RESOLUTION, batch=4)
    label = jnp.zeros(4, jnp.int32)  # the null label: text is the only condition

    def loss(params, mask):
        v_hat = model.apply(params, z, logsnr, label, train=False, text=text, text_mask=mask)
        return jnp.mean(v_hat**2)

    grad = jax.jit(jax.grad(loss))
    for this_mask in (mask, jnp.zeros_like(mask)):  # the null prompt must not give NaNs either
        grads = grad(params, this_mask)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))
    cross = grad(params, mask)["params"]["middle_block0"]["cross_attention"]["kv"]["kernel"]
    assert np.max(np.abs(cross)) > 0


def test_param_count_and_init_agree():
    model = text_model()
    text, mask = text_inputs(1)
    init = functools.partial(model.init, train=False)
    shapes = jax.eval_shape(
        init, jax.random.key(0), *inputs(8, batch=1), text=text, text_mask=mask
    )
    count = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert count == param_count(tiny(), 8, **IO, text_width=TEXT_WIDTH)
    assert count > param_count(tiny(), 8, **IO)


def test_flops_match_xla_cost_analysis():
    """As test_models.test_flops_match_xla_cost_analysis, with text of 8 tokens: the
    cross-attention and pooled projection FLOPs are counted."""
    config = tiny(
        level_channels=(32, 64),
        middle_channels=64,
        head_dim=32,
        norm_groups=8,
        embedding_width=64,
    )
    model = build(config, **IO, text_width=32)
    text = jnp.zeros((1, 8, 32), jnp.float32)
    mask = jnp.ones((1, 8), bool)

    def apply(params, z, logsnr, label, text, mask):
        return model.apply(params, z, logsnr, label, train=False, text=text, text_mask=mask)

    shapes = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        *inputs(16, batch=1),
        text=text,
        text_mask=mask,
    )
    cost = compile_fast(apply, shapes, *inputs(16, batch=1), text, mask).cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    ours = flops_per_example(config, 16, channels=3, text=(8, 32))
    assert abs(ours / xla_flops - 1) < 0.05, (ours, xla_flops)  # 0.5% on CPU, jax 0.10.2


def test_bad_text_arguments_name_the_argument():
    z, logsnr, label = inputs(8, batch=2)
    text, mask = text_inputs(2)
    plain_init = functools.partial(build(tiny(), **IO).init, jax.random.key(0), train=False)
    with pytest.raises(ValueError, match="text: must be None"):
        jax.eval_shape(functools.partial(plain_init, text=text), z, logsnr, label)
    with pytest.raises(ValueError, match="text_mask: must be None"):
        jax.eval_shape(functools.partial(plain_init, text_mask=mask), z, logsnr, label)
    init = functools.partial(text_model().init, jax.random.key(0), train=False)
    bad = [
        (dict(text_mask=mask), "text: expected"),  # no text
        (dict(text=text[..., :5], text_mask=mask), "text: expected"),  # wrong width
        (dict(text=text[:1], text_mask=mask[:1]), "text: expected"),  # wrong batch
        (dict(text=text), "text_mask: expected"),  # no mask
        (dict(text=text, text_mask=mask.astype(jnp.int32)), "text_mask: expected"),
        (dict(text=text, text_mask=mask[:, :3]), "text_mask: expected"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            jax.eval_shape(functools.partial(init, **kwargs), z, logsnr, label)
    with pytest.raises(ValueError, match="text_width"):
        build(tiny(), **IO, text_width=-1)
    with pytest.raises(ValueError, match="text:"):
        flops_per_example(tiny(), 16, channels=3, text=(0, TEXT_WIDTH))
