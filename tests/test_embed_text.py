"""`python -m mcm_jax.data.embed_text` and the embedded caption data set: each source, the
TFDS directory read back with tfds.builder_from_directory, and the users' mistakes."""

import io
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mcm_jax.data import embed_text, embedded_captions
from test_text_encoder import MAX_LENGTH, tiny_encoder, tiny_encoder_dir  # noqa: F401 (fixtures)

REPO = pathlib.Path(__file__).resolve().parents[1]
CAPTIONS = ["a handwritten digit one", "a handwritten digit two in grey ink", "nine", ""]


def image_bytes(value: int, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(buffer, format=format)
    return buffer.getvalue()


def run(encoder_dir, out, source, *extra):
    embed_text.FLAGS.unparse_flags()  # each call starts from the defaults
    embed_text.main([
        "embed_text", f"--encoder_dir={encoder_dir}", f"--out={out}", f"--source={source}",
        f"--max_length={MAX_LENGTH}", "--batch_size=4", "--examples_per_shard=2", *extra,
    ])


def read_split(out, split="train"):
    builder = tfds.builder_from_directory(str(out))
    return builder, list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def check_embeddings(encoder, examples, captions):
    """Each stored "text" is exactly encode()'s output for its caption, cut to its tokens."""
    assert [e["caption"].decode() for e in examples] == captions
    reference, lengths = encoder.encode(captions)
    for example, embedding, length in zip(examples, reference, lengths):
        assert example["text"].dtype == np.float16 and example["text"].shape == (length, 32)
        np.testing.assert_array_equal(example["text"], embedding[:length])


def test_folder_source(tmp_path, tiny_encoder_dir, tiny_encoder):
    folder = tmp_path / "files"
    for index, caption in enumerate(CAPTIONS):
        shard = folder / f"{index // 2:05d}"
        shard.mkdir(parents=True, exist_ok=True)
        suffix, format = (".jpg", "JPEG") if index % 2 else (".png", "PNG")
        (shard / f"{index:09d}{suffix}").write_bytes(image_bytes(40 * index, format))
        (shard / f"{index:09d}.txt").write_text(caption + "\n")
    (folder / "README.txt").write_text("not a caption")
    out = tmp_path / "out"
    run(tiny_encoder_dir, out, f"folder:{folder}")

    builder, examples = read_split(out)
    assert builder.info.splits["train"].num_shards == 2
    assert dict(builder.info.metadata) == {
        "encoder_dir": str(tiny_encoder_dir), "max_length": MAX_LENGTH, "width": 32,
        "incomplete_splits": [],
    }
    assert [e["id"].decode() for e in examples] == [f"{i // 2:05d}/{i:09d}" for i in range(4)]
    check_embeddings(tiny_encoder, examples, CAPTIONS)
    assert examples[0]["image"].shape == (4, 6, 3) and np.all(examples[2]["image"] == 80)  # PNG
    raw = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()},
                             shuffle_files=False)
    stored = [e["image"] for e in tfds.as_numpy(raw)]
    assert stored[1] == (folder / "00000" / "000000001.jpg").read_bytes()  # JPEG kept as given


@pytest.mark.slow
def test_tar_source_and_a_second_split(tmp_path, tiny_encoder_dir, tiny_encoder):
    """WebDataset shards as img2dataset writes them; a second run adds a split to the same --out."""
    shards = []
    for shard_index in range(2):
        path = tmp_path / f"{shard_index:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(2):
                index = 2 * shard_index + i
                key = f"{index:09d}"
                members = {f"{key}.jpg": image_bytes(index, "JPEG"),
                           f"{key}.txt": CAPTIONS[index].encode(), f"{key}.json": b"{}"}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
    out = tmp_path / "out"
    run(tiny_encoder_dir, out, f"tar:{tmp_path}/*.tar")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("three\n\nseven\n")
    with pytest.raises(SystemExit, match="--out: .*with_images=True, not False"):
        run(tiny_encoder_dir, out, f"prompts:{prompts}", "--split=validation")
    run(tiny_encoder_dir, out, f"tar:{shards[0]}", "--split=validation")

    builder, examples = read_split(out)
    assert sorted(builder.info.splits) == ["train", "validation"]
    assert examples[3]["id"].decode() == "00001.tar/000000003"
    check_embeddings(tiny_encoder, examples, CAPTIONS)
    check_embeddings(tiny_encoder, read_split(out, "validation")[1], CAPTIONS[:2])


def test_prompts_source(tmp_path, tiny_encoder_dir, tiny_encoder):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit six\n\n  eight  \n")
    out = tmp_path / "out"
    run(tiny_encoder_dir, out, f"prompts:{prompts}", "--split=eval")
    builder, examples = read_split(out, "eval")
    assert "image" not in builder.info.features
    assert [e["id"].decode() for e in examples] == ["prompts.txt:1", "prompts.txt:3"]
    check_embeddings(tiny_encoder, examples, ["a handwritten digit six", "eight"])


