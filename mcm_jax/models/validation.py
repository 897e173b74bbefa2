"""Checks that turn a bad model configuration into a ValueError naming the field, before compute."""

import ml_collections
import jax.numpy as jnp

from mcm_jax.models.blocks import CHECKPOINT_POLICIES
from mcm_jax.models.configs import RESNET, TRANSFORMER
from mcm_jax.models.layers import CUDNN_MAX_HEAD_DIM

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
REMAT_POLICIES = ("none", *CHECKPOINT_POLICIES)
LEVEL_KINDS = (RESNET, TRANSFORMER)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_choice(config: ml_collections.ConfigDict, field: str, allowed) -> None:
    value = config[field]
    _require(value in allowed, f"{field}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def _check_positive(config: ml_collections.ConfigDict, *fields: str) -> None:
    for field in fields:
        value = config[field]
        _require(
            isinstance(value, int) and value >= 1,
            f"{field}: must be an integer >= 1, got {value!r}",
        )


def _check_levels(config: ml_collections.ConfigDict) -> None:
    per_level = ("level_kinds", "level_channels", "level_blocks", "level_dropout")
    lengths = {field: len(config[field]) for field in per_level}
    _require(
        len(set(lengths.values())) == 1 and lengths["level_kinds"] >= 1,
        f"{', '.join(per_level)}: need one entry per level (at least one level), got lengths {lengths}",
    )
    for i, (kind, width, blocks, rate) in enumerate(
        zip(config.level_kinds, config.level_channels, config.level_blocks, config.level_dropout)
    ):
        _require(kind in LEVEL_KINDS, f"level_kinds[{i}]: {kind!r} is not one of {LEVEL_KINDS}")
        _require(width >= 1, f"level_channels[{i}]: must be >= 1, got {width}")
        _require(blocks >= 1, f"level_blocks[{i}]: must be >= 1, got {blocks}")
        _require(0.0 <= rate < 1.0, f"level_dropout[{i}]: must be in [0, 1), got {rate}")
        if kind == RESNET or i == 0:  # level 0 also feeds the GroupNorm of the output head
            _require(
                width % config.norm_groups == 0,
                f"level_channels[{i}]: {width} is not divisible by norm_groups={config.norm_groups}",
            )
        if kind == TRANSFORMER:
            _require(
                width % config.head_dim == 0,
                f"level_channels[{i}]: {width} is not divisible by head_dim={config.head_dim}",
            )


def _check_attention(config: ml_collections.ConfigDict) -> None:
    if config.attention_impl != "cudnn":
        return
    _require(
        config.dtype in ("bfloat16", "float16"),
        f"attention_impl: 'cudnn' needs dtype 'bfloat16' or 'float16', got dtype={config.dtype!r}",
    )
    _require(
        config.head_dim % 8 == 0 and config.head_dim <= CUDNN_MAX_HEAD_DIM,
        f"attention_impl: 'cudnn' needs head_dim a multiple of 8 and <= {CUDNN_MAX_HEAD_DIM}, "
        f"got head_dim={config.head_dim}",
    )


def validate_static(config: ml_collections.ConfigDict) -> None:
    """Checks every field that does not depend on the image resolution."""
    _check_choice(config, "dtype", tuple(DTYPES))
    _check_choice(config, "attention_impl", ATTENTION_IMPLS)
    _check_choice(config, "remat", REMAT_POLICIES)
    for field in ("scan_blocks", "fused_norms", "split_skip_dense"):
        value = config[field]
        _require(isinstance(value, bool), f"{field}: must be True or False, got {value!r}")
    _check_positive(
        config,
        "middle_channels",
        "middle_blocks",
        "embedding_width",
        "head_dim",
        "mlp_ratio",
        "norm_groups",
    )
    _require(
        config.fourier_features >= 2 and config.fourier_features % 2 == 0,
        f"fourier_features: must be even and >= 2, got {config.fourier_features}",
    )
    _require(
        config.middle_channels % config.head_dim == 0,
        f"middle_channels: {config.middle_channels} is not divisible by head_dim={config.head_dim}",
    )
    _require(
        0.0 <= config.middle_dropout < 1.0,
        f"middle_dropout: must be in [0, 1), got {config.middle_dropout}",
    )
    _check_levels(config)
    _check_attention(config)


def total_pooling(config: ml_collections.ConfigDict) -> int:
    """Factor by which the middle stack is smaller than the image: 2 per level."""
    return 2 ** len(config.level_kinds)


def validate(
    config: ml_collections.ConfigDict, resolution: int, resolution_field: str = "resolution",
    prefix: str = "",
) -> None:
    """Checks the configuration and that it can run at `resolution` pixels (square images). Its
    fields are named after `prefix` (where the caller keeps the model config: "config.model."),
    the resolution as `resolution_field` (where the caller's value comes from)."""
    try:
        validate_static(config)
    except ValueError as error:  # every message of validate_static starts with its field
        raise ValueError(f"{prefix}{error}") from None
    pooling = total_pooling(config)
    _require(
        isinstance(resolution, int) and resolution >= pooling and resolution % pooling == 0,
        f"{resolution_field}: {resolution!r} must be a positive multiple of {pooling}, the total "
        f"pooling of the {len(config.level_kinds)} levels (level_kinds) before the middle stack",
    )
