"""UViT (simple diffusion, Hoogeboom et al. 2023): a U-Net whose low-resolution levels and middle
stack are transformer blocks. It predicts v from (z, log-SNR, label) and, for a text-conditioned
model (text_width > 0), a text encoder's token embeddings and their padding mask."""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mcm_jax.models import stacking
from mcm_jax.models.blocks import CHECKPOINT_POLICIES, ResNetBlock, TransformerBlock
from mcm_jax.models.configs import RESNET, TRANSFORMER
from mcm_jax.models.layers import (
    ConcatDense, ConditioningEmbedding, sincos_position_embedding, TextContext,
)
from mcm_jax.models.norms import norm
from mcm_jax.models.validation import DTYPES, validate_static


@functools.cache
def _block_class(kind: str, remat: str, prevent_cse: bool = True) -> type[nn.Module]:
    """The block for a level kind, wrapped in nn.remat unless remat is "none". Inside a scan
    prevent_cse can be off (the loop already keeps XLA from merging the recomputation away)."""
    block_class = ResNetBlock if kind == RESNET else TransformerBlock
    if remat == "none":
        return block_class
    return nn.remat(block_class, policy=CHECKPOINT_POLICIES[remat], prevent_cse=prevent_cse)


def _downsample(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample(x: jax.Array) -> jax.Array:
    """Nearest neighbour, x2 in height and width."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _add_position_embedding(x: jax.Array) -> jax.Array:
    _, height, width, channels = x.shape
    position = sincos_position_embedding(height, width, channels).reshape(height, width, channels)
    return x + position.astype(x.dtype)


def _merge_skip(h: jax.Array, skip: jax.Array, split: bool, dtype: Any, name: str) -> jax.Array:
    """The up path's skip merge `name`: concatenate, then a dense layer back to h's width; split:
    the same layer without the concatenated copy (layers.ConcatDense, same parameters)."""
    if split:
        return ConcatDense(h.shape[-1], dtype, name=name)(h, skip)
    return nn.Dense(h.shape[-1], dtype=dtype, name=name)(jnp.concatenate([h, skip], axis=-1))


def _block_conditions(
    kind: str, embedding: jax.Array, context: tuple[jax.Array, ...] | None
) -> tuple:
    """What a block takes after its input: the embedding, and the text context for a transformer
    block of a text-conditioned model (ResNet blocks do not attend)."""
    if kind == RESNET or context is None:
        return (embedding,)
    return (embedding, context)


class _Step(nn.Module):
    """The body of a scanned run of identical blocks: (h, skip, conditions) -> (h, output). With
    merge_skip (the up path) it first merges the skip as the unrolled network does before each
    up block: concatenate, then a dense layer back to the width. keep_outputs (the down path)
    returns every block's output, the skips; otherwise none."""

    block: nn.Module  # adopted under its field name, stacking.BLOCK
    merge_skip: bool
    keep_outputs: bool
    split_skip_dense: bool = False

    @nn.compact
    def __call__(
        self, h: jax.Array, skip: jax.Array | None, conditions: tuple
    ) -> tuple[jax.Array, jax.Array | None]:
        if self.merge_skip:
            h = _merge_skip(h, skip, self.split_skip_dense, self.block.dtype, stacking.SKIP)
        h = self.block(h, *conditions)
        return h, (h if self.keep_outputs else None)


class UViT(nn.Module):
    """apply(variables, z, logsnr, label, train=...) -> v_hat, float32, same shape as z (NHWC).

    Down path: per level, its blocks (each output kept as a skip), then 2x2 average pooling and a
    dense projection to the next width. Middle: transformer blocks. Up path: dense projection,
    nearest-neighbour upsampling, then per block: concatenate a skip, project back, block.
    Parameters are float32; compute runs in `dtype`; the output head is zero-initialised.

    Text conditioning (text_width > 0; paper §5.2): apply(..., text=, text_mask=) with text
    (batch, length, text_width), a text encoder's token embeddings, and text_mask (batch, length)
    bool, True for real tokens and False for padding (anywhere, any length >= 1). Every
    transformer block (transformer levels and middle) cross-attends to the tokens, and their
    masked mean, projected, is added to the conditioning vector. Padding tokens change nothing.
    The null prompt, for classifier-free guidance and prompt dropout, is an all-False text_mask
    (the token values are then ignored; zeros will do): its pooled embedding is 0 and its
    cross-attention adds exactly 0, so it is the unconditional model, as the null label is for
    classes. A model may have text and class conditioning, either, or neither; with
    text_width = 0 text and text_mask must be None and the network is exactly the one without text.

    scan_blocks: each run of identical blocks (a level's blocks on the way down, on the way up with
    their skip merges, the middle stack) is one nn.scan, so XLA compiles one block per run instead
    of every block; the function is the same, the parameters of a run are stacked on a leading
    axis (the layouts and their conversion: stacking.py).

    fused_norms: every GroupNorm and LayerNorm with the modulation and activation after it as one
    fused function with a hand-written backward pass that keeps bf16 inputs, not float32 copies
    (norms.py); split_skip_dense: the skip merges without the concatenated copy
    (layers.ConcatDense). Both compute the same function with the same parameters, so either
    setting restores the other's checkpoints; they differ only in rounding.
    """

    channels: int
    num_classes: int
    level_kinds: tuple[str, ...]
    level_channels: tuple[int, ...]
    level_blocks: tuple[int, ...]
    level_dropout: tuple[float, ...]
    middle_channels: int
    middle_blocks: int
    middle_dropout: float
    embedding_width: int
    fourier_features: int
    head_dim: int
    mlp_ratio: int
    norm_groups: int
    dtype: Any
    attention_impl: str
    remat: str
    scan_blocks: bool = False
    text_width: int = 0
    fused_norms: bool = False
    split_skip_dense: bool = False

    def _check_text(
        self, batch: int, text: jax.Array | None, text_mask: jax.Array | None
    ) -> None:
        """ValueError naming the argument unless text and text_mask fit the model's text_width."""
        if self.text_width == 0:
            for arg_name, value in (("text", text), ("text_mask", text_mask)):
                if value is not None:
                    raise ValueError(
                        f"{arg_name}: must be None, this model has no text conditioning "
                        "(text_width=0)"
                    )
            return
        if text is None or text.ndim != 3 or text.shape[::2] != (batch, self.text_width):
            shape = None if text is None else text.shape
            raise ValueError(
                f"text: expected (batch={batch}, length, text_width={self.text_width}), got {shape}"
            )
        if text.shape[1] < 1:
            raise ValueError(f"text: needs at least one token (padding allowed), got {text.shape}")
        if text_mask is None or text_mask.shape != text.shape[:2] or text_mask.dtype != jnp.bool_:
            shape, dtype = (None, None) if text_mask is None else (text_mask.shape, text_mask.dtype)
            raise ValueError(
                f"text_mask: expected bool of shape {text.shape[:2]} (batch, length), "
                f"got {dtype} {shape}"
            )

    def _block(
        self, kind: str, width: int, dropout: float, train: bool, name: str | None = None, *,
        scanned: bool = False,
    ) -> nn.Module:
        """A block named `name`; scanned: unbound (a _Step adopts it) and for a scan's body."""
        shared = dict(
            channels=width, dropout=dropout, deterministic=not train, dtype=self.dtype,
            fused_norms=self.fused_norms,
        )
        if scanned:
            shared["parent"] = None
        block_class = _block_class(kind, self.remat, prevent_cse=not scanned)
        if kind == RESNET:
            return block_class(norm_groups=self.norm_groups, name=name, **shared)
        return block_class(
            head_dim=self.head_dim,
            mlp_ratio=self.mlp_ratio,
            attention_impl=self.attention_impl,
            name=name,
            **shared,
        )

    def _blocks(
        self, kind: str, width: int, dropout: float, train: bool, length: int, name: str, *,
        merge_skip: bool = False, keep_outputs: bool = False,
    ) -> nn.Module:
        """`length` identical blocks as one nn.scan over a _Step: parameters stacked on a leading
        axis (see stacking.py), a fresh dropout rng per block, the remat policy inside the body."""
        scanned = nn.scan(
            _Step,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0, nn.broadcast),
            length=length,
        )
        block = self._block(kind, width, dropout, train, scanned=True)
        return scanned(
            block=block, merge_skip=merge_skip, keep_outputs=keep_outputs,
            split_skip_dense=self.split_skip_dense, name=name,
        )

    def _check_inputs(self, z: jax.Array, logsnr: jax.Array, label: jax.Array) -> None:
        pooling = 2 ** len(self.level_kinds)
        if z.ndim != 4 or z.shape[-1] != self.channels:
            raise ValueError(
                f"z: expected (batch, height, width, {self.channels}) (channels), got {z.shape}"
            )
        if z.shape[1] % pooling or z.shape[2] % pooling:
            raise ValueError(
                f"z: height and width {z.shape[1:3]} must be multiples of {pooling} (resolution)"
            )
        for arg_name, value in (("logsnr", logsnr), ("label", label)):
            if value.shape != z.shape[:1]:
                raise ValueError(
                    f"{arg_name}: expected shape ({z.shape[0]},) (batch), got {value.shape}"
                )

    @nn.compact
    def __call__(
        self,
        z: jax.Array,
        logsnr: jax.Array,
        label: jax.Array,
        *,
        train: bool,
        text: jax.Array | None = None,
        text_mask: jax.Array | None = None,
    ) -> jax.Array:
        self._check_inputs(z, logsnr, label)
        self._check_text(z.shape[0], text, text_mask)
        context, pooled_text = None, None
        if self.text_width:
            *context, pooled_text = TextContext(self.dtype, name="text")(text, text_mask)
            context = tuple(context)
        embedding = ConditioningEmbedding(
            self.embedding_width,
            self.fourier_features,
            self.num_classes,
            self.dtype,
            name="conditioning",
        )(logsnr, label, pooled_text)
        levels = list(
            zip(self.level_kinds, self.level_channels, self.level_blocks, self.level_dropout)
        )

        h = nn.Conv(self.level_channels[0], (3, 3), dtype=self.dtype, name="conv_in")(
            z.astype(self.dtype)
        )
        skips = []  # per block (unrolled), or per level, stacked on a leading axis (scanned)
        for level, (kind, width, blocks, dropout) in enumerate(levels):
            if level > 0:
                h = nn.Dense(width, dtype=self.dtype, name=f"down{level}_proj")(_downsample(h))
            if kind == TRANSFORMER:
                h = _add_position_embedding(h)
            conditions = _block_conditions(kind, embedding, context)
            if self.scan_blocks:
                name = stacking.stack_name("down", level)
                scanned = self._blocks(kind, width, dropout, train, blocks, name, keep_outputs=True)
                h, level_skips = scanned(h, None, conditions)
                skips.append(level_skips)
                continue
            for index in range(blocks):
                h = self._block(kind, width, dropout, train, f"down{level}_block{index}")(
                    h, *conditions
                )
                skips.append(h)

        h = nn.Dense(self.middle_channels, dtype=self.dtype, name="middle_proj")(_downsample(h))
        h = _add_position_embedding(h)
        conditions = _block_conditions(TRANSFORMER, embedding, context)
        if self.scan_blocks:
            middle = self._blocks(
                TRANSFORMER, self.middle_channels, self.middle_dropout, train, self.middle_blocks,
                stacking.stack_name("middle"),
            )
            h, _ = middle(h, None, conditions)
        else:
            for index in range(self.middle_blocks):
                name = f"middle_block{index}"
                block = self._block(
                    TRANSFORMER, self.middle_channels, self.middle_dropout, train, name
                )
                h = block(h, *conditions)

        for level, (kind, width, blocks, dropout) in reversed(list(enumerate(levels))):
            h = _upsample(nn.Dense(width, dtype=self.dtype, name=f"up{level}_proj")(h))
            if kind == TRANSFORMER:
                h = _add_position_embedding(h)
            conditions = _block_conditions(kind, embedding, context)
            if self.scan_blocks:
                name = stacking.stack_name("up", level)
                scanned = self._blocks(kind, width, dropout, train, blocks, name, merge_skip=True)
                h, _ = scanned(h, skips.pop()[::-1], conditions)  # the last skip first
                continue
            for index in range(blocks):
                h = _merge_skip(
                    h, skips.pop(), self.split_skip_dense, self.dtype, f"up{level}_skip{index}"
                )
                h = self._block(kind, width, dropout, train, f"up{level}_block{index}")(
                    h, *conditions
                )

        h = norm(
            h, fused=self.fused_norms, name="norm_out", num_groups=self.norm_groups,
            dtype=self.dtype, activation=nn.silu,
        )
        v_hat = nn.Conv(
            self.channels,
            (3, 3),
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros,
            name="conv_out",
        )(h)
        return v_hat.astype(jnp.float32)


