"""CLIP score of images against their captions, with KerasHub's CLIP on Keras's JAX backend.

CLIP score (Hessel et al. 2021, "CLIPScore", with the ×100 scale of text-to-image papers): per
pair 100 · max(cos(E_image, E_text), 0), averaged over pairs (docs/eval.md). The network is
KerasHub's `CLIPBackbone`, loaded from a local KerasHub preset directory (config.json,
model.weights.h5, tokenizer.json, assets/tokenizer/{vocabulary.json, merges.txt}); nothing is
downloaded. Tokenization uses HF `tokenizers` on the preset's vocabulary and merges, built as HF's
CLIP converter builds it: KerasHub 0.32's CLIPTokenizer cannot be constructed without
tensorflow-text, which this project never installs. Images are prepared as CLIP's own
preprocessing prepares PIL images: shorter side resized to the model's size (bicubic, antialiased,
two passes rounded to uint8 as PIL does), centre crop as torchvision's, CLIP's mean and std.

keras and keras_hub are imported only when a scorer is built (the core stays Keras-free), on
Keras's JAX backend (mcm_jax.text.keras_backend).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from mcm_jax import images as images_lib
from mcm_jax.text import keras_backend

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
# CLIP's word pattern (OpenAI simple_tokenizer.py; HF's CLIPConverter).
WORD_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)
CONFIG_FILE, TOKENIZER_FILE = "config.json", "tokenizer.json"
VOCABULARY_FILE = os.path.join("assets", "tokenizer", "vocabulary.json")
MERGES_FILE = os.path.join("assets", "tokenizer", "merges.txt")
PRESET_FILES = (CONFIG_FILE, TOKENIZER_FILE, VOCABULARY_FILE, MERGES_FILE)  # and the weights
DEFAULT_PRESET = "clip_vit_large_patch14"  # ViT-L/14 at 224 px, the usual text-to-image CLIP
PRESET_HELP = (
    "a KerasHub CLIP preset directory; make one on a machine with internet (docs/eval.md):\n"
    "  pip install kagglehub\n"
    "  python -c \"import kagglehub, shutil; shutil.copytree(kagglehub.model_download("
    f"'keras/clip/keras/{DEFAULT_PRESET}'), '{DEFAULT_PRESET}')\""
)


def import_keras() -> tuple[Any, Any]:
    """(keras, keras_hub) on Keras's JAX backend; fails clearly if keras runs another one."""
    return keras_backend.import_keras_hub("CLIP score")


# --- Tokenizer ---------------------------------------------------------------------------------