def write_coco_captions(data_dir, split: str, num_images: int) -> None:
    """A prepared coco_captions with the real features. tfds.testing.mock_data cannot stand in:
    in TFDS 4.9.10 its random examples fail on coco's nested "objects" sequence."""
    builder = tfds.builder("coco_captions", data_dir=str(data_dir))
    builder.data_path.mkdir(parents=True)
    writer = tfds.core.SequentialWriter(ds_info=builder.info, max_examples_per_shard=10)
    writer.initialize_splits([split])
    no_objects = {"area": [], "bbox": np.zeros((0, 4), np.float32), "id": [], "is_crowd": [],
                  "label": []}
    writer.add_examples({split: [
        {"image": image_bytes(i, "JPEG"), "image/filename": f"{i}.jpg", "image/id": 100 + i,
         "objects": no_objects,
         "captions": {"text": [f"image {i} caption {j}" for j in range(5)], "id": list(range(5))}}
        for i in range(3)
    ]})
    writer.close_all()


def test_coco_captions_source(tmp_path, tiny_encoder_dir, tiny_encoder):
    """One seeded caption per image, a function of (seed, image id) only; JPEG bytes as stored."""
    write_coco_captions(tmp_path / "tfds", "val", 3)
    out = tmp_path / "out"
    run(tiny_encoder_dir, out, "tfds:coco_captions/val", f"--data_dir={tmp_path / 'tfds'}")
    _, examples = read_split(out)
    assert [e["id"].decode() for e in examples] == ["100", "101", "102"]
    chosen = [
        f"image {i} caption {np.random.default_rng((0, 100 + i)).integers(5)}" for i in range(3)
    ]
    check_embeddings(tiny_encoder, examples, chosen)
    with pytest.raises(SystemExit, match="--source: tfds:coco_captions/test: no split 'test'"):
        run(tiny_encoder_dir, tmp_path / "out2", "tfds:coco_captions/test",
            f"--data_dir={tmp_path / 'tfds'}")


def test_write_api_ids_and_mixed_examples(tmp_path, tiny_encoder):
    """The Python API the demo calls: (image, caption) tuples; all or none need an image."""
    out = tmp_path / "api"
    count = embedded_captions.write_embedded_captions(
        out, "train", [(image_bytes(i), c) for i, c in enumerate(CAPTIONS)], tiny_encoder
    )
    assert count == 4
    _, examples = read_split(out)
    assert [e["id"].decode() for e in examples] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="every example needs an image, or none may"):
        embedded_captions.write_embedded_captions(
            tmp_path / "mixed", "train", [(image_bytes(0), "one"), (None, "two")], tiny_encoder
        )
    assert embedded_captions.read_metadata(tmp_path / "mixed")["incomplete_splits"] == ["train"]
    with pytest.raises(embedded_captions.OutDirError, match="interrupted"):
        embedded_captions.write_embedded_captions(
            tmp_path / "mixed", "train", [(image_bytes(0), "one")], tiny_encoder
        )
    from mcm_jax.config import data_config
    from mcm_jax.data import input_pipeline  # the reader refuses the interrupted split

    config = data_config.default_data_config("captions")
    config.update(data_dir=str(tmp_path / "mixed"), text_width=tiny_encoder.width, resolution=8)
    with pytest.raises(ValueError, match="interrupted while writing"):
        input_pipeline.validate(config, global_batch_size=8, process_count=1)


def test_prompt_set_errors_name_the_eval_fields(tmp_path, tiny_encoder):
    """Prompts from eval.prompts_dir/prompts_split: a mistake names those fields, not data.*."""
    import ml_collections

    from mcm_jax.config import data_config
    from mcm_jax.eval import prompts

    out = tmp_path / "prompts"
    embedded_captions.write_embedded_captions(out, "coco", [(None, "one")], tiny_encoder)
    config = ml_collections.ConfigDict({
        "data": data_config.default_data_config("captions"),
        "eval": {"prompts_dir": str(tmp_path / "missing"), "prompts_split": "coco"},
    })
    config.data.text_width = tiny_encoder.width
    with pytest.raises(ValueError, match=r"^eval.prompts_dir='.*missing' holds no TFDS data set"):
        prompts.eval_prompts(config)
    config.eval.update(prompts_dir=str(out), prompts_split="val")
    with pytest.raises(ValueError, match=r"^eval.prompts_split \(the prompts\)='val' cannot"):
        prompts.eval_prompts(config)
    config.eval.prompts_split = "coco"
    assert list(prompts.eval_prompts(config).captions) == ["one"]


