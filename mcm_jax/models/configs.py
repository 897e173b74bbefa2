"""Named UViT configurations (docs/method.md §7) and the small ones for digits, CIFAR-10 and tests.

Dropout follows the paper's appendix A.1: ImageNet64 small 0.2 on the middle stack, large 0.1 on
every transformer block; ImageNet128 small 0.1 on the middle stack, large 0.1 on every block
(ResNet and transformer) except the ResNet level at 128x128.

A UViT is a list of levels, each at half the resolution of the one before, followed by a middle
stack of transformer blocks at half the last level's resolution; the up path mirrors the levels.
Per-level settings are tuples of equal length (`level_kinds`, `level_channels`, `level_blocks`,
`level_dropout`); everything else is a flat scalar, so any field can be overridden with
`--config.model.<field>=value`. A configuration holds the network only: the image resolution,
channels and number of classes are the data's (config.data; `build` takes channels and classes,
`param_count` and `flops_per_example` the resolution too). A name's resolution is the one its
network was made for (imagenet64_* 64 px, imagenet128_* 128, cifar10 32, digits 16; tiny runs at
8 to 64).

Parameter counts of the paper configurations (param_count, through jax.eval_shape) against the
paper's: imagenet64_small 392.3M (394M, -0.4%), imagenet64_large 1.240B (1.23B, +0.8%),
imagenet128_small 397.1M (397M, +0.0%), imagenet128_large 1.253B (1.25B, +0.3%).
The choices that set them:
- the conditioning embedding is 1920 wide for every size (it does not grow with the channels), and
  every block has its own dense projection from it: ResNet blocks to (scale, shift), transformer
  blocks to (scale, shift) for each of their two LayerNorms. These projections are ~40% of the
  small models and ~25% of the large ones, which is why large/small is 3.1 rather than 4;
- skip connections concatenate and a 1x1 dense layer projects back to the level width; the up
  path has as many blocks per level as the down path;
- channel changes between levels are 1x1 dense projections, at the lower resolution;
  input and output projections are 3x3 convolutions;
- ResNet blocks: GroupNorm, two 3x3 convolutions, no attention; transformer blocks: LayerNorm
  (affine from the conditioning only), fused qkv, MLP ratio 4; all dense layers have biases;
- time: 256 Fourier features of the log-SNR -> 2-layer MLP; label: an embedding table with a null
  row; fixed 2-D sin-cos position embeddings (no parameters, so any resolution works);
- text (for caption data; the text width is the data's, see data_config.text_shape): LayerNorm of the encoder's tokens;
  in every transformer block, after self-attention, LayerNorm and cross-attention to the tokens
  (separate q and fused kv projections), residual; the masked mean of the tokens, projected
  without bias, is added to the conditioning embedding.
"""

import ml_collections

RESNET = "resnet"
TRANSFORMER = "transformer"


def _base() -> ml_collections.ConfigDict:
    """Fields shared by every configuration; named configurations override some of them."""
    config = ml_collections.ConfigDict()
    config.name = "base"
    config.level_kinds = (RESNET, TRANSFORMER)
    config.level_channels = (256, 512)
    config.level_blocks = (3, 3)
    config.level_dropout = (0.0, 0.0)
    config.middle_channels = 1024
    config.middle_blocks = 16
    config.middle_dropout = 0.2
    config.embedding_width = 1920
    config.fourier_features = 256
    config.head_dim = 128
    config.mlp_ratio = 4
    config.norm_groups = 32
    config.dtype = "bfloat16"  # compute dtype; parameters are always float32
    config.attention_impl = "auto"  # "auto" | "xla" | "cudnn"
    config.remat = "none"  # "none" | "full" | "dots_saveable" | "dots_with_no_batch_dims_saveable"
    # One nn.scan per run of identical blocks (UViT.scan_blocks): the same network, compiled once
    # per run instead of once per block. On for the paper's networks, whose compile it shortens.
    config.scan_blocks = False
    # Fewer bytes per step, same function and parameters (UViT.fused_norms, .split_skip_dense):
    # each norm fused with its modulation and activation, keeping bf16 inputs for the backward
    # pass instead of float32 copies; the skip merges without the concatenated copy. On for the
    # paper's networks; either setting restores the other's checkpoints.
    config.fused_norms = False
    config.split_skip_dense = False
    return config