DATA_FIELDS = ("channels", "num_classes", "text_width")  # UViT fields that come from the data


def build(
    config: ml_collections.ConfigDict, *, channels: int, num_classes: int, text_width: int = 0
) -> UViT:
    """The UViT of a configuration (see configs.py) for images of `channels` channels, labels
    0..num_classes-1 (num_classes is the null label; 0: unconditional) and, if text_width > 0,
    prompts embedded by a text encoder of that width; all three are the data's. Raises
    ValueError on a bad configuration. Every other field of UViT comes from the field of
    `config` with its name (sequences as tuples, `dtype` by its name)."""
    validate_static(config)
    for arg_name, value, least in (
        ("channels", channels, 1), ("num_classes", num_classes, 0), ("text_width", text_width, 0)
    ):
        if not (isinstance(value, int) and value >= least):
            raise ValueError(f"{arg_name}: must be an integer >= {least}, got {value!r}")
    fields = {f.name for f in dataclasses.fields(UViT) if f.init} - {"parent", "name"}
    values = {
        key: tuple(config[key]) if isinstance(config[key], (list, tuple)) else config[key]
        for key in fields - set(DATA_FIELDS)
    }
    values["dtype"] = DTYPES[config.dtype]
    return UViT(channels=channels, num_classes=num_classes, text_width=text_width, **values)
