"""The eval metrics: FID (Inception features) or FD-digits (digits classifier features).

A `FeatureSpace` is a feature network plus reference statistics in its space; building one
checks its inputs (weights, reference file, classifier) before any sampling. A `Scorer` streams
sample chunks through it and gives the Fréchet distance and, where the network classifies, the
fraction of class-conditional samples classified as their label.

Text-to-image runs can also have a CLIP score (`clip_scorer`, `mean_clip_score`): images against
their captions, with the CLIP of eval.clip_dir (mcm_jax.eval.clip_score; keras only when set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mcm_jax import files, images
from mcm_jax.config.eval_config import check_clip_fields
from mcm_jax.data import digits_split
from mcm_jax.eval import clip_score
from mcm_jax.eval import digits_classifier, fid
from mcm_jax.eval.fid import weights as fid_weights
from mcm_jax.run import sharding

# (uint8 NHWC samples) -> (features (B, D), predicted labels (B,) or None)
OutputsFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
    metric: str  # the result's key: "fid" | "fd_digits"
    outputs: OutputsFn
    reference: tuple[np.ndarray, np.ndarray]  # (mu, sigma)
    info: dict[str, float]  # constants reported with every score (the classifier's accuracy)


def metric_name(config: ml_collections.ConfigDict) -> str:
    """config.eval.metric with "auto" resolved: fd_digits on digits, fid otherwise."""
    metric = config.eval.metric
    if metric == "auto":
        return "fd_digits" if config.data.name == "digits" else "fid"
    return metric


def feature_space(config: ml_collections.ConfigDict, mesh: Mesh) -> FeatureSpace | None:
    """The configured metric's feature space (None for metric "none"); fails on bad inputs."""
    metric = metric_name(config)
    if metric == "fid":
        return inception_space(config.eval, mesh)
    if metric == "fd_digits":
        return digits_space(config)
    return None


def inception_space(eval_config: ml_collections.ConfigDict, mesh: Mesh) -> FeatureSpace:
    """FID: the pytorch-fid Inception on the mesh, against eval.reference_stats."""
    weights_path, reference_path = eval_config.inception_weights, eval_config.reference_stats
    if not weights_path or not files.is_file(weights_path):
        raise FileNotFoundError(
            f"config.eval.inception_weights: FID needs the converted Inception weights, "
            f"{'not set' if not weights_path else f'no file at {weights_path}'}. Make them once "
            "with:\n" + fid_weights.make_weights_commands(weights_path or "fid_inception.npz")
        )
    if not reference_path:
        raise ValueError(
            "config.eval.reference_stats: FID needs an npz with mu and sigma: an ADM reference "
            "batch (e.g. VIRTUAL_imagenet64_labeled.npz) or the output of python -m "
            "mcm_jax.eval.fid.reference --config=... --weights=... --output=stats.npz"
        )
    mu, sigma = fid.load_reference_statistics(reference_path)
    if mu.shape != (fid.FEATURE_DIM,):
        raise ValueError(
            f"config.eval.reference_stats: {reference_path} has {mu.shape[0]}-d statistics; "
            f"FID's Inception features are {fid.FEATURE_DIM}-d"
        )
    params = fid.load_inception_params(weights_path, eval_config.inception_sha256 or None)
    params = fid.replicate_params(params, mesh)
    features_on_mesh = fid.make_sharded_features(mesh, data_axes=sharding.BATCH_AXES)
    batch_sharding = sharding.batch_sharding(mesh)

    def outputs(samples: np.ndarray) -> tuple[np.ndarray, None]:
        rgb = np.repeat(samples, 3, axis=-1) if samples.shape[-1] == 1 else samples
        global_rgb = jax.make_array_from_callback(rgb.shape, batch_sharding, lambda i: rgb[i])
        features = features_on_mesh(params, global_rgb)
        return np.asarray(multihost_utils.process_allgather(features, tiled=True)), None

    return FeatureSpace("fid", outputs, (mu, sigma), {})


def digits_space(config: ml_collections.ConfigDict) -> FeatureSpace:
    """FD-digits: the digits classifier's features against eval.fd_digits_reference_split's.

    info: the classifier's test accuracy, and fd_digits_real_data, the FD-digits of the other
    split against the reference: what real digits score.
    """
    split = config.eval.fd_digits_reference_split
    if config.data.name not in ("digits", "captions"):
        raise ValueError(
            "config.eval.metric: fd_digits needs digits (data.name 'digits', or 'captions' "
            f"holding captioned digits), got {config.data.name!r}"
        )
    if split not in digits_split.SPLITS:
        raise ValueError(
            f"config.eval.fd_digits_reference_split: {split!r} is not one of {digits_split.SPLITS}"
        )
    # The classifier is cached beside the digits' TFDS data (TFDS's default dir for captions).
    cache_dir = config.data.data_dir if config.data.name == "digits" else None
    classifier = digits_classifier.load_or_train(cache_dir, config.data.resolution)

    def split_statistics(name):
        features = classifier.logits_and_features(
            digits_split.load_digits_split(name, config.data.resolution)[0]
        )[1]
        return fid.compute_statistics(features)

    reference = split_statistics(split)
    (other,) = set(digits_split.SPLITS) - {split}
    real_data = fid.frechet_distance(*split_statistics(other), *reference)

    def outputs(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = classifier.logits_and_features(images.to_grey(samples))
        return features, np.argmax(logits, axis=-1)

    info = {"classifier_test_accuracy": classifier.test_accuracy, "fd_digits_real_data": real_data}
    return FeatureSpace("fd_digits", outputs, reference, info)


class Scorer:
    """Accumulates feature statistics (and classification hits) of sample batches."""

    def __init__(self, space: FeatureSpace, conditional: bool):
        self.space = space
        self.conditional = conditional
        self.statistics = fid.StatisticsAccumulator()
        self.hits = 0
        self.classified = False

    def update(self, samples: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> None:
        features, predicted = self.space.outputs(samples)
        self.statistics.update(features, mask)
        if predicted is not None:
            self.classified = True
            self.hits += int(np.sum((predicted == labels) & mask))

    def result(self) -> dict[str, float]:
        mu, sigma = self.statistics.finalize()
        result = {self.space.metric: fid.frechet_distance(mu, sigma, *self.space.reference)}
        if self.conditional and self.classified:
            result["class_accuracy"] = self.hits / self.statistics.count
        return {**result, **self.space.info}


# --- CLIP score (text-to-image: images against the captions they were sampled for) ----------


def clip_scorer(eval_config: ml_collections.ConfigDict) -> clip_score.ClipScorer | None:
    """The CLIP of eval.clip_dir, batched by eval.clip_batch_size, or None when clip_dir is
    unset; fails on bad fields or a bad preset, naming the field, before any sampling."""
    check_clip_fields(eval_config)
    if eval_config.clip_dir is None:
        return None
    try:
        return clip_score.ClipScorer.from_dir(
            eval_config.clip_dir, batch_size=eval_config.clip_batch_size
        )
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"config.eval.clip_dir: {error}") from error


mean_clip_score = clip_score.mean_clip_score
