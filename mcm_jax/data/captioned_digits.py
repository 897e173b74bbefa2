"""Captioned digits: the bundled 8x8 digits at 16 px with captions made from their labels, and a
tiny frozen T5 for them; the CPU demonstration of text-to-image training (paper §5.2).

Captions come from templates ("a handwritten {d}", "the digit {d}", ...) with the digit written
as a numeral ("7") or an English word ("seven"). Two disjoint sets of phrasings: TRAIN_TEMPLATES
make the training captions and the "test" split's; HELD_OUT_TEMPLATES, never seen in training
(nor by the encoder's vocabulary), make the "heldout" split's, to measure whether the model
follows a prompt phrased in a new way. The digit itself is always a numeral or word seen in
training. `prompted_digit` reads the digit back from any such caption, so evaluation can score
samples with the digits classifier (mcm_jax/eval/digits_classifier.py).

`build(out_dir)` writes, with `embedded_captions.write_embedded_captions`, the data set the
`captions` pipeline reads (data.name="captions"): 3-channel PNGs (the grey digit in R, G and B),
caption, T5 embeddings and an id "split/image/caption/labelL" (`label_of`). Layout of out_dir:
encoder/ (the tiny T5 preset), data/ (the TFDS directory), build.json (what was built; written
last, so a build without it is partial).
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
from etils import epath

from mcm_jax.config import data_config as data_config_lib
from mcm_jax.data import digits_split

VERSION = 5  # bump when the captions, ids, encoder or layout change: reuse compares it
RESOLUTION = 16  # the digits resolution the data set stores
FORMS = ("numeral", "word")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CORE_PHRASINGS = (
    "{d}",
    "a {d}",
    "the digit {d}",
    "number {d}",
    "a handwritten {d}",
    "a picture of a {d}",
    "a scribbled {d}",
    "the number {d} written by hand",
    "an image of the digit {d}",
    "a hand-drawn {d}",
    "the handwritten digit {d}",
    "a white {d} on a black background",
    "a small blurry {d}",
    "a pixelated number {d}",
    "a low resolution photo of a {d}",
    "digit {d} in grey",
    # The digit at the start and in the middle too, so that its place in a prompt varies.
    "{d} on a dark background",
    "{d}, written by hand",
    "{d} drawn with a thick pen",
    "{d} (handwritten)",
    "the {d} in this image",
    "a {d} in the middle of the picture",
    "this is a {d}",
    "it shows a {d}",
    "the character {d}, slightly tilted",
    "a faint {d} on black",
    "an untidy {d} from a form",
    "a bold {d}",
    "written digit: {d}",
    "a thin {d} drawn quickly",
    "a {d} written on a page",
    "the {d} is centred",
)
# Each core phrasing also comes with a lead-in and a tail, so that in training the digit's place
# in the prompt and its neighbours vary widely: 5 x 5 x 32 = 800 training phrasings.
_LEAD_INS = ("", "here is ", "look, ", "scan of ", "an example of ")
_TAILS = ("", " on a form", ", centred", " at low resolution", " in black and white")
TRAIN_TEMPLATES = tuple(
    lead + core + tail for core in _CORE_PHRASINGS for lead in _LEAD_INS for tail in _TAILS
)
HELD_OUT_TEMPLATES = (
    "a drawing of the numeral {d}",
    "{d}, handwritten",
    "handwriting showing {d}",
    "a sketch of the figure {d}",
    "the symbol {d} penned quickly",
    "a person's scrawled {d}",
    "an inked {d} on paper",
    "my neat {d}",
)
SPLITS = {"train": TRAIN_TEMPLATES, "test": TRAIN_TEMPLATES, "heldout": HELD_OUT_TEMPLATES}
# The tiny encoder: small and random (frozen features, as a pretrained T5 is to the model). At
# width 32 its random token embeddings lie close enough that unseen words beside the digit blur it:
# an attention probe trained on the training phrasings read the digit of 91-94% of held-out
# captions; at 64, 98-100%.
ENCODER_WIDTH = 64
ENCODER_LAYERS = 2
ENCODER_VOCAB_SIZE = 256
ENCODER_MAX_LENGTH = 48  # tokens the encoder reads; every caption must be shorter
ENCODE_BATCH_SIZE = 256
MANIFEST = "build.json"

_DIGIT = re.compile(r"\b(?:[0-9]|" + "|".join(WORDS) + r")\b")
_ARTICLE = re.compile(r"\ba (?=(?:8|eight)\b)")  # "a 8" -> "an 8", "a eight" -> "an eight"
_LABEL = re.compile(r"/label([0-9])$")


def caption(label: int, template: str, form: str) -> str:
    """`template` with its "{d}" replaced by digit `label` as a numeral or a word (`form`)."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: expected one of {FORMS}")
    word = str(label) if form == "numeral" else WORDS[label]
    return _ARTICLE.sub("an ", template.format(d=word))


def prompted_digit(text: str) -> int:
    """The digit a caption names (numeral or word); ValueError if it names none or several."""
    found = {m if m.isdigit() else str(WORDS.index(m)) for m in _DIGIT.findall(text.lower())}
    if len(found) != 1:
        raise ValueError(f"caption {text!r} names {len(found)} digits, not one: {sorted(found)}")
    return int(found.pop())


def label_of(example_id: str) -> int:
    """The label stored in an example id ("test/00017/0/label7" -> 7)."""
    match = _LABEL.search(example_id)
    if match is None:
        raise ValueError(f"id {example_id!r} holds no label (expected '.../labelL')")
    return int(match.group(1))


