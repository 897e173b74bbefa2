"""Caption data (paper §5.2): batches of images, padded T5 text and masks from a TFDS directory,
process shares, exact resume, evaluation with and without images, and the errors for bad input.

The data sets are written here with TFDS's own writer (`store_as_tfds_dataset`): random
non-square images, captions and random float16 "embeddings" of 1..9 tokens, 12 wide.
"""

import collections
import io
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mcm_jax.config import data_config
from mcm_jax.data import input_pipeline
from test_input_pipeline import _adm_center_crop_arr

WIDTH = 12
LENGTH = 6  # text_length: texts of 7..9 tokens are truncated
RESOLUTION = 16
# (height, width): tall, wide, smaller than the resolution (upsampled), halved first (>= 32).
SIZES = [(60, 20), (20, 50), (10, 12), (70, 40), (16, 16), (33, 47)]
TOKENS = [1, 6, 9, 3, 7, 2, 5, 8]


def _examples(count: int, seed: int, *, images: bool) -> list[tuple[int, dict]]:
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        example = {
            "caption": f"caption {seed}-{i}: a photo",
            "text": rng.normal(size=(TOKENS[i % len(TOKENS)], WIDTH)).astype(np.float16),
            "id": f"{seed}-{i}",
        }
        if images:
            example["image"] = rng.integers(0, 256, (*SIZES[i % len(SIZES)], 3), dtype=np.uint8)
        examples.append((i, example))
    return examples


