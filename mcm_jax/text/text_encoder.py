"""The frozen T5 text encoder of text-to-image training (paper §5.2), run by KerasHub on JAX.

The network gets the per-token outputs of a T5 encoder (default T5 v1.1 XXL, as in Imagen) for
each caption; they are computed once, before training (`mcm_jax.data.embed_text`), so
training never runs T5. Any KerasHub T5 preset directory works (what `save_to_preset` writes:
config.json, model.weights.h5, tokenizer.json and assets/tokenizer/vocabulary.spm); see
docs/data.md for where the weights come from.

Tokens follow T5: SentencePiece pieces, then EOS (id 1), padded with id 0 to `max_length`; a
longer caption is cut to `max_length - 1` pieces and keeps its EOS. Tokenization is KerasHub's
T5Tokenizer on its pure-Python path (the `sentencepiece` package; tensorflow-text is not needed).

Memory: KerasHub's T5Backbone always builds the decoder too, so loading holds the whole backbone
in host memory (XXL: 11.1B parameters, 22 GB in bfloat16); only the encoder's variables (XXL:
4.8B, 9.5 GB) are copied to the accelerator, and one device runs them.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mcm_jax.text import keras_backend

EOS_ID = 1
PAD_ID = 0
ENCODER_INPUTS = ("encoder_token_ids", "encoder_padding_mask")
ENCODER_OUTPUT = "encoder_sequence_output"
# Keras warns that T5's attention ignores Keras masks; T5 gets its padding mask as an input.
MASK_WARNING = ".*does not support masking"
PRESET_FILES = ("config.json", "tokenizer.json", "assets/tokenizer/vocabulary.spm")


def _keras_on_jax() -> tuple[Any, Any]:
    return keras_backend.import_keras_hub("the T5 text encoder")


def check_preset_dir(directory: epath.PathLike) -> None:
    """Raises ValueError unless `directory` looks like a KerasHub T5 preset directory."""
    keras_backend.check_preset_dir(
        directory, files=PRESET_FILES,
        classes={"config.json": "T5Backbone", "tokenizer.json": "T5Tokenizer"},
        help="a KerasHub T5 preset directory: make one with keras_hub's "
        "T5Backbone/T5Tokenizer .save_to_preset(DIR)",
    )


def _load_encoder(local_dir: str, dtype: str) -> tuple[Any, Any]:
    """The encoder half of the preset's T5Backbone as a keras.Model, and its T5Tokenizer."""
    keras, keras_hub = _keras_on_jax()
    try:
        host = keras.device("cpu")  # the whole backbone waits in host memory, not on a device
    except (RuntimeError, ValueError):
        host = None
    with warnings.catch_warnings(), host or contextlib.nullcontext():
        warnings.filterwarnings("ignore", message=MASK_WARNING)
        backbone = keras_hub.models.T5Backbone.from_preset(local_dir, dtype=dtype)
    encoder = keras.Model(
        {name: backbone.input[name] for name in ENCODER_INPUTS},
        backbone.output[ENCODER_OUTPUT],
        name="t5_encoder",
    )
    tokenizer = keras_hub.models.T5Tokenizer.from_preset(local_dir)
    return encoder, tokenizer


def _check_sizes(max_length: int, batch_size: int) -> None:
    if max_length < 1:
        raise ValueError(f"max_length: {max_length} < 1; a prompt needs at least its EOS")
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} < 1")