def test_user_mistakes_name_the_flag(tmp_path, tiny_encoder_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(image_bytes(1))
    (tmp_path / "blank.txt").write_text("\n\n")
    out = tmp_path / "out"
    cases = [
        ((tmp_path / "nothing", out, f"prompts:{prompts}"), "--encoder_dir: .*no such directory"),
        ((folder, out, f"prompts:{prompts}"), "--encoder_dir: .*lacks .*expected a KerasHub T5 preset"),
        ((tiny_encoder_dir, out, f"folder:{tmp_path / 'missing'}"),
         "--source: .*no such directory"),
        ((tiny_encoder_dir, out, f"folder:{folder}"), "--source: .*a.png: image without a caption"),
        ((tiny_encoder_dir, out, f"prompts:{tmp_path / 'blank.txt'}"), "--source: .*no examples"),
        ((tiny_encoder_dir, out, f"tar:{tmp_path}/*.tar"), "--source: .*no file matches"),
        ((tiny_encoder_dir, out, "images:x"), "--source: 'images:x': expected one of"),
        ((tiny_encoder_dir, out, f"prompts:{prompts}", "--max_length=0"), "--max_length: 0 < 1"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit, match=message):
            run(*args)
    assert not out.exists()
    run(tiny_encoder_dir, out, f"prompts:{prompts}")
    with pytest.raises(SystemExit, match="--out: .*already has split 'train'"):
        run(tiny_encoder_dir, out, f"prompts:{prompts}")
    with pytest.raises(SystemExit, match="--out: .*max_length=24, not 8"):
        run(tiny_encoder_dir, out, f"prompts:{prompts}", "--split=b", "--max_length=8")
    for split in ("a+b", "x[:3]", "sub/dir"):  # TFDS would read these as split expressions
        with pytest.raises(SystemExit, match="--split: .*letters, digits and underscores"):
            run(tiny_encoder_dir, tmp_path / "other", f"prompts:{prompts}", f"--split={split}")
    with pytest.raises(SystemExit, match="--out: .*is a file, not a directory"):
        run(tiny_encoder_dir, prompts, f"prompts:{prompts}")
    assert not (tmp_path / "other").exists()


def test_out_holding_another_data_set_is_refused(tmp_path, tiny_encoder_dir, digits_data_dir):
    (version_dir,) = (digits_data_dir / "digits" / "16x16").iterdir()
    with pytest.raises(SystemExit, match="--out: .*holds the TFDS data set 'digits', not embedded"):
        run(tiny_encoder_dir, version_dir, "prompts:unread.txt")


def test_home_relative_encoder_dir(tmp_path, tiny_encoder_dir, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n")
    monkeypatch.setenv("HOME", str(tiny_encoder_dir.parent))
    run(f"~/{tiny_encoder_dir.name}", tmp_path / "out", f"prompts:{prompts}")
    assert embedded_captions.read_metadata(tmp_path / "out")["encoder_dir"] == str(tiny_encoder_dir)


def test_an_interrupted_added_split_is_marked_and_refused(tmp_path, tiny_encoder_dir, tiny_encoder):
    """A split added to an existing data set and interrupted stays marked incomplete: the reader
    and a rerun of the command refuse it, and say what to do."""
    out = tmp_path / "out"
    embedded_captions.write_embedded_captions(out, "a", [(None, "one"), (None, "two")],
                                              tiny_encoder, examples_per_shard=1)

    def killed_after_four():
        for index in range(6):
            if index == 4:
                raise KeyboardInterrupt
            yield None, f"caption {index}"

    with pytest.raises(KeyboardInterrupt):
        embedded_captions.write_embedded_captions(out, "b", killed_after_four(), tiny_encoder,
                                                  examples_per_shard=1)
    assert embedded_captions.read_metadata(out)["incomplete_splits"] == ["b"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n")
    with pytest.raises(SystemExit, match="--out: .*split 'b' was interrupted; delete the directory"):
        run(tiny_encoder_dir, out, f"prompts:{prompts}", "--split=b")
    from mcm_jax.config import data_config
    from mcm_jax.data import input_pipeline

    config = data_config.default_data_config("captions")
    config.update(data_dir=str(out), text_width=tiny_encoder.width, eval_split="b")
    with pytest.raises(ValueError, match="data.eval_split='b': .*interrupted.*delete the directory"):
        input_pipeline.validate(config, global_batch_size=8, process_count=1, split="b",
                                images=False)


@pytest.mark.slow
def test_command_line(tmp_path, tiny_encoder_dir, tiny_encoder):
    """`python -m mcm_jax.data.embed_text` in a fresh process, where TensorFlow and TFDS are
    imported before keras is (keras must still come up on JAX)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    command = [sys.executable, "-m", "mcm_jax.data.embed_text",
               f"--encoder_dir={tiny_encoder_dir}", f"--out={tmp_path / 'out'}",
               f"--source=prompts:{prompts}", f"--max_length={MAX_LENGTH}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "train: 2 examples embedded" in result.stdout
    check_embeddings(tiny_encoder, read_split(tmp_path / "out")[1], ["one", "two"])
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "--out: " in result.stderr.splitlines()[-1]
