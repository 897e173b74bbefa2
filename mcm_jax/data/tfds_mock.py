"""Metadata of a prepared TFDS data set, so `tfds.testing.mock_data` can stand in for it.

A pipeline checks that imagenet2012, cifar10 and imagenet_resized are prepared and reads split
sizes from its metadata; with this metadata in `data_dir`, `tfds.testing.mock_data(data_dir=
data_dir)` (policy USE_FILES) serves mocked examples through the real code path. Used by the tests and the input pipeline benchmark.
"""

import tensorflow_datasets as tfds


def write_tfds_metadata(data_dir: str, name: str, split_sizes: dict[str, int]) -> None:
    """Writes dataset_info.json and features.json of data set `name` (a TFDS name, with its
    config: imagenet_resized/64x64) with the given splits."""
    builder = tfds.builder(name, data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix="tfrecord"
    )
    split_infos = [
        tfds.core.SplitInfo(
            name=split, shard_lengths=[size], num_bytes=0, filename_template=template
        )
        for split, size in split_sizes.items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
