"""Input pipelines: ADM preprocessing against Pillow, mocked TFDS data sets, the digits builder,
process shares, exact resume, padded evaluation and the errors for bad input."""

import collections
import hashlib
import io
import json
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from mcm_jax.data import digits_split, prepare, records
from mcm_jax.data import input_pipeline
from mcm_jax.data.adm_preprocessing import center_crop_adm, decode_jpeg_like_pil
from mcm_jax.data.tfds_mock import write_tfds_metadata


# ---------------------------------------------------------------- ADM preprocessing vs Pillow


def _classic_pil_resize(image: Image.Image, size: tuple[int, int], resample) -> Image.Image:
    """Pillow's resize as ADM ran it: horizontal pass, then vertical. Each single-axis resize is
    one pass; Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height
    shrinks more than twice as much as the width."""
    return image.resize((size[0], image.size[1]), resample).resize(size, resample)


def _adm_center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """guided-diffusion's center_crop_arr (image_datasets.py), with the classic pass order."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = _classic_pil_resize(
            pil_image, tuple(x // 2 for x in pil_image.size), Image.BOX
        )
    scale = image_size / min(*pil_image.size)
    pil_image = _classic_pil_resize(
        pil_image, tuple(round(x * scale) for x in pil_image.size), Image.BICUBIC
    )
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.mark.parametrize("resolution", [64, 128])
def test_adm_center_crop_equals_pillow(resolution):
    rng = np.random.default_rng(resolution)
    # ImageNet-like, odd sides (PIL's box takes edge pixels TF's kernels split), tall, wide,
    # smaller than the target (upsampling) and exactly the target.
    sizes = [(375, 500), (333, 500), (500, 333), (771, 1024), (129, 130), (255, 256),
             (1000, 260), (90, 700), (50, 80), (resolution, resolution)]
    sizes += [tuple(rng.integers(20, 900, size=2)) for _ in range(6)]
    for height, width in sizes:
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        expected = _adm_center_crop_arr(Image.fromarray(image), resolution)
        actual = center_crop_adm(tf.constant(image), resolution).numpy()
        np.testing.assert_array_equal(actual, expected, err_msg=f"{height}x{width}")


def test_jpeg_decoding_equals_pillow():
    rng = np.random.default_rng(0)
    for mode, shape in [("RGB", (75, 100, 3)), ("L", (60, 45))]:  # ImageNet has grey JPEGs too
        smooth = np.asarray(
            Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(shape[1::-1])
        )
        pixels = smooth if mode == "RGB" else smooth[..., 0]
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode).save(buffer, format="JPEG", quality=90)
        expected = np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        np.testing.assert_array_equal(decode_jpeg_like_pil(buffer.getvalue()).numpy(), expected)


# ------------------------------------------------------------------------ mocked TFDS data sets


def _check_train_batches(data_config, batches, shape, classes):
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == shape and batch["image"].dtype == np.float32
        assert batch["label"].shape == shape[:1] and batch["label"].dtype == np.int32
        assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert batch["image"].max() > 0.9 and batch["image"].min() < -0.9  # the whole range
        assert ((0 <= batch["label"]) & (batch["label"] < classes)).all()
    assert shape[1:] == input_pipeline.image_shape(data_config)
    assert input_pipeline.num_classes(data_config) == classes


@pytest.mark.parametrize("resolution", [64, 128])
def test_imagenet2012_mock(tmp_path, resolution):
    write_tfds_metadata(str(tmp_path), "imagenet2012", {"train": 24, "validation": 8})
    config = input_pipeline.default_data_config("imagenet2012")
    config.resolution, config.data_dir = resolution, str(tmp_path)
    # Mock images have random sides of 5..49 pixels: the ADM crop must still give the exact shape.
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
        iterator = input_pipeline.create_train_iterator(
            config, global_batch_size=16, seed=0, process_index=1, process_count=2
        )
        batches = [next(iterator) for _ in range(4)]  # 3 batches per epoch: crosses an epoch
        state = iterator.get_state()
    _check_train_batches(config, batches, (8, resolution, resolution, 3), 1000)
    assert (state["epoch"], state["examples_in_epoch"], state["examples_seen"]) == (1, 8, 64)


@pytest.mark.parametrize(
    "name, shape", [("imagenet_resized/64x64", (8, 64, 64, 3)), ("cifar10", (8, 32, 32, 3))]
)
def test_small_image_data_sets_mock(tmp_path, name, shape):
    write_tfds_metadata(str(tmp_path), name, {"train": 16, "test": 8, "validation": 8})
    config = input_pipeline.default_data_config(name)
    config.data_dir = str(tmp_path)
    with tfds.testing.mock_data(num_examples=16, data_dir=str(tmp_path)):
        iterator = input_pipeline.create_train_iterator(
            config, global_batch_size=16, seed=0, process_index=0, process_count=2
        )
        batches = [next(iterator) for _ in range(3)]
    _check_train_batches(config, batches, shape, 1000 if "imagenet" in name else 10)


# --------------------------------------------------------------------------- the digits builder


@pytest.fixture(scope="module")
def digits_config(tmp_path_factory):
    """Digits at 16 px, built offline in a fresh TFDS data dir."""
    config = input_pipeline.default_data_config("digits")
    config.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.shuffle_buffer = 64
    tfds.builder("digits/16x16", data_dir=config.data_dir).download_and_prepare()
    return config


def _hashes(images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Identity of each example: its uint8 pixels and label."""
    if images.dtype == np.float32:
        images = np.round((images + 1.0) * 127.5).astype(np.uint8)
    return [hashlib.sha1(x.tobytes() + bytes([int(y)])).hexdigest() for x, y in zip(images, labels)]