def _paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The settings every paper network shares: scanned runs of blocks, the fused layers."""
    config.scan_blocks = True
    config.fused_norms = True
    config.split_skip_dense = True
    return config


def _imagenet64_small() -> ml_collections.ConfigDict:
    config = _paper(_base())
    config.name = "imagenet64_small"
    return config


def _imagenet64_large() -> ml_collections.ConfigDict:
    config = _paper(_base())
    config.name = "imagenet64_large"
    config.level_channels = (512, 1024)
    config.level_dropout = (0.0, 0.1)
    config.middle_channels = 2048
    config.middle_dropout = 0.1
    return config


def _imagenet128_small() -> ml_collections.ConfigDict:
    config = _paper(_base())
    config.name = "imagenet128_small"
    config.level_kinds = (RESNET, RESNET, TRANSFORMER)
    config.level_channels = (128, 256, 512)
    config.level_blocks = (3, 3, 3)
    config.level_dropout = (0.0, 0.0, 0.0)
    config.middle_dropout = 0.1
    return config


def _imagenet128_large() -> ml_collections.ConfigDict:
    config = _imagenet128_small()
    config.name = "imagenet128_large"
    config.level_channels = (256, 512, 1024)
    config.level_dropout = (0.0, 0.1, 0.1)
    config.middle_channels = 2048
    config.middle_dropout = 0.1
    return config


def _t2i512() -> ml_collections.ConfigDict:
    """The paper's text-to-image UViT at 512 px (appendix A.1, Table 6): ResNet levels of 128, 256
    and 1024 channels at 512, 256 and 128 px, a transformer level of 2048 at 64 px, and 16
    middle transformer blocks of 4096 at 32 px with dropout 0.1. The conditioning width is ours."""
    config = _paper(_base())
    config.name = "t2i512"
    config.level_kinds = (RESNET, RESNET, RESNET, TRANSFORMER)
    config.level_channels = (128, 256, 1024, 2048)
    config.level_blocks = (3, 3, 3, 3)
    config.level_dropout = (0.0, 0.0, 0.0, 0.0)
    config.middle_channels = 4096
    config.middle_dropout = 0.1
    config.embedding_width = 2048
    # Batch 2048 on 64 v5p chips (32 per chip) fits only when every block is recomputed:
    # 91 of 95 GiB per chip (python -m mcm_jax.train.memory); dots_saveable would need 471 GiB.
    config.remat = "full"
    return config


def _cifar10() -> ml_collections.ConfigDict:
    """For 32 px CIFAR-10: a few million parameters, trains on one GPU."""
    config = _base()
    config.name = "cifar10"
    config.level_channels = (128, 256)
    config.level_blocks = (2, 2)
    config.middle_channels = 256
    config.middle_blocks = 4
    config.middle_dropout = 0.1
    config.embedding_width = 512
    config.head_dim = 64
    return config


def _digits() -> ml_collections.ConfigDict:
    """For 16 px grey-scale digits, 10 classes: small enough to train on a CPU."""
    config = _base()
    config.name = "digits"
    config.level_channels = (32, 64)
    config.level_blocks = (1, 1)
    config.middle_channels = 64
    config.middle_blocks = 2
    config.middle_dropout = 0.1
    config.embedding_width = 128
    config.fourier_features = 32
    config.head_dim = 32
    config.norm_groups = 8
    config.dtype = "float32"
    return config


def _tiny() -> ml_collections.ConfigDict:
    """For tests: one ResNet level, one transformer level and one middle block, a few channels.

    Compiles in a couple of seconds on a CPU at 8 to 64 px.
    """
    config = _base()
    config.name = "tiny"
    config.level_channels = (8, 16)
    config.level_blocks = (1, 1)
    config.middle_channels = 16
    config.middle_blocks = 1
    config.middle_dropout = 0.1
    config.embedding_width = 16
    config.fourier_features = 8
    config.head_dim = 8
    config.norm_groups = 4
    config.dtype = "float32"
    return config


_NAMED = {
    "imagenet64_small": _imagenet64_small,
    "imagenet64_large": _imagenet64_large,
    "imagenet128_small": _imagenet128_small,
    "imagenet128_large": _imagenet128_large,
    "t2i512": _t2i512,
    "cifar10": _cifar10,
    "digits": _digits,
    "tiny": _tiny,
}

NAMES = tuple(_NAMED)


def model_config(name: str) -> ml_collections.ConfigDict:
    """The named UViT configuration (a fresh, mutable copy)."""
    if name not in _NAMED:
        raise ValueError(f"model config name: unknown {name!r}; allowed: {', '.join(NAMES)}")
    return _NAMED[name]()
