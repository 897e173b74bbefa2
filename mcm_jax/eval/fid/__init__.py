"""FID with pytorch-fid's Inception-v3 in Flax: weights, features, statistics, Fréchet distance.

Importable with only jax, flax, numpy and scipy: torch is used once by `python -m
mcm_jax.eval.fid.convert`, TensorFlow only by `python -m mcm_jax.eval.fid.reference`.
"""

from mcm_jax.eval.fid.frechet import frechet_distance
from mcm_jax.eval.fid.from_pytorch_fid import convert_pytorch_fid_state_dict
from mcm_jax.eval.fid.inception import (
    FEATURE_DIM, features, INCEPTION_RESOLUTION, InceptionV3, preprocess,
    resize_bilinear_like_torch, uint8_from_model_range,
)
from mcm_jax.eval.fid.sharded import make_sharded_features, replicate_params
from mcm_jax.eval.fid.statistics import (
    compute_statistics, load_reference_statistics, save_reference_statistics, StatisticsAccumulator,
)
from mcm_jax.eval.fid.weights import load_inception_params

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_RESOLUTION",
    "InceptionV3",
    "StatisticsAccumulator",
    "compute_statistics",
    "convert_pytorch_fid_state_dict",
    "features",
    "frechet_distance",
    "load_inception_params",
    "load_reference_statistics",
    "make_sharded_features",
    "preprocess",
    "replicate_params",
    "resize_bilinear_like_torch",
    "save_reference_statistics",
    "uint8_from_model_range",
]