def test_digits_split_is_fixed():
    test, train = digits_split.split_indices("test"), digits_split.split_indices("train")
    assert len(test) == 359 and len(train) == 1438
    assert np.union1d(test, train).tolist() == list(range(1797))
    # Stratified: each class gives round(20%) of its images to the test split.
    labels = digits_split.load_digits_split("test", 8)[1]
    assert np.bincount(labels).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    digest = hashlib.sha256(test.astype("<i8").tobytes()).hexdigest()
    assert digest[:16] == "3530be80b9605f4c", "the digits split changed"
    images8, _ = digits_split.load_digits_split("test", 8)
    images32, labels32 = digits_split.load_digits_split("test", 32)
    assert images32.shape == (359, 32, 32, 1) and images32.dtype == np.uint8
    assert labels32.dtype == np.int32 and images8.max() == 255
    np.testing.assert_array_equal(images32[:, ::4, ::4], images8)  # pixel replication


def test_digits_builder_offline(digits_config):
    assert input_pipeline.num_examples(digits_config, "train") == 1438
    assert input_pipeline.num_examples(digits_config, "test") == 359
    builder = tfds.builder("digits/16x16", data_dir=digits_config.data_dir)
    assert builder.is_prepared()
    assert [c.name for c in builder.BUILDER_CONFIGS] == ["8x8", "16x16", "32x32"]
    assert builder.info.features["label"].num_classes == 10
    assert builder.info.features["image"].shape == (16, 16, 1)
    # The TFDS data set holds exactly the numpy loader's split.
    for split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        images, labels = digits_split.load_digits_split(split, 16)
        assert sorted(data["index"].tolist()) == digits_split.split_indices(split).tolist()
        assert collections.Counter(_hashes(data["image"], data["label"])) == collections.Counter(
            _hashes(images, labels)
        )
    assert input_pipeline.image_shape(digits_config) == (16, 16, 1)


def test_prepare_command_builds_other_digits_configs(tmp_path, capsys):
    prepare.main(["prepare", "digits/8x8", f"--data_dir={tmp_path}"])
    assert "train: 1438, test: 359" in capsys.readouterr().out
    data = tfds.as_numpy(
        tfds.builder("digits/8x8", data_dir=str(tmp_path)).as_dataset("test", batch_size=-1)
    )
    assert data["image"].shape == (359, 8, 8, 1)
    assert tfds.builder("digits/32x32").info.features["image"].shape == (32, 32, 1)


def test_process_shares_are_disjoint_and_cover_the_split(digits_config):
    config = digits_config.copy_and_resolve_references()
    config.train_split = "train[:1408]"  # 704 per process: 88 batches of 8, nothing dropped
    builder = tfds.builder("digits/16x16", data_dir=config.data_dir)
    whole = tfds.as_numpy(builder.as_dataset(split=config.train_split, batch_size=-1))
    shares = []
    for process_index in range(2):
        iterator = input_pipeline.create_train_iterator(
            config, global_batch_size=16, seed=3, process_index=process_index, process_count=2
        )
        batches = [next(iterator) for _ in range(88)]
        assert iterator.get_state()["epoch"] == 1
        shares.append(collections.Counter(
            h for b in batches for h in _hashes(b["image"], b["label"])
        ))
    assert not set(shares[0]) & set(shares[1])
    assert shares[0] + shares[1] == collections.Counter(_hashes(whole["image"], whole["label"]))


