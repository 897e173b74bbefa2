"""TFDS builder `digits`: the bundled UCI digits, built offline from scikit-learn's copy.

`tfds.builder("digits/16x16", data_dir=...).download_and_prepare()` needs no network: the
examples come from `digits_split.load_digits_split`, so the TFDS data set and the numpy loader
hold the same split. Configs 8x8, 16x16 (default) and 32x32 differ only in the upscaling.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mcm_jax.data import digits_split


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
    """A digits resolution (pixels per side)."""

    resolution: int = 16


class Digits(tfds.core.GeneratorBasedBuilder):
    """1,797 8x8 grey handwritten digits, 10 classes; stratified seeded train/test split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        DigitsConfig(name=f"{r}x{r}", description=f"Upscaled to {r}x{r}.", resolution=r)
        for r in digits_split.RESOLUTIONS
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "16x16"

    def _info(self) -> tfds.core.DatasetInfo:
        resolution = self.builder_config.resolution
        return self.dataset_info_from_configs(
            description="UCI ML hand-written digits (scikit-learn's bundled copy).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(resolution, resolution, 1)),
                    "label": tfds.features.ClassLabel(num_classes=digits_split.NUM_CLASSES),
                    # Position in sklearn.datasets.load_digits(): the example's identity.
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in digits_split.SPLITS}

    def _generate_examples(self, split: str):
        images, labels = digits_split.load_digits_split(split, self.builder_config.resolution)
        for index, image, label in zip(digits_split.split_indices(split), images, labels):
            yield int(index), {"image": image, "label": int(label), "index": int(index)}
