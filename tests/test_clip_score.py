"""mcm_jax.eval.clip_score: CLIP score with KerasHub's CLIP on a tiny random preset.

References are computed independently: the score from the backbone's own CLIP head, the
preprocessing with PIL and numpy, the token ids with OpenAI's simple_tokenizer algorithm.
"""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
import regex
from PIL import Image

from mcm_jax.config.eval_config import default_eval_config
from mcm_jax.eval import clip_score, metrics

CAPTIONS = [
    "a photo of the cat", "A RED   dog", "blue", "the cat's 2 dogs!!", "a photo of a red cat",
    "café au lait", "the dog",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return clip_score.write_tiny_clip(str(tmp_path_factory.mktemp("clip") / "tiny_clip"))


@pytest.fixture(scope="module")
def scorer(tiny_dir):
    return clip_score.ClipScorer.from_dir(tiny_dir, batch_size=3)


def _images(count, height=24, width=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), np.uint8)


# --- Preset --------------------------------------------------------------------------------


def test_tiny_preset_round_trip(tiny_dir, scorer, tmp_path):
    _, keras_hub = clip_score.import_keras()
    for name in clip_score.PRESET_FILES:
        assert os.path.isfile(os.path.join(tiny_dir, name)), name
    assert scorer.image_size == 16 and scorer.tokenizer.context_length == 77
    # The weights loaded are those written: the same seed writes the same network, another not.
    again = clip_score.write_tiny_clip(str(tmp_path / "again"), seed=0)
    other = clip_score.write_tiny_clip(str(tmp_path / "other"), seed=1)
    weights = [
        [np.asarray(v) for v in keras_hub.models.CLIPBackbone.from_preset(d).weights]
        for d in (tiny_dir, again, other)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))
    images = _images(4)
    np.testing.assert_array_equal(
        clip_score.ClipScorer.from_dir(again, batch_size=3).scores(images, CAPTIONS[:4]),
        scorer.scores(images, CAPTIONS[:4]),
    )


@pytest.mark.slow
def test_score_equals_the_backbone_clip_head(tiny_dir, scorer):
    _, keras_hub = clip_score.import_keras()
    backbone = keras_hub.models.CLIPBackbone.from_preset(tiny_dir)
    images = _images(len(CAPTIONS), 40, 40)
    pixels = np.asarray(clip_score.preprocess(images, 16))
    ids = scorer.tokenizer(CAPTIONS)
    logits = backbone({"images": pixels, "token_ids": ids})["text_logits"]
    scale = np.exp(np.asarray(backbone.get_layer("clip_head").logit_scale))
    cosines = np.diag(np.asarray(logits)) / scale
    assert cosines.min() < 0 < cosines.max()  # the clipping at 0 is exercised
    expected = 100 * np.maximum(cosines, 0)
    actual = scorer.scores(images, CAPTIONS)
    assert actual.shape == (len(CAPTIONS),)
    np.testing.assert_allclose(actual, expected, atol=1e-3)
    assert clip_score.mean_clip_score(actual) == pytest.approx(expected.mean(), abs=1e-3)


@pytest.mark.slow
def test_scores_do_not_depend_on_batching_or_padding(tiny_dir, scorer):
    images, captions = _images(7), CAPTIONS
    padded = scorer.scores(images, captions)  # batches of 3, 3 and 1 padded with 2
    for batch_size in (1, 7, 16):
        other = clip_score.ClipScorer.from_dir(tiny_dir, batch_size=batch_size)
        np.testing.assert_allclose(other.scores(images, captions), padded, atol=1e-4)
    order = np.random.default_rng(1).permutation(7)
    np.testing.assert_allclose(
        scorer.scores(images[order], [captions[i] for i in order]), padded[order], atol=1e-4
    )
    # [-1, 1] floats score as the uint8 pixels they round to; grey as grey RGB.
    np.testing.assert_allclose(scorer.scores(images / 127.5 - 1, captions), padded, atol=1e-6)
    grey = _images(2)[..., :1]
    np.testing.assert_allclose(
        scorer.scores(grey, captions[:2]), scorer.scores(np.repeat(grey, 3, -1), captions[:2])
    )
    assert scorer.scores(images[:0], []).shape == (0,)


# --- Preprocessing -------------------------------------------------------------------------