def _write(root, name: str, splits: dict[str, list], *, images: bool, image_format=None) -> str:
    """A caption data set as the embedding command writes it; returns its directory."""
    features = {
        "caption": tfds.features.Text(),
        "text": tfds.features.Tensor(shape=(None, WIDTH), dtype=np.float16),
        "id": tfds.features.Text(),
    }
    if images:
        features["image"] = tfds.features.Image(shape=(None, None, 3), encoding_format=image_format)
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=tfds.features.FeaturesDict(features),
        split_datasets=splits, data_dir=str(root),
    )
    return str(builder.data_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Source examples by id, and the directories of a data set with images (train: 32,
    validation: 7) and of a prompt-only one (validation: 5)."""
    root = tmp_path_factory.mktemp("captions")
    train, validation = _examples(32, 0, images=True), _examples(7, 1, images=True)
    prompts = _examples(5, 2, images=False)
    return {
        "examples": {e["text"][0].tobytes(): e for _, e in train + validation + prompts},
        "images": _write(root, "coco_t5", {"train": train, "validation": validation}, images=True),
        "prompts": _write(root, "prompts_t5", {"validation": prompts}, images=False),
    }


def _config(data_dir: str, **overrides):
    config = input_pipeline.default_data_config("captions")
    config.update(dict(data_dir=data_dir, resolution=RESOLUTION, text_length=LENGTH,
                       text_width=WIDTH, shuffle_buffer=8))
    config.update(overrides)
    return config


def _source(data, text: np.ndarray) -> dict:
    """The stored example a batch row came from (its first token is unique)."""
    return data["examples"][text[0].tobytes()]


def _check_example(data, image, text, text_mask, *, flipped_ok=False) -> str:
    """Checks one row against its stored example (centre crop, truncation, padding, mask);
    returns the example's id."""
    source = _source(data, text)
    count = min(len(source["text"]), LENGTH)
    np.testing.assert_array_equal(text_mask, np.arange(LENGTH) < count)
    np.testing.assert_array_equal(text[:count], source["text"][:count])
    assert not text[count:].any()
    if image is not None:
        expected = _adm_center_crop_arr(Image.fromarray(source["image"]), RESOLUTION)
        expected = expected.astype(np.float32) / 127.5 - 1.0
        if not (flipped_ok and np.array_equal(image, expected[:, ::-1])):
            np.testing.assert_array_equal(image, expected)
    return source["id"]


def test_config_fields_and_text_shape():
    config = input_pipeline.default_data_config("captions")
    assert (config.text_length, config.text_width, config.random_flip) == (128, 4096, False)
    assert config.resolution % 8 == 0 and config.eval_split == "validation"
    assert data_config.text_shape(config) == (128, 4096)
    assert data_config.num_classes(config) == 0  # label 0 is the null label
    config.resolution = 512
    assert data_config.image_shape(config) == (512, 512, 3)
    assert data_config.text_shape(input_pipeline.default_data_config("imagenet2012")) is None
    assert "text_length" not in input_pipeline.default_data_config("cifar10")


def test_train_batches(data):
    iterator = input_pipeline.create_train_iterator(
        _config(data["images"]), global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    ids = []
    for _ in range(4):  # one epoch: 32 examples
        batch = next(iterator)
        assert set(batch) == {"image", "label", "text", "text_mask"}
        assert batch["image"].shape == (8, RESOLUTION, RESOLUTION, 3)
        assert batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and not batch["label"].any()
        assert batch["text"].shape == (8, LENGTH, WIDTH) and batch["text"].dtype == np.float16
        assert batch["text_mask"].shape == (8, LENGTH) and batch["text_mask"].dtype == bool
        assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        for row in zip(batch["image"], batch["text"], batch["text_mask"]):
            ids.append(_check_example(data, *row))
    assert sorted(ids) == sorted(f"0-{i}" for i in range(32))
    assert iterator.get_state()["epoch"] == 1


def test_jpeg_images_decode_as_pil_does(tmp_path, data):
    directory = _write(tmp_path, "jpeg_t5", {"validation": _examples(6, 3, images=True)},
                       images=True, image_format="jpeg")
    builder = tfds.builder_from_directory(directory)
    stored = builder.as_dataset("validation", decoders={"image": tfds.decode.SkipDecoding()})
    expected = {  # PIL's decoding of the stored JPEG, then ADM's crop
        e["caption"]: _adm_center_crop_arr(
            Image.open(io.BytesIO(e["image"])).convert("RGB"), RESOLUTION
        ).astype(np.float32) / 127.5 - 1.0
        for e in tfds.as_numpy(stored)
    }
    (batch,) = input_pipeline.create_eval_iterator(_config(directory), global_batch_size=8)
    assert sorted(batch["caption"][batch["mask"]]) == sorted(expected)
    for image, caption in zip(batch["image"][:6], batch["caption"][:6]):
        np.testing.assert_array_equal(image, expected[caption])


def _identities(batches) -> collections.Counter:
    """The examples of batches, by their first token."""
    return collections.Counter(row[0].tobytes() for b in batches for row in b["text"])


def test_process_shares_are_disjoint_and_cover_the_epoch(data):
    config = _config(data["images"])
    shares = []
    for process_index in range(2):  # 16 examples each: 2 batches of 8
        iterator = input_pipeline.create_train_iterator(
            config, global_batch_size=16, seed=1, process_index=process_index, process_count=2
        )
        batches = [next(iterator) for _ in range(2)]
        assert batches[0]["image"].shape[0] == 8
        assert iterator.get_state()["epoch"] == 1
        shares.append(_identities(batches))
    assert not set(shares[0]) & set(shares[1])
    train = [k for k, e in data["examples"].items() if e["id"].startswith("0-")]
    assert shares[0] + shares[1] == collections.Counter(train)


def _assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert set(a) == set(e)
        for key in e:
            np.testing.assert_array_equal(a[key], e[key])


@pytest.mark.slow
def test_resume_is_bit_exact(data):
    config = _config(data["images"], random_flip=True)
    kwargs = dict(global_batch_size=16, seed=5, process_index=1, process_count=2)
    straight = input_pipeline.create_train_iterator(config, **kwargs)
    reference = [next(straight) for _ in range(6)]  # 2 batches of 8 per epoch
    for batch in reference:
        for row in zip(batch["image"], batch["text"], batch["text_mask"]):
            _check_example(data, *row, flipped_ok=True)
    assert _identities(reference[0:2]) == _identities(reference[2:4])  # the same share ...
    assert [b["text"].tobytes() for b in reference[0:2]] != [
        b["text"].tobytes() for b in reference[2:4]]  # ... in a new order
    for n in (1, 2, 3):  # mid epoch 0, at its end, mid epoch 1
        first = input_pipeline.create_train_iterator(config, **kwargs)
        _assert_same_batches([next(first) for _ in range(n)], reference[:n])
        state = json.loads(json.dumps(first.get_state()))
        epoch, batch_in_epoch = divmod(n, 2)
        assert (state["epoch"], state["examples_in_epoch"]) == (epoch, 8 * batch_in_epoch)
        resumed = input_pipeline.create_train_iterator(config, state=state, **kwargs)
        _assert_same_batches([next(resumed) for _ in range(6 - n)], reference[n:])


def test_eval_with_images_and_captions(data):
    config = _config(data["images"])
    ids, counts = [], []
    for process_index in range(2):  # 7 examples: shares of 4 and 3, one batch of 8 each
        batches = list(input_pipeline.create_eval_iterator(
            config, global_batch_size=16, process_index=process_index, process_count=2
        ))
        counts.append(len(batches))
        for b in batches:
            assert set(b) == {"image", "label", "text", "text_mask", "caption", "mask"}
            assert b["caption"].dtype == object and b["text"].dtype == np.float16
            for i in np.flatnonzero(b["mask"]):
                ids.append(_check_example(data, b["image"][i], b["text"][i], b["text_mask"][i]))
                assert b["caption"][i].decode() == _source(data, b["text"][i])["caption"]
            pad = ~b["mask"]
            assert not (b["image"][pad].any() or b["text"][pad].any() or b["text_mask"][pad].any())
            assert all(c == b"" for c in b["caption"][pad])
    assert counts == [1, 1] and sorted(ids) == sorted(f"1-{i}" for i in range(7))


def test_prompt_only_sets_give_prompts_not_images(data):
    config = _config(data["prompts"], train_split="validation")
    (batch,) = input_pipeline.create_eval_iterator(config, global_batch_size=8, images=False)
    assert set(batch) == {"label", "text", "text_mask", "caption", "mask"}
    assert batch["mask"].sum() == 5
    ids = []
    for i in range(5):
        ids.append(_check_example(data, None, batch["text"][i], batch["text_mask"][i]))
        assert batch["caption"][i].decode() == f"caption {ids[-1]}: a photo"
    assert sorted(ids) == [f"2-{i}" for i in range(5)]
    with pytest.raises(ValueError, match="no images .*prompt-only.*images=False"):
        input_pipeline.create_eval_iterator(config, global_batch_size=8)
    with pytest.raises(ValueError, match="no images .*prompt-only"):
        input_pipeline.create_train_iterator(config, global_batch_size=8, seed=0)
    # Sets with images give prompts too.
    (batch,) = input_pipeline.create_eval_iterator(
        _config(data["images"]), global_batch_size=8, images=False
    )
    assert "image" not in batch and batch["text"].shape == (8, LENGTH, WIDTH)


def test_bad_input_names_the_field(tmp_path, data):
    def check(config, pattern, **kwargs):
        with pytest.raises(ValueError, match=pattern):
            input_pipeline.validate(config, global_batch_size=8, **kwargs)

    images = data["images"]
    check(_config(str(tmp_path)), rf"data\.data_dir='{tmp_path}' holds no TFDS data set")
    check(_config(None), r"data\.data_dir is not set")
    check(_config(images, train_split="bogus"), r"data\.train_split='bogus'.*train, validation")
    check(_config(images, eval_split="test"), r"data\.eval_split='test'", split="test")
    check(_config(images, train_split="train[:100]"), r"train\[:100\]'.*32 examples")
    check(_config(images, text_length=0), r"data\.text_length=0")
    check(_config(images, text_width=4096), r"data\.text_width=4096 .*\(12\).*text_width=12")
    for resolution in (12, 0):
        check(_config(images, resolution=resolution), rf"data\.resolution={resolution}")
    with pytest.raises(ValueError, match=r"data\.text_width=-1"):
        data_config.text_shape(_config(images, text_width=-1))
    labelled = tfds.dataset_builders.store_as_tfds_dataset(
        name="labelled", version="1.0.0", data_dir=str(tmp_path / "labelled"),
        features=tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(4, 4, 3)),
             "label": tfds.features.ClassLabel(num_classes=2)}
        ),
        split_datasets={"train": [(0, {"image": np.zeros((4, 4, 3), np.uint8), "label": 1})]},
    )
    check(_config(str(labelled.data_dir)), r"not caption data: .*feature\(s\) caption, text")
