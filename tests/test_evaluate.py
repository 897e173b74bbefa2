"""The eval job: exact sample counts on 8 devices, bit-exact resume, FD-digits end to end with a
step sweep and aDDIM calibration, the digits classifier, and clear failures on bad input."""

import json

import jax
import numpy as np
import pytest
from etils import epath

from mcm_jax.config import presets
from mcm_jax.config.eval_config import default_eval_config
from mcm_jax.data import digits_split
from mcm_jax.eval import calibrate, digits_classifier
from mcm_jax.eval import evaluate
from mcm_jax.eval import metrics, sampling
from mcm_jax.run import batch_sampler as batch_sampler_lib
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train

TEACHER_STEPS = 100


def _config(data_dir, **eval_fields):
    """The tiny digits teacher's config (as trained below) with an eval section."""
    config = presets.digits_diffusion("model=tiny")
    config.data.data_dir = str(data_dir)
    config.data.shuffle_buffer = 500
    config.ema_decays = (0.9,)  # with 0.999, 90% of the EMA would still be the init at step 100
    config.training.update(
        batch_size=32, num_steps=TEACHER_STEPS, checkpoint_every=TEACHER_STEPS, log_every=50,
        sample_every=0,
    )
    config.eval = default_eval_config()
    config.eval.update(eval_fields)
    return config


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, digits_data_dir):
    workdir = tmp_path_factory.mktemp("teacher")
    train.train(_config(digits_data_dir), str(workdir))
    return workdir