def _reference_preprocess(image, size):
    """OpenAI CLIP's transform: Resize(size, BICUBIC) on a PIL image, CenterCrop, Normalize."""
    height, width = image.shape[:2]
    short, long = sorted((height, width))
    new_long = int(size * long / short)
    new_height, new_width = (size, new_long) if height <= width else (new_long, size)
    resized = Image.fromarray(image).resize((new_width, new_height), Image.BICUBIC)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    pixels = np.asarray(resized, np.float64)[top : top + size, left : left + size] / 255
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    return (pixels - mean) / std


@pytest.mark.parametrize(
    "shape,size",
    [((2, 64, 64), 224), ((1, 300, 257), 224), ((1, 40, 90), 32), ((1, 224, 224), 224),
     ((1, 513, 512), 224)],
)
def test_preprocess_matches_pil_and_numpy(shape, size):
    rng = np.random.default_rng(sum(shape))
    # Smooth content plus noise, so both the smooth and the ringing regime are compared.
    low = rng.integers(0, 256, (shape[0], 4, 4, 3)).astype(np.float64)
    smooth = np.stack([np.asarray(Image.fromarray(np.uint8(x)).resize(shape[2:0:-1])) for x in low])
    images = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    actual = np.asarray(clip_score.preprocess(images, size))
    expected = np.stack([_reference_preprocess(x, size) for x in images])
    assert actual.shape == expected.shape == (shape[0], size, size, 3)
    level = 1 / 255 / 0.2613  # one uint8 level after normalisation, at the smallest std
    difference = np.abs(actual - expected)
    # PIL computes in fixed point: a few pixels land one level (rarely two) away.
    assert difference.max() <= 2 * level + 1e-6
    assert np.mean(difference > level / 2) < 0.01
    if shape[1:] == (size, size):
        np.testing.assert_allclose(actual, expected, atol=1e-6)


# --- Tokenizer -----------------------------------------------------------------------------


def _bytes_to_unicode():
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def _reference_ids(text, vocabulary, merges, context_length=77):
    """OpenAI CLIP's simple_tokenizer (without ftfy/html, a no-op on these captions) and
    clip.tokenize(truncate=True)."""
    ranks = {tuple(rule.split(" ")): i for i, rule in enumerate(merges)}
    byte_encoder = _bytes_to_unicode()

    @functools.cache
    def bpe(token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            bigram = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
            if bigram not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == bigram:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    pattern = regex.compile(clip_score.WORD_PATTERN, regex.IGNORECASE)
    text = regex.sub(r"\s+", " ", text).strip().lower()
    ids = []
    for token in pattern.findall(text):
        token = "".join(byte_encoder[b] for b in token.encode("utf-8"))
        ids.extend(vocabulary[piece] for piece in bpe(token))
    tokens = [vocabulary["<|startoftext|>"], *ids, vocabulary["<|endoftext|>"]]
    if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = vocabulary["<|endoftext|>"]
    return tokens + [0] * (context_length - len(tokens))


def test_tokenizer_matches_openai_clip_and_truncates(scorer):
    tokenizer = scorer.tokenizer
    captions = [*CAPTIONS, "photo " * 100, "a\tphoto\n\nof  THE dog.", ""]
    ids = tokenizer(captions)
    assert ids.shape == (len(captions), 77) and ids.dtype == np.int32
    for row, caption in zip(ids, captions):
        assert row.tolist() == _reference_ids(caption, tokenizer.vocabulary, tokenizer.merges)
    start, end = tokenizer.vocabulary["<|startoftext|>"], tokenizer.vocabulary["<|endoftext|>"]
    long = ids[len(CAPTIONS)]
    assert long[0] == start and long[76] == end
    assert (long[1:76] == tokenizer.vocabulary["photo</w>"]).all()
    assert ids[-1].tolist()[:3] == [start, end, 0]
    # Merges are applied: "photo" is one piece, an unknown word is spelled in bytes.
    assert tokenizer(["photo"])[0, 1] == tokenizer.vocabulary["photo</w>"]
    spelled = [tokenizer.vocabulary[piece] for piece in ("x", "y", "z</w>")]
    assert tokenizer(["xyz"])[0, 1:5].tolist() == [*spelled, end]


# --- Errors --------------------------------------------------------------------------------


def test_bad_inputs_fail_clearly(tiny_dir, scorer, tmp_path):
    with pytest.raises(ValueError, match="absent: no such directory; expected a KerasHub CLIP"):
        clip_score.ClipScorer.from_dir(str(tmp_path / "absent"))
    lacking = shutil.copytree(tiny_dir, tmp_path / "lacking")
    os.remove(lacking / "assets" / "tokenizer" / "merges.txt")
    with pytest.raises(ValueError, match="lacks .*merges.txt"):
        clip_score.ClipScorer.from_dir(str(lacking))
    other = shutil.copytree(tiny_dir, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "class_name": "T5Backbone"}))
    with pytest.raises(ValueError, match="describes a 'T5Backbone', not a 'CLIPBackbone'"):
        clip_score.ClipScorer.from_dir(str(other))
    with pytest.raises(ValueError, match="7 images but 6 captions"):
        scorer.scores(_images(7), CAPTIONS[:6])
    with pytest.raises(TypeError, match="uint8 or float"):
        scorer.scores(_images(1).astype(np.int32), CAPTIONS[:1])
    with pytest.raises(ValueError, match="NHWC"):
        scorer.scores(_images(1)[0], CAPTIONS[:1])
    with pytest.raises(TypeError, match="sequence of str"):
        scorer.scores(_images(1), "a cat")
    with pytest.raises(ValueError, match="batch_size"):
        clip_score.ClipScorer.from_dir(tiny_dir, batch_size=0)
    vocabulary = dict(scorer.tokenizer.vocabulary, extra=10_000)
    with pytest.raises(ValueError, match="largest id"):
        clip_score.ClipTokenizer(vocabulary, scorer.tokenizer.merges)
    with pytest.raises(ValueError, match="no pairs"):
        clip_score.mean_clip_score(np.zeros(0))