# ------------------------------------------------------------------------------ exact resume


def _assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a["image"], e["image"])
        np.testing.assert_array_equal(a["label"], e["label"])


def test_resume_is_bit_exact_across_epochs(digits_config):
    config = digits_config.copy_and_resolve_references()
    config.train_split = "train[:64]"  # 32 per process: 4 batches of 8 per epoch
    config.shuffle_buffer = 16
    config.random_flip = True
    kwargs = dict(global_batch_size=16, seed=7, process_index=1, process_count=2)
    straight = input_pipeline.create_train_iterator(config, **kwargs)
    reference = [next(straight) for _ in range(10)]
    # Each epoch is a new order of the same examples.
    epochs = [reference[0:4], reference[4:8]]
    hashes = [[h for b in e for h in _hashes(b["image"], b["label"])] for e in epochs]
    assert hashes[0] != hashes[1]
    for n in (3, 4, 5):  # mid epoch 0, exactly at the epoch end, mid epoch 1
        first = input_pipeline.create_train_iterator(config, **kwargs)
        _assert_same_batches([next(first) for _ in range(n)], reference[:n])
        state = json.loads(json.dumps(first.get_state()))
        epoch, batch_in_epoch = divmod(n, 4)
        assert (state["epoch"], state["examples_in_epoch"]) == (epoch, 8 * batch_in_epoch)
        assert state["examples_seen"] == 16 * n
        resumed = input_pipeline.create_train_iterator(config, state=state, **kwargs)
        _assert_same_batches([next(resumed) for _ in range(n)], reference[n : 2 * n])
    with pytest.raises(ValueError, match="seed"):
        input_pipeline.create_train_iterator(config, state=state, **{**kwargs, "seed": 8})


def test_a_position_saved_in_batches_still_resumes(digits_config):
    config = digits_config.copy_and_resolve_references()
    config.train_split = "train[:64]"  # 32 per process: 4 batches of 8 per epoch
    config.shuffle_buffer = 16
    kwargs = dict(global_batch_size=16, seed=7, process_index=1, process_count=2)
    first = input_pipeline.create_train_iterator(config, **kwargs)
    for _ in range(6):
        next(first)
    state = first.get_state()
    assert (state["epoch"], state["examples_in_epoch"], state["examples_seen"]) == (1, 16, 96)
    old = {"seed": 7, "global_batch_size": 16, "process_count": 2, "epoch": 1, "batch_in_epoch": 2}
    resumed = input_pipeline.create_train_iterator(config, state=old, **kwargs)
    expected = input_pipeline.create_train_iterator(config, state=state, **kwargs)
    _assert_same_batches([next(resumed) for _ in range(3)], [next(expected) for _ in range(3)])
    assert resumed.get_state() == expected.get_state()


def test_resume_with_another_batch_size_continues_the_example_stream(digits_config):
    config = digits_config.copy_and_resolve_references()
    config.train_split = "train[:192]"  # 96 per process
    config.shuffle_buffer = 16
    kwargs = dict(seed=5, process_index=0, process_count=2)
    straight = input_pipeline.create_train_iterator(config, global_batch_size=16, **kwargs)
    stream = np.concatenate([next(straight)["image"] for _ in range(9)])  # 72 examples
    first = input_pipeline.create_train_iterator(config, global_batch_size=16, **kwargs)
    for _ in range(3):
        next(first)
    state = first.get_state()
    resumed = input_pipeline.create_train_iterator(
        config, global_batch_size=32, state=state, **kwargs
    )
    continued = np.concatenate([next(resumed)["image"] for _ in range(3)])  # 16 per process
    np.testing.assert_array_equal(continued, stream[24:72])
    assert resumed.get_state()["examples_seen"] == 3 * 16 + 3 * 32


