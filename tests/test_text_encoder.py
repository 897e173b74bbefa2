"""The frozen T5 text encoder (mcm_jax.text.text_encoder) on a tiny random T5 saved as a real KerasHub
preset: loading, tokens, padding, truncation and batch independence."""

import subprocess
import sys

import numpy as np
import pytest

from mcm_jax.text import text_encoder

WORDS = "zero one two three four five six seven eight nine".split()
CORPUS = [f"a handwritten digit {w} in {c} ink" for w in WORDS for c in ("black", "white", "grey")]
MAX_LENGTH = 24


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A tiny T5 preset directory (width 32, 2 layers), written once per test process."""
    path = tmp_path_factory.mktemp("tiny_t5")
    text_encoder.write_tiny_encoder(path, CORPUS)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    return text_encoder.TextEncoder.from_dir(tiny_encoder_dir, max_length=MAX_LENGTH, batch_size=4)


def test_round_trip(tiny_encoder_dir, tiny_encoder):
    """The saved preset loads through keras-hub on JAX and encodes to the documented shapes."""
    assert sys.modules["keras"].backend.backend() == "jax"
    assert tiny_encoder.width == 32 and tiny_encoder.directory == str(tiny_encoder_dir)
    embeddings, lengths = tiny_encoder.encode(["a handwritten digit seven", "", "one"])
    assert embeddings.dtype == np.float16 and embeddings.shape == (3, MAX_LENGTH, 32)
    assert lengths.dtype == np.int32
    assert np.all(np.abs(embeddings[:, 0]).sum(-1) > 0)


def test_tokens_padding_and_lengths(tiny_encoder):
    """T5 convention: pieces, EOS (1), zero padding; lengths count EOS; padded outputs are 0."""
    prompts = ["a handwritten digit seven", "", "nine"]
    ids, lengths = tiny_encoder.tokenize(prompts)
    assert lengths[1] == 1 and ids[1, 0] == text_encoder.EOS_ID  # the empty prompt: EOS only
    for row, length in enumerate(lengths):
        assert ids[row, length - 1] == text_encoder.EOS_ID
        assert np.all(ids[row, : length - 1] > text_encoder.EOS_ID)  # pieces, no pad or EOS
        assert np.all(ids[row, length:] == text_encoder.PAD_ID)
    assert lengths[0] > lengths[2] > 1
    embeddings, encode_lengths = tiny_encoder.encode(prompts)
    np.testing.assert_array_equal(encode_lengths, lengths)
    for row, length in enumerate(lengths):
        assert np.all(embeddings[row, length:] == 0)
        assert np.all(np.abs(embeddings[row, :length]).sum(-1) > 0)


def test_truncation_keeps_eos(tiny_encoder_dir, tiny_encoder):
    """A prompt longer than max_length keeps its first max_length - 1 pieces and its EOS."""
    long_prompt = " ".join(CORPUS)
    short = text_encoder.TextEncoder.from_dir(tiny_encoder_dir, max_length=5, batch_size=2)
    ids, lengths = short.tokenize([long_prompt, "one"])
    longer_ids, _ = tiny_encoder.tokenize([long_prompt])
    assert lengths[0] == 5 and ids[0, 4] == text_encoder.EOS_ID
    np.testing.assert_array_equal(ids[0, :4], longer_ids[0, :4])
    embeddings, _ = short.encode([long_prompt])
    assert embeddings.shape == (1, 5, 32) and np.all(np.abs(embeddings[0]).sum(-1) > 0)


def test_batch_composition_does_not_change_an_embedding(tiny_encoder):
    """A prompt's embedding is the same alone, among others, and in a padded last batch."""
    prompt = "a handwritten digit three in grey ink"
    alone, _ = tiny_encoder.encode([prompt])
    others = ["nine", "", "a handwritten digit zero in white ink"]
    mixed, _ = tiny_encoder.encode(others + [prompt, "two"])  # second batch: 1 real + padding
    first, _ = tiny_encoder.encode([prompt] + others)
    np.testing.assert_array_equal(mixed[3], alone[0])
    np.testing.assert_array_equal(first[0], alone[0])


def test_padding_length_does_not_change_real_tokens(tiny_encoder_dir, tiny_encoder):
    """Padding is masked: a longer max_length gives the same outputs (to bfloat16 rounding)."""
    prompt = "a handwritten digit five"
    longer = text_encoder.TextEncoder.from_dir(tiny_encoder_dir, max_length=40, batch_size=4)
    short_out, length = tiny_encoder.encode([prompt])
    long_out, long_length = longer.encode([prompt])
    assert length[0] == long_length[0]
    np.testing.assert_allclose(
        long_out[0, : length[0]].astype(np.float32), short_out[0, : length[0]].astype(np.float32),
        atol=0.05,
    )


def test_bad_preset_dir_is_named(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        text_encoder.TextEncoder.from_dir(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="lacks tokenizer.json, .*model.weights.h5; expected a "
                                         "KerasHub T5 preset directory"):
        text_encoder.TextEncoder.from_dir(tmp_path)
    for name in ("tokenizer.json", "assets/tokenizer/vocabulary.spm", "model.weights.h5"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    with pytest.raises(ValueError, match="config.json describes a None, not a 'T5Backbone'"):
        text_encoder.TextEncoder.from_dir(tmp_path)


def test_max_length_below_one_is_refused(tiny_encoder_dir):
    with pytest.raises(ValueError, match="max_length: 0 < 1"):
        text_encoder.TextEncoder.from_dir(tiny_encoder_dir, max_length=0)


@pytest.mark.slow
def test_keras_on_another_backend_is_refused(tmp_path):
    code = (
        "import os; os.environ['KERAS_BACKEND'] = 'numpy'; import keras\n"
        "from mcm_jax.text import text_encoder\n"
        f"text_encoder.write_tiny_encoder({str(tmp_path)!r}, ['one two'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "keras was imported with the 'numpy' backend" in result.stderr


def test_gcs_preset_dir(tiny_encoder_dir, tiny_encoder, gcs_dir):
    """A preset on gs:// is copied locally and gives the same embeddings as the local one."""
    for file in tiny_encoder_dir.rglob("*"):
        if file.is_file():
            target = gcs_dir / file.relative_to(tiny_encoder_dir).as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    remote = text_encoder.TextEncoder.from_dir(gcs_dir, max_length=MAX_LENGTH, batch_size=4)
    assert remote.directory == str(gcs_dir)
    prompts = ["a handwritten digit four", "eight"]
    np.testing.assert_array_equal(remote.encode(prompts)[0], tiny_encoder.encode(prompts)[0])