class TextEncoder:
    """Tokenizes prompts and runs a frozen T5 encoder on them in fixed-shape batches.

    Every batch has shape (batch_size, max_length) (the last one is filled with EOS-only rows), so
    the encoder compiles once; a prompt's embedding does not depend on the other prompts of its
    batch.
    """

    def __init__(
        self, encoder: Any, tokenizer: Any, *, directory: str, max_length: int, batch_size: int
    ):
        _check_sizes(max_length, batch_size)
        self.directory = directory
        self.max_length = max_length
        self.batch_size = batch_size
        self.width = int(encoder.output.shape[-1])
        self._tokenizer = tokenizer
        device = jax.devices()[0]
        self._variables = jax.device_put(
            ([v.value for v in encoder.trainable_variables],
             [v.value for v in encoder.non_trainable_variables]),
            device,
        )

        @jax.jit
        def embed(variables, token_ids, mask):
            trainable, non_trainable = variables
            inputs = {"encoder_token_ids": token_ids, "encoder_padding_mask": mask}
            with warnings.catch_warnings():  # traced once; see MASK_WARNING
                warnings.filterwarnings("ignore", message=MASK_WARNING)
                out, _ = encoder.stateless_call(trainable, non_trainable, inputs, training=False)
            return jnp.where(mask[..., None] > 0, out, 0).astype(jnp.float16)

        self._embed = embed

    @classmethod
    def from_dir(
        cls,
        directory: epath.PathLike,
        *,
        max_length: int = 128,
        batch_size: int = 64,
        dtype: str = "bfloat16",
    ) -> TextEncoder:
        """The encoder of the KerasHub T5 preset in `directory` (local or gs://, which is first
        copied to a local temporary directory), its variables in `dtype`."""
        _check_sizes(max_length, batch_size)
        check_preset_dir(directory)
        with keras_backend.local_preset(directory) as local:
            encoder, tokenizer = _load_encoder(local, dtype)
        name = os.fspath(directory)
        if "://" not in name:
            name = os.path.abspath(os.path.expanduser(name))
        return cls(encoder, tokenizer, directory=name, max_length=max_length, batch_size=batch_size)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids int32 (n, max_length), EOS-terminated and zero-padded, and lengths int32 (n,)
        (the number of real tokens, EOS included)."""
        pieces = self._tokenizer.tokenize(list(prompts)) if len(prompts) else []
        ids = np.full((len(prompts), self.max_length), PAD_ID, np.int32)
        lengths = np.zeros(len(prompts), np.int32)
        for row, tokens in enumerate(pieces):
            tokens = list(tokens[: self.max_length - 1]) + [EOS_ID]
            ids[row, : len(tokens)] = tokens
            lengths[row] = len(tokens)
        return ids, lengths

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings float16 (n, max_length, width), zero at padding, and lengths int32 (n,)."""
        ids, lengths = self.tokenize(prompts)
        mask = (np.arange(self.max_length) < lengths[:, None]).astype(np.int32)
        out = np.zeros((len(prompts), self.max_length, self.width), np.float16)
        for start in range(0, len(prompts), self.batch_size):
            stop = min(start + self.batch_size, len(prompts))
            batch_ids = np.full((self.batch_size, self.max_length), PAD_ID, np.int32)
            batch_ids[:, 0] = EOS_ID
            batch_mask = np.zeros_like(batch_ids)
            batch_mask[:, 0] = 1
            batch_ids[: stop - start] = ids[start:stop]
            batch_mask[: stop - start] = mask[start:stop]
            out[start:stop] = np.asarray(self._embed(self._variables, batch_ids, batch_mask))[
                : stop - start
            ]
        if not np.isfinite(out).all():
            raise FloatingPointError(
                f"the T5 encoder in {self.directory} gave values beyond float16's range"
            )
        return out, lengths


def write_tiny_encoder(
    directory: epath.PathLike,
    corpus: Iterable[str],
    *,
    width: int = 32,
    num_layers: int = 2,
    vocab_size: int = 64,
    seed: int = 0,
) -> None:
    """Saves a randomly initialised tiny T5 (v1.1 layout: gated GELU, untied embeddings) with a
    SentencePiece vocabulary trained on `corpus` as a KerasHub preset in the local `directory`.

    For tests and the CPU demo: `TextEncoder.from_dir` loads it like a real preset. The vocabulary
    has at most `vocab_size` pieces (fewer if the corpus is small); ids 0, 1, 2 are <pad>, </s>,
    <unk> as in T5.
    """
    import sentencepiece as spm

    keras, keras_hub = _keras_on_jax()
    sentences = [line for line in corpus if line.strip()]
    if not sentences:
        raise ValueError("corpus: no non-empty sentence to train the vocabulary on")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, bos_id=-1, pad_id=PAD_ID, eos_id=EOS_ID,
        unk_id=2, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1, minloglevel=2,
    )
    tokenizer = keras_hub.models.T5Tokenizer(proto=proto.getvalue())
    with keras_backend.seeded(seed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MASK_WARNING)
        backbone = keras_hub.models.T5Backbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=num_layers, num_heads=2,
            hidden_dim=width, intermediate_dim=2 * width, dropout=0.0, activation="gelu",
            use_gated_activation=True, tie_embedding_weights=False,
        )
    # KerasHub's initial token embeddings are nearly one vector (rows differ by ~6% of their
    # norm), so a frozen random encoder could hardly tell prompts apart; a trained T5's rows are
    # far apart. Independent standard normal rows stand in for that.
    embedding = backbone.get_layer("token_embedding").embeddings
    rows = np.random.default_rng(seed).standard_normal(tuple(embedding.shape))
    embedding.assign(rows.astype(embedding.dtype))
    backbone.save_to_preset(os.fspath(directory))
    tokenizer.save_to_preset(os.fspath(directory))