@pytest.mark.slow
def test_backend_checks_and_a_keras_free_core():
    """In a fresh process: the metrics import no keras; another backend fails clearly."""
    script = textwrap.dedent(
        """
        import os, sys
        import mcm_jax.eval.metrics, mcm_jax.method.samplers, mcm_jax.method.losses
        assert "keras" not in sys.modules, "keras imported by the core or the metrics"
        from mcm_jax.eval import clip_score

        def error():
            try:
                clip_score.import_keras()
            except RuntimeError as error:
                return str(error)
            raise AssertionError("no error")

        os.environ["KERAS_BACKEND"] = "numpy"
        assert "KERAS_BACKEND='numpy'" in error()
        import keras  # on the numpy backend
        os.environ["KERAS_BACKEND"] = "jax"
        assert "imported with the 'numpy' backend" in error()
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.slow
def test_scores_without_tensorflow(tmp_path):
    """In a fresh process where TensorFlow and tensorflow-text cannot be imported."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorflow"] = sys.modules["tensorflow_text"] = None  # imports fail
        import numpy as np
        from mcm_jax.eval import clip_score
        scorer = clip_score.ClipScorer.from_dir(
            clip_score.write_tiny_clip({str(tmp_path / "tiny")!r}), batch_size=2
        )
        scores = scorer.scores(np.zeros((3, 20, 20, 3), np.uint8), ["a cat", "a dog", "red"])
        assert scores.shape == (3,) and np.isfinite(scores).all(), scores
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


# --- Eval config and metric --------------------------------------------------------------


def test_eval_config_fields_and_metric(tiny_dir):
    config = default_eval_config()
    assert config.clip_dir is None and metrics.clip_scorer(config) is None
    for field, value, message in (
        ("clip_dir", "", "config.eval.clip_dir"),
        ("clip_batch_size", 0, "config.eval.clip_batch_size"),
    ):
        bad = ml_collections.ConfigDict(config.to_dict())
        bad[field] = value
        with pytest.raises(ValueError, match=message):
            metrics.clip_scorer(bad)
    config.clip_dir = "/nonexistent/clip"
    with pytest.raises(ValueError, match="config.eval.clip_dir: /nonexistent/clip: no such dir"):
        metrics.clip_scorer(config)
    config.clip_dir, config.clip_batch_size = tiny_dir, 4
    scorer = metrics.clip_scorer(config)
    assert scorer.batch_size == 4
    images = _images(5)
    scores = scorer.scores(images, CAPTIONS[:5])
    assert metrics.mean_clip_score(scores) == pytest.approx(scores.mean())


def test_gcs_preset_dir(tiny_dir, scorer, gcs_dir):
    """A preset on gs:// is copied locally and scores exactly as the local one."""
    for file in pathlib.Path(tiny_dir).rglob("*"):
        if file.is_file():
            target = gcs_dir / file.relative_to(tiny_dir).as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    remote = clip_score.ClipScorer.from_dir(str(gcs_dir), batch_size=scorer.batch_size)
    images = _images(3)
    np.testing.assert_array_equal(remote.scores(images, CAPTIONS[:3]),
                                  scorer.scores(images, CAPTIONS[:3]))
