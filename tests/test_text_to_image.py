"""Text-to-image end to end on a tiny caption data set: embed captions, train a text-conditioned
teacher with prompt dropout, distil a guided CD student, evaluate both with prompts and the CLIP
score; and the text-to-image configs."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from mcm_jax import models
from mcm_jax.config import data_config, presets
from mcm_jax.data import embedded_captions
from mcm_jax.eval import clip_score, evaluate
from mcm_jax.run import run_setup
from mcm_jax.train import train, train_step
from test_text_encoder import CORPUS, tiny_encoder, tiny_encoder_dir  # noqa: F401 (fixtures)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory, tiny_encoder):  # noqa: F811
    out = tmp_path_factory.mktemp("captions")
    examples = [(_png(i), CORPUS[i % len(CORPUS)]) for i in range(24)]
    embedded_captions.write_embedded_captions(out, "train", examples, tiny_encoder)
    prompts = [(None, caption) for caption in CORPUS[:5]]
    embedded_captions.write_embedded_captions(out / "prompts", "validation", prompts, tiny_encoder)
    return out


def _teacher_config(caption_dir, width):
    config = presets.digits_diffusion("model=tiny")
    config.data = data_config.default_data_config("captions")
    config.data.update(
        data_dir=str(caption_dir), resolution=16, text_length=8, text_width=width,
        shuffle_buffer=32,
    )  # data.eval_split stays "validation", which the training set lacks: prompts come from eval.*
    config.diffusion.label_dropout = 0.2
    config.training.update(
        batch_size=8, num_steps=4, log_every=2, checkpoint_every=4, sample_every=4,
        sample_images=4,
    )
    config.eval.update(
        metric="none", num_samples=7, batch_size=8, grid_images=4, save_samples=True,
        prompts_dir=str(caption_dir / "prompts"), prompts_split="validation",
    )
    return config


@pytest.mark.slow
def test_teacher_and_guided_student_train_and_evaluate_with_prompts(
    tmp_path, caption_dir, tiny_encoder  # noqa: F811
):
    teacher = _teacher_config(caption_dir, tiny_encoder.width)
    train.train(teacher, str(tmp_path / "teacher"))
    assert (tmp_path / "teacher" / "samples_00000004.png").exists()
    teacher.eval.update(guidance_weight=2.0, sweep_steps=(4,), sweep_methods=("ddim",))
    (row,) = evaluate.evaluate(teacher, str(tmp_path / "teacher"))
    assert row["guidance_weight"] == 2.0

    student = presets.digits_mcm("steps=2,method=cd,model=tiny")
    student.data, student.eval = teacher.data, teacher.eval
    student.eval.update(guidance_weight=0.0, sweep_steps=(), sweep_methods=())
    student.eval.clip_dir = clip_score.write_tiny_clip(str(tmp_path / "clip"))
    student.mcm.update(guidance_weight=1.5, teacher_steps_start=16, teacher_steps_end=16)
    student.teacher.workdir = str(tmp_path / "teacher")
    student.training.update(batch_size=8, num_steps=2, log_every=1, checkpoint_every=2,
                            sample_every=0)
    train.train(student, str(tmp_path / "student"))
    (row,) = evaluate.evaluate(student, str(tmp_path / "student"))
    assert 0.0 <= row["clip_score"] <= 100.0
    (setting,) = (tmp_path / "student" / "eval").glob("*/step_*/ddim_2steps")
    with np.load(setting / "samples.npz") as saved:
        assert saved["arr_0"].shape == (7, 16, 16, 3)
        # Sample i has prompt i mod 5 of the prompt set, in order.
        assert list(saved["captions"]) == [CORPUS[i % 5] for i in range(7)]
    assert json.loads((setting / "metrics.json").read_text())["clip_score"] == row["clip_score"]


@pytest.mark.slow
def test_t2i_configs_are_the_papers_settings_and_report_size_and_cost():
    teacher = presets.t2i_diffusion()
    assert teacher.data.name == "captions" and teacher.data.resolution == 512
    assert data_config.text_shape(teacher.data) == (128, 4096)
    assert tuple(teacher.model.level_channels) == (128, 256, 1024, 2048)
    assert teacher.model.middle_channels == 4096 and teacher.model.middle_blocks == 16
    assert teacher.model.middle_dropout == 0.1
    count = models.param_count(teacher.model, 512, channels=3, num_classes=0, text_width=4096)
    assert 5.5e9 < count < 5.7e9  # 5.61B
    forward = models.flops_per_example(teacher.model, 512, channels=3, text=(128, 4096))
    assert forward == pytest.approx(18.09e12, rel=1e-3)
    assert train_step.train_flops_per_example(teacher) == pytest.approx(3 * forward)

    for steps, guidance in ((4, 0.5), (8, 3.0), (16, 3.0)):
        student = presets.t2i_mcm(f"steps={steps},guidance={guidance}")
        m = student.mcm
        assert (m.method, m.student_steps, m.guidance_weight) == ("cd", steps, guidance)
        assert m.teacher_steps_start == m.teacher_steps_end == 256  # no annealing
        assert (m.xvar_frac, m.huber_c) == (0.75, 1.0)
        assert (student.training.num_steps, student.training.batch_size) == (30_000, 2048)
        # The guided teacher runs twice per example: 3 (student) + 1 (reference) + 2 (teacher).
        assert train_step.train_flops_per_example(student) == pytest.approx(6 * forward)
        student.teacher.workdir = "gs://bucket/t2i_512"
        run_setup.validate(student, num_devices=8)
    run_setup.validate(teacher, num_devices=8)
    with pytest.raises(ValueError, match="guidance"):
        presets.t2i_mcm("guidance=-1")
    bad = presets.t2i_diffusion()
    bad.data.text_length = 0
    with pytest.raises(ValueError, match="data.text_length"):
        run_setup.validate(bad, num_devices=8)