@pytest.mark.slow
def test_digits_classifier_is_accurate_and_cached(digits_data_dir, monkeypatch):
    classifier = digits_classifier.load_or_train(str(digits_data_dir), 16)
    print(f"digits classifier test accuracy {classifier.test_accuracy:.4f}")
    assert classifier.test_accuracy > 0.97
    assert digits_classifier.cache_path(str(digits_data_dir), 16).exists()

    # Real test digits scored as if they were samples: FD-digits 0 against themselves, and the
    # class accuracy is the classifier's test accuracy.
    space = metrics.digits_space(_config(digits_data_dir))
    scorer = metrics.Scorer(space, conditional=True)
    images, labels = digits_split.load_digits_split("test", 16)
    scorer.update(images, labels, np.ones(len(labels), bool))
    score = scorer.result()
    assert abs(score["fd_digits"]) < 1e-4 and 0 < score["fd_digits_real_data"] < 10
    assert score["class_accuracy"] == classifier.test_accuracy

    monkeypatch.setattr(digits_classifier, "train_params", lambda *a: pytest.fail("retrained"))
    cached = digits_classifier.load_or_train(str(digits_data_dir), 16)
    assert cached.test_accuracy == classifier.test_accuracy
    for a, b in zip(jax.tree.leaves(cached.params), jax.tree.leaves(classifier.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_exactly_n_distinct_samples_and_bit_exact_resume(tmp_path):
    """21 samples in chunks of 8 on 8 devices; a job stopped after one chunk and rerun ends with
    the same bytes as an uninterrupted one, sampling only the missing chunks."""
    assert jax.device_count() == 8
    config = _config("unused")
    setup = RunSetup.create(config)
    params = train.Trainer(setup).init_state().ema_params[0]
    batch_sampler = batch_sampler_lib.make_batch_sampler(
        setup.model_fn, setup.schedule, setup.mesh, setup.param_shardings,
        setting=batch_sampler_lib.SamplerSetting("ddim", 2), image_shape=(16, 16, 1), num_classes=10,
        null_label=10, seed=3, batch_size=8,
    )
    calls = []

    def sample_batch(first):
        calls.append(first)
        return batch_sampler(params, first)

    def run(directory, max_chunks=None):
        return sampling.generate_samples(
            sample_batch, epath.Path(directory), num_samples=21, batch_size=8, num_classes=10,
            max_chunks=max_chunks,
        )

    def read(directory):
        chunks = list(sampling.iterate_chunks(epath.Path(directory), num_samples=21, batch_size=8))
        return tuple(np.concatenate([c[part][c[2]] for c in chunks]) for part in (0, 1))

    assert run(tmp_path / "straight")
    samples, labels = read(tmp_path / "straight")
    assert samples.shape == (21, 16, 16, 1) and samples.dtype == np.uint8
    assert len(np.unique(samples.reshape(21, -1), axis=0)) == 21
    np.testing.assert_array_equal(labels, np.arange(21) % 10)

    calls.clear()
    assert not run(tmp_path / "killed", max_chunks=1)
    assert calls == [0]
    assert run(tmp_path / "killed")
    assert calls == [0, 8, 16]  # the resumed job sampled only the missing chunks
    resumed_samples, resumed_labels = read(tmp_path / "killed")
    np.testing.assert_array_equal(resumed_samples, samples)
    np.testing.assert_array_equal(resumed_labels, labels)


@pytest.mark.slow
def test_calibration_and_fd_digits_sweep_end_to_end(teacher_dir, digits_data_dir):
    config = _config(
        digits_data_dir, calibration_times=9, calibration_batches=1, calibration_batch_size=64,
    )
    table = calibrate.calibrate(config, str(teacher_dir))
    with np.load(table) as t:
        times, x_vars = t["times"], t["x_vars"]
    np.testing.assert_allclose(times, np.linspace(0, 1, 9))
    assert np.all(x_vars >= 0) and x_vars[-1] > 10 * x_vars[0]

    config.eval.update(
        num_samples=100, batch_size=32, sweep_steps=(1, 8), sweep_methods=("ddim", "addim"),
        x_var_table=table, save_samples=True, poll=True,
    )
    rows = evaluate.evaluate(config, str(teacher_dir))
    assert [(r["method"], r["steps"]) for r in rows] == [
        ("ddim", 1), ("ddim", 8), ("addim", 1), ("addim", 8)
    ]
    for row in rows:
        assert row["checkpoint_step"] == TEACHER_STEPS and row["num_samples"] == 100
        assert np.isfinite(row["fd_digits"]) and 0 <= row["class_accuracy"] <= 1
        assert row["classifier_test_accuracy"] > 0.97
    by_setting = {(r["method"], r["steps"]): r for r in rows}
    print("FD-digits", {k: round(v["fd_digits"], 3) for k, v in by_setting.items()},
          "real data", round(rows[0]["fd_digits_real_data"], 3))
    assert by_setting["ddim", 8]["fd_digits"] < by_setting["ddim", 1]["fd_digits"]

    step_dir = teacher_dir / "eval" / "n100_seed0_ema0" / f"step_{TEACHER_STEPS:08d}"
    sweep = json.loads((step_dir / "sweep.json").read_text())
    assert sweep == rows
    assert (step_dir / "sweep.csv").read_text().count("\n") == 5
    assert (step_dir / "sweep.png").stat().st_size > 0
    run_dir = step_dir / "addim_8steps"
    assert (run_dir / "samples.png").exists() and not list(run_dir.glob("chunk_*"))
    with np.load(run_dir / "samples.npz") as saved:
        assert saved["arr_0"].shape == (100, 16, 16, 1) and saved["arr_0"].dtype == np.uint8
    assert list((teacher_dir / "eval" / "n100_seed0_ema0").glob("events.out.tfevents.*"))

    config.eval.poll = False  # a rerun reads the finished results instead of sampling again
    assert evaluate.evaluate(config, str(teacher_dir)) == rows


@pytest.mark.slow
def test_bad_inputs_fail_with_clear_messages(tmp_path, teacher_dir, digits_data_dir):
    def fails(error, match, **eval_fields):
        with pytest.raises(error, match=match):
            evaluate.evaluate(_config(digits_data_dir, **eval_fields), str(teacher_dir))

    fails(FileNotFoundError, "python -m mcm_jax.eval.fid.convert", metric="fid",
          inception_weights=str(tmp_path / "fid_inception.npz"))
    weights = tmp_path / "present.npz"
    weights.write_bytes(b"")
    reference = tmp_path / "reference.npz"
    np.savez(reference, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    fails(ValueError, r"no member\(s\) \['mu', 'sigma'\]", metric="fid",
          inception_weights=str(weights), reference_stats=str(reference))
    fails(ValueError, r"checkpoint step 7 does not exist .* available: \[100\]", step=7)
    fails(ValueError, "config.eval.sweep_methods: 'euler'", sweep_methods=("euler",))
    fails(ValueError, "config.eval.batch_size: 12 must be a positive multiple of the 8",
          batch_size=12)
    fails(FileNotFoundError, "config.eval.x_var_table: .* python -m mcm_jax.eval.calibrate",
          x_var_table=str(tmp_path / "none.npz"))

    student = presets.digits_mcm("steps=4,model=tiny")
    student.teacher.workdir = str(teacher_dir)
    student.eval = default_eval_config()
    student.eval.sweep_steps = (1, 2)
    with pytest.raises(ValueError, match="a student trained for S=4 steps samples with exactly 4"):
        evaluate.evaluate(student, str(teacher_dir))