def split_captions(
    split: str, labels: Sequence[int], *, seed: int, captions_per_image: int = 1
) -> list[list[str]]:
    """The captions of each image of `split` (`captions_per_image` for train, one otherwise),
    from the split's templates: distinct templates per image, numeral and word forms
    alternating from a random start. Seeded by (seed, split), with numpy's legacy stream, which
    stays fixed across numpy versions."""
    templates = SPLITS[split]
    count = captions_per_image if split == "train" else 1
    if not 1 <= count <= len(templates):
        raise ValueError(f"captions_per_image={count}: expected 1 .. {len(templates)}")
    rng = np.random.RandomState([seed, list(SPLITS).index(split)])
    out = []
    for label in labels:
        chosen = rng.choice(len(templates), count, replace=False)
        start = rng.randint(len(FORMS))
        out.append([
            caption(int(label), templates[t], FORMS[(start + k) % len(FORMS)])
            for k, t in enumerate(chosen)
        ])
    return out


def all_captions(templates: Sequence[str]) -> list[str]:
    """Every caption `templates` can make: each digit in each form."""
    return [caption(d, t, f) for t in templates for d in range(10) for f in FORMS]


def write_encoder(directory: epath.PathLike, seed: int = 0) -> None:
    """A tiny random T5 preset in `directory` whose SentencePiece vocabulary is trained on the
    training phrasings only: held-out words may split into unseen pieces or <unk>."""
    from mcm_jax.text import text_encoder

    text_encoder.write_tiny_encoder(
        directory, all_captions(TRAIN_TEMPLATES), width=ENCODER_WIDTH,
        num_layers=ENCODER_LAYERS, vocab_size=ENCODER_VOCAB_SIZE, seed=seed,
    )


def _png(grey: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.repeat(grey, 3, axis=-1)).save(buffer, format="PNG")
    return buffer.getvalue()


def _examples(split: str, *, seed: int, captions_per_image: int) -> Iterator[tuple]:
    """(png, caption, id) of every caption of every image of the digits split under `split`."""
    images, labels = digits_split.load_digits_split(
        "train" if split == "train" else "test", RESOLUTION
    )
    texts = split_captions(split, labels, seed=seed, captions_per_image=captions_per_image)
    for position, (image, label, captions) in enumerate(zip(images, labels, texts)):
        png = _png(image)
        for k, text in enumerate(captions):
            yield png, text, f"{split}/{position:05d}/{k}/label{label}"


def _text_length(encoder) -> int:
    """Tokens of the longest caption any template makes (train or held out)."""
    _, lengths = encoder.tokenize(all_captions(TRAIN_TEMPLATES + HELD_OUT_TEMPLATES))
    if lengths.max() >= encoder.max_length:
        raise ValueError(f"a caption has >= {encoder.max_length} tokens: raise ENCODER_MAX_LENGTH")
    return int(lengths.max())


def build(
    out_dir: epath.PathLike,
    *,
    seed: int = 0,
    captions_per_image: int = 8,
    encoder_dir: epath.PathLike | None = None,
) -> dict:
    """Writes the encoder (to out_dir/encoder, unless `encoder_dir` names an existing preset to
    use) and the splits train, test and heldout to out_dir/data; returns what a data config
    needs: {"data_dir", "text_length", "text_width", "resolution", "splits": {split: count}}.

    Reuses a complete build with the same parameters; rebuilds a partial or different one
    (only its encoder/ and data/ are removed); refuses a non-empty out_dir that is no build.
    """
    from mcm_jax.data import embedded_captions
    from mcm_jax.text import text_encoder

    out = epath.Path(out_dir).resolve()
    own_encoder = encoder_dir is None
    encoder_path = out / "encoder" if own_encoder else epath.Path(encoder_dir).resolve()
    wanted = {
        "version": VERSION, "seed": seed, "captions_per_image": captions_per_image,
        "encoder_dir": str(encoder_path), "train_templates": list(TRAIN_TEMPLATES),
        "held_out_templates": list(HELD_OUT_TEMPLATES),
    }
    manifest = out / MANIFEST
    if manifest.exists():
        built = json.loads(manifest.read_text())
        if built.get("complete") and built["parameters"] == wanted:
            return built["info"]
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no {MANIFEST}: choose another directory")
    for owned in [out / "data"] + [encoder_path] * own_encoder:
        if owned.exists():
            shutil.rmtree(owned)
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"complete": False, "parameters": wanted}, indent=1))

    if own_encoder:
        write_encoder(encoder_path, seed)
    encoder = text_encoder.TextEncoder.from_dir(
        encoder_path, max_length=ENCODER_MAX_LENGTH, batch_size=ENCODE_BATCH_SIZE, dtype="float32"
    )
    text_length = _text_length(encoder)
    counts = {
        split: embedded_captions.write_embedded_captions(
            out / "data", split, _examples(split, seed=seed, captions_per_image=captions_per_image),
            encoder,
        )
        for split in SPLITS
    }
    info = {"data_dir": str(out / "data"), "text_length": text_length,
            "text_width": encoder.width, "resolution": RESOLUTION, "splits": counts}
    manifest.write_text(
        json.dumps({"complete": True, "parameters": wanted, "info": info}, indent=1)
    )
    return info


def data_config(build_info: dict) -> ml_collections.ConfigDict:
    """The `captions` data config reading a `build` (train on "train", evaluate on "test"; set
    eval_split="heldout" for the held-out phrasings), shuffling the whole train split."""
    config = data_config_lib.default_data_config("captions")
    config.update(dict(
        data_dir=build_info["data_dir"], resolution=build_info["resolution"],
        text_length=build_info["text_length"], text_width=build_info["text_width"],
        train_split="train", eval_split="test", shuffle_buffer=build_info["splits"]["train"],
    ))
    return config