def read_merges(path: str) -> list[str]:
    """The merge rules of a merges.txt, without its "#version" header and blank lines."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#version")]


@dataclasses.dataclass(frozen=True)
class ClipTokenizer:
    """CLIP's BPE tokenizer: lower-cased, byte-level, `</w>` word ends, start and end tokens."""

    vocabulary: dict[str, int]
    merges: list[str]
    context_length: int = 77

    def __post_init__(self):
        for token in (START_TOKEN, END_TOKEN):
            if token not in self.vocabulary:
                raise ValueError(f"not a CLIP vocabulary: {token} missing")
        if self.vocabulary[END_TOKEN] != max(self.vocabulary.values()):
            raise ValueError(
                f"not a CLIP vocabulary: {END_TOKEN} must have the largest id (CLIP's text "
                "pooler takes the argmax of the ids), got "
                f"{self.vocabulary[END_TOKEN]} < {max(self.vocabulary.values())}"
            )
        if self.context_length < 2:
            raise ValueError(f"context_length: must be >= 2, got {self.context_length}")

    @functools.cached_property
    def bpe(self) -> tokenizers.Tokenizer:
        """The HF tokenizer without special tokens: one id per BPE piece."""
        pairs = []
        for rule in self.merges:
            parts = rule.split(" ")
            if len(parts) != 2 or not all(p in self.vocabulary for p in parts):
                raise ValueError(f"merge rule {rule!r}: expected two vocabulary tokens")
            pairs.append((parts[0], parts[1]))
        tokenizer = tokenizers.Tokenizer(
            models.BPE(
                vocab=self.vocabulary, merges=pairs, continuing_subword_prefix="",
                end_of_word_suffix="</w>", fuse_unk=False, unk_token=END_TOKEN,
            )
        )
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
             normalizers.Lowercase()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(tokenizers.Regex(WORD_PATTERN), behavior="removed", invert=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """(n, context_length) int32: start, the first context_length − 2 pieces, end, zeros
        (OpenAI's clip.tokenize(truncate=True))."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions: expected a sequence of str")
        start, end = self.vocabulary[START_TOKEN], self.vocabulary[END_TOKEN]
        ids = np.zeros((len(captions), self.context_length), np.int32)
        for row, encoding in enumerate(self.bpe.encode_batch(list(captions))):
            pieces = [start, *encoding.ids[: self.context_length - 2], end]
            ids[row, : len(pieces)] = pieces
        return ids

    @classmethod
    def from_dir(cls, directory: str, context_length: int = 77) -> ClipTokenizer:
        """The tokenizer of a KerasHub CLIP preset (assets/tokenizer/*)."""
        with open(os.path.join(directory, VOCABULARY_FILE), encoding="utf-8") as f:
            vocabulary = json.load(f)
        merges = read_merges(os.path.join(directory, MERGES_FILE))
        return cls(vocabulary, merges, context_length)


# --- Images ------------------------------------------------------------------------------------


def as_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 RGB from uint8 or [-1, 1] float samples (1 channel repeated to 3)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images: expected NHWC with 1 or 3 channels, got shape {images.shape}")
    if np.issubdtype(images.dtype, np.floating):
        images = images_lib.to_uint8(images)
    elif images.dtype != np.uint8:
        raise TypeError(f"images: expected uint8 or float in [-1, 1], got {images.dtype}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shorter side to `size`, the longer scaled and truncated (torchvision Resize(size))."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _resize_like_pil(pixels: jax.Array, axis: int, length: int) -> jax.Array:
    """PIL's bicubic (Keys a=−0.5, antialiased when shrinking) along one axis, rounded to uint8
    levels as PIL rounds each pass."""
    if pixels.shape[axis] == length:
        return pixels
    shape = list(pixels.shape)
    shape[axis] = length
    resized = jax.image.resize(pixels, shape, "bicubic", antialias=True)
    return jnp.clip(jnp.floor(resized + 0.5), 0, 255)


@functools.partial(jax.jit, static_argnames="size")
def preprocess(images_uint8: jax.Array, size: int) -> jax.Array:
    """uint8 NHWC RGB of any size -> CLIP's float32 input (N, size, size, 3): shorter side to
    `size` (width pass first, as PIL), centre crop (torchvision's offsets), (x/255 − mean)/std."""
    _, height, width, _ = images_uint8.shape
    new_height, new_width = resized_shape(height, width, size)
    pixels = jnp.asarray(images_uint8, jnp.float32)
    pixels = _resize_like_pil(_resize_like_pil(pixels, 2, new_width), 1, new_height)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    pixels = pixels[:, top : top + size, left : left + size]
    return (pixels / 255.0 - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


# --- Scorer ------------------------------------------------------------------------------------


def check_preset_dir(directory: str) -> None:
    """Fails, naming what is wrong, unless `directory` holds a KerasHub CLIP preset."""
    keras_backend.check_preset_dir(
        directory, files=PRESET_FILES,
        classes={CONFIG_FILE: "CLIPBackbone", TOKENIZER_FILE: "CLIPTokenizer"}, help=PRESET_HELP,
    )


def mean_clip_score(scores: np.ndarray) -> float:
    """The CLIP score of a set of pairs: the mean of their per-pair scores."""
    scores = np.asarray(scores)
    if scores.size == 0:
        raise ValueError("scores: the CLIP score of no pairs is undefined")
    return float(np.mean(scores, dtype=np.float64))


class ClipScorer:
    """Per-pair CLIP scores in fixed-size batches (one compilation; the last batch is padded)."""

    def __init__(self, backbone: Any, tokenizer: ClipTokenizer, batch_size: int = 64,
                 precision: str = "highest"):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
        keras, _ = import_keras()
        height, width, _ = backbone.vision_encoder.image_shape
        if height != width:
            raise ValueError(f"CLIP's image input must be square, got {height}x{width}")
        self.image_size, self.batch_size, self.tokenizer = int(height), batch_size, tokenizer
        self._variables = [v.value for v in backbone.variables]

        def cosines(variables: list[jax.Array], pixels: jax.Array, ids: jax.Array) -> jax.Array:
            with keras.StatelessScope(state_mapping=list(zip(backbone.variables, variables))):
                with jax.default_matmul_precision(precision):
                    image = backbone.get_vision_embeddings(pixels)
                    text = backbone.get_text_embeddings(ids)
            image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
            text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
            return jnp.sum(image * text, axis=-1)

        self._cosines: Callable[..., jax.Array] = jax.jit(cosines)

    @classmethod
    def from_dir(cls, directory: str, *, batch_size: int = 64,
                 precision: str = "highest") -> ClipScorer:
        """The scorer of a KerasHub CLIP preset directory (local or gs://, which is first copied
        to a local temporary directory), in float32."""
        check_preset_dir(directory)
        _, keras_hub = import_keras()
        with keras_backend.local_preset(directory) as local:
            backbone = keras_hub.models.CLIPBackbone.from_preset(local, dtype="float32")
            context = int(backbone.text_encoder.max_sequence_length)
            tokenizer = ClipTokenizer.from_dir(local, context)
        return cls(backbone, tokenizer, batch_size, precision)

    def cosines(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """(n,) float32 cosine similarities of each image's and its caption's CLIP embedding."""
        images, ids = as_uint8_rgb(images), self.tokenizer(captions)
        if len(images) != len(ids):
            raise ValueError(f"images and captions: {len(images)} images but {len(ids)} captions")
        out = []
        for first in range(0, len(images), self.batch_size):
            batch_images = images[first : first + self.batch_size]
            batch_ids = ids[first : first + self.batch_size]
            pad = self.batch_size - len(batch_images)
            batch_images = np.pad(batch_images, ((0, pad), (0, 0), (0, 0), (0, 0)))
            batch_ids = np.pad(batch_ids, ((0, pad), (0, 0)), mode="edge")
            pixels = preprocess(batch_images, self.image_size)
            cosines = np.asarray(self._cosines(self._variables, pixels, batch_ids))
            out.append(cosines[: len(cosines) - pad])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def scores(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """(n,) float64 per-pair CLIP scores, 100 · max(cos, 0), of uint8 or [-1, 1] float NHWC
        images of any size against their captions."""
        return 100.0 * np.maximum(self.cosines(images, captions).astype(np.float64), 0.0)


# --- A tiny random CLIP preset (tests) ---------------------------------------------------------


def tiny_vocabulary(words: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary that spells any text: the 256 byte symbols, each also with
    `</w>`, one merge chain per word of `words` (merged left to right), then the start and end
    tokens (end last: CLIP pools the text at the largest id)."""
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocabulary = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges: list[str] = []
    for word in words:
        pieces = list(word)
        pieces[-1] += "</w>"
        prefix = pieces[0]
        for piece in pieces[1:]:
            if prefix + piece not in vocabulary:
                merges.append(f"{prefix} {piece}")
                vocabulary[prefix + piece] = len(vocabulary)
            prefix += piece
    vocabulary[START_TOKEN] = len(vocabulary)
    vocabulary[END_TOKEN] = len(vocabulary)
    return vocabulary, merges


def write_tiny_clip(
    directory: str, *, seed: int = 0, image_size: int = 16, patch_size: int = 4, width: int = 16,
    layers: int = 2, heads: int = 2, projection_dim: int = 8,
    words: Sequence[str] = ("a", "photo", "of", "the", "cat", "dog", "red", "blue"),
) -> str:
    """Writes a randomly initialised tiny CLIP (weights drawn under keras_backend.seeded(seed)) as
    a KerasHub preset directory that `ClipScorer.from_dir` loads; returns it."""
    keras, keras_hub = import_keras()
    vocabulary, merges = tiny_vocabulary(words)
    encoder_args = dict(
        hidden_dim=width, num_layers=layers, num_heads=heads, intermediate_dim=4 * width
    )
    with keras_backend.seeded(seed):
        backbone = keras_hub.models.CLIPBackbone(
            vision_encoder=keras_hub.models.CLIPVisionEncoder(
                patch_size=patch_size, image_shape=(image_size, image_size, 3), **encoder_args
            ),
            text_encoder=keras_hub.models.CLIPTextEncoder(
                vocabulary_size=len(vocabulary), embedding_dim=width, **encoder_args
            ),
            projection_dim=projection_dim,
            dtype="float32",
        )
    backbone.save_to_preset(directory)
    # KerasHub's own tokenizer saving needs tensorflow-text; this is the layout it writes.
    config = keras.saving.serialize_keras_object(keras_hub.models.CLIPTokenizer())
    with open(os.path.join(directory, TOKENIZER_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=4)
    os.makedirs(os.path.dirname(os.path.join(directory, VOCABULARY_FILE)), exist_ok=True)
    with open(os.path.join(directory, VOCABULARY_FILE), "w", encoding="utf-8") as f:
        json.dump(vocabulary, f)
    with open(os.path.join(directory, MERGES_FILE), "w", encoding="utf-8") as f:
        f.writelines(f"{rule}\n" for rule in merges)
    return directory