def test_resume_on_another_process_count_restarts_the_epoch_with_a_warning(digits_config, caplog):
    config = digits_config.copy_and_resolve_references()
    config.train_split = "train[:64]"  # 2 processes: 32 each, 4 batches of 8 per epoch
    config.shuffle_buffer = 16
    two = input_pipeline.create_train_iterator(
        config, global_batch_size=16, seed=2, process_index=1, process_count=2
    )
    for _ in range(6):  # into epoch 1
        next(two)
    state = two.get_state()
    assert (state["epoch"], state["examples_in_epoch"]) == (1, 16)
    one = lambda state: input_pipeline.create_train_iterator(
        config, global_batch_size=16, seed=2, state=state, process_index=0, process_count=1
    )
    with caplog.at_level("WARNING"):
        resumed = one(state)
    assert "written by 2 processes and this run has 1" in caplog.text
    assert "epoch 1" in caplog.text and "examples seen so far: 96" in caplog.text
    # The well-defined point: epoch 1 of the one-process stream, from its start.
    reference = one({**state, "process_count": 1, "examples_in_epoch": 0})
    _assert_same_batches([next(resumed) for _ in range(5)], [next(reference) for _ in range(5)])
    assert resumed.get_state()["examples_seen"] == 96 + 5 * 16


# ------------------------------------------------------------------------------- evaluation


def test_eval_yields_every_example_once_with_mask(digits_config):
    images, labels = digits_split.load_digits_split("test", 16)
    seen = collections.Counter()
    batch_counts = []
    for process_index in range(2):  # 359 examples: shares of 180 and 179, 23 batches of 8 each
        batches = list(input_pipeline.create_eval_iterator(
            digits_config, global_batch_size=16, process_index=process_index, process_count=2
        ))
        batch_counts.append(len(batches))
        mask = np.concatenate([b["mask"] for b in batches])
        assert mask.dtype == bool and mask.sum() == 180 - process_index
        assert mask[: mask.sum()].all()  # padding only at the end
        for b in batches:
            assert b["image"].shape == (8, 16, 16, 1) and b["label"].dtype == np.int32
            assert not b["image"][~b["mask"]].any()
            seen.update(_hashes(b["image"][b["mask"]], b["label"][b["mask"]]))
    assert batch_counts == [23, 23]
    assert seen == collections.Counter(_hashes(images, labels))
    first_100 = input_pipeline.create_eval_iterator(
        digits_config, global_batch_size=16, num_examples=100, process_index=0, process_count=2
    )
    assert sum(int(b["mask"].sum()) for b in first_100) == 50


def test_data_autotune_reaches_every_pipeline_and_changes_no_batch(digits_config, monkeypatch):
    """data.autotune turns tf.data's autotuner on or off where the pipelines read (runlocal turns
    it off: see data_config's autotune), and the batches stay the same."""
    read, enabled = records.read, []

    def recording_read(*args, **kwargs):
        ds = read(*args, **kwargs)
        enabled.append(ds.options().autotune.enabled)
        return ds

    monkeypatch.setattr(records, "read", recording_read)
    batches = {}
    for autotune in (True, False):
        config = digits_config.copy_and_resolve_references()
        config.train_split, config.autotune = "train[:64]", autotune
        train = input_pipeline.create_train_iterator(config, global_batch_size=16, seed=7)
        evaluation = input_pipeline.create_eval_iterator(
            config, global_batch_size=16, num_examples=40
        )
        batches[autotune] = [next(train) for _ in range(6)] + list(evaluation)  # 2 epochs
        assert enabled == [autotune] * 3, enabled  # each training epoch, and the eval
        enabled.clear()
    _assert_same_batches(batches[False], batches[True])


def test_batches_assemble_into_a_global_array(digits_config):
    iterator = input_pipeline.create_train_iterator(digits_config, global_batch_size=16, seed=0)
    batch = next(iterator)  # one process: the local batch is the global batch
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    images = jax.make_array_from_process_local_data(sharding, batch["image"])
    labels = jax.make_array_from_process_local_data(sharding, batch["label"])
    assert images.shape == (16, 16, 16, 1) and labels.shape == (16,)
    assert len(images.addressable_shards) == jax.local_device_count()
    assert not tf.config.get_visible_devices("GPU")


def _record_offset(path, index: int) -> int:
    """The byte offset of record `index` of a TFRecord file (8-byte length, 4-byte CRC, data,
    4-byte CRC)."""
    data, offset = path.read_bytes(), 0
    for _ in range(index):
        offset += 16 + int.from_bytes(data[offset:offset + 8], "little")
    return offset


def _flip_byte(path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "where, damage",
    [(12 + 5, "its record at byte {offset} fails its checksum"),  # in the record's data
     (3, None)],  # in its length field: TensorFlow's offset then names no record boundary
    ids=["data", "length"],
)
def test_a_corrupted_record_file_is_named(digits_config, tmp_path, where, damage):
    config = digits_config.copy_and_resolve_references()
    config.data_dir = str(tmp_path / "tfds")
    shutil.copytree(digits_config.data_dir, config.data_dir)
    prepared = tmp_path / "tfds" / "digits" / "16x16" / "1.0.0"
    (shard,) = prepared.glob("digits-test.tfrecord-*")
    offset = _record_offset(shard, 100)
    _flip_byte(shard, offset + where)

    with pytest.raises(records.DamagedDataError) as error:
        list(input_pipeline.create_eval_iterator(config, global_batch_size=16))
    how = f"; prepare the data set again: delete {prepared}; the next run builds it again"
    if damage:
        damage = damage.format(offset=offset)
        expected = f"data.data_dir: the record file {shard} is damaged ({damage})"
    else:
        expected = (f"data.data_dir: a record file of digits/16x16/1.0.0 in {prepared} is damaged "
                    f"(a corrupted record at byte {offset})")
    assert str(error.value) == expected + how


# ------------------------------------------------------------------------------- bad input


def test_bad_input_names_the_field(tmp_path):
    def config(dataset, **overrides):
        c = input_pipeline.default_data_config(dataset)
        c.update(overrides)
        return c

    validate = input_pipeline.validate
    with pytest.raises(ValueError, match=r"data\.name='mnist'.*expected one of"):
        input_pipeline.default_data_config("mnist")
    with pytest.raises(ValueError, match=r"data\.name='mnist'"):
        validate(config("digits", name="mnist"), global_batch_size=16)
    with pytest.raises(ValueError, match=r"global_batch_size=24 .* 2 x 8 = 16"):
        validate(config("digits"), global_batch_size=24, process_count=2, local_device_count=8)
    for name, resolution in [("cifar10", 64), ("imagenet_resized/64x64", 128), ("digits", 12),
                             ("imagenet2012", 256)]:
        with pytest.raises(ValueError, match=rf"data\.resolution={resolution} .*{name}"):
            validate(config(name, resolution=resolution), global_batch_size=16)
    with pytest.raises(ValueError, match=r"data\.shuffle_buffer=0"):
        validate(config("digits", shuffle_buffer=0), global_batch_size=16)
    incomplete = config("digits")
    del incomplete["num_parallel_calls"]
    with pytest.raises(ValueError, match=r"lacks data\.num_parallel_calls"):
        validate(incomplete, global_batch_size=16)

    imagenet = config("imagenet2012", data_dir=str(tmp_path))
    manual_dir = tmp_path / "downloads" / "manual"
    with pytest.raises(ValueError, match="ILSVRC2012_img_train.tar") as missing:
        validate(imagenet, global_batch_size=16)
    assert str(manual_dir) in str(missing.value) and "data.data_dir" in str(missing.value)
    manual_dir.mkdir(parents=True)
    for file_name in input_pipeline.IMAGENET_MANUAL_FILES:
        (manual_dir / file_name).touch()
    with pytest.raises(ValueError, match="mcm_jax.data.prepare imagenet2012"):
        input_pipeline.create_train_iterator(imagenet, global_batch_size=16, seed=0)
    with pytest.raises(ValueError, match="seed=-1"):
        input_pipeline.create_train_iterator(config("digits"), global_batch_size=16, seed=-1)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar10"),
                                          ("imagenet_resized/64x64", "imagenet_resized")])
def test_downloaded_data_sets_must_be_prepared_and_are_never_downloaded(
    tmp_path, monkeypatch, name, folder
):
    def no_download(self, *args, **kwargs):
        raise AssertionError(f"{self.name}: the pipeline must not download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    config = input_pipeline.default_data_config(name)
    config.data_dir = str(tmp_path / "nodata")
    for check in (
        lambda: input_pipeline.validate(config, global_batch_size=16, local_device_count=1),
        lambda: input_pipeline.create_train_iterator(config, global_batch_size=16, seed=0),
    ):
        with pytest.raises(ValueError) as error:
            check()
        message = str(error.value)
        assert message.startswith(
            f"config.data.data_dir: data.name='{name}' is not prepared in '{tmp_path / 'nodata'}'"
        ), message
        assert f"`python -m mcm_jax.data.prepare {name} --data_dir=DIR`" in message
        assert f"copy DIR/{folder} to {tmp_path / 'nodata'}/" in message
    assert not (tmp_path / "nodata").exists()

    write_tfds_metadata(config.data_dir, name, {"train": 16, config.eval_split: 8})
    input_pipeline.validate(config, global_batch_size=16, local_device_count=1)  # prepared: passes
