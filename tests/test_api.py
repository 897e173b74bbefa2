"""mcm_jax.load: docs/api.md's example and examples/sample_from_workdir.py run as written; load
opens local and gs:// workdirs and refuses what it cannot open with one message each."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from etils import epath
from PIL import Image

import mcm_jax
from mcm_jax.config import presets
from mcm_jax.run import checkpointing
from mcm_jax.train import train

FIRST, LAST = presets.RUNLOCAL_CHECKPOINT_EVERY, presets.RUNLOCAL_STEPS  # a runlocal run's steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks(language: str) -> list[str]:
    text = (epath.Path(ROOT) / "docs" / "api.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


@pytest.mark.slow
def test_docs_api_example_and_the_example_script_run_as_written(tmp_path, digits_data_dir):
    """The commands and the Python of docs/api.md, verbatim, in a fresh directory holding only
    configs/ and examples/ (the repository's), with `python` this interpreter."""
    for folder in ("configs", "examples"):
        (tmp_path / folder).symlink_to(os.path.join(ROOT, folder))
    env = {
        **os.environ, "PYTHONPATH": ROOT, "TFDS_DATA_DIR": str(digits_data_dir),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    train_commands, example_command = _blocks("bash")
    (python_code,) = _blocks("python")

    def run(*command):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run("bash", "-ec", train_commands)
    run(sys.executable, "-c", python_code)
    grids = {"teacher_grid": (4, 4), "teacher_steps": (4, 8), "teacher_vs_student": (2, 8)}
    for name, (rows, columns) in grids.items():  # 16 px tiles, 1 px apart
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.size[::-1] == (rows * 17 + 1, columns * 17 + 1), name
    result = run("bash", "-ec", example_command)
    assert "sweep.png: 4 x 8 samples" in result.stdout
    assert (tmp_path / "sweep.png").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digits_data_dir):
    """A digits teacher of the tiny network with runlocal's checkpoints (FIRST and LAST)."""
    config = presets.digits_diffusion("runlocal")
    config.data.data_dir = str(digits_data_dir)
    config.training.sample_every = 0
    workdir = tmp_path_factory.mktemp("api") / "teacher"
    train.train(config, str(workdir))
    return workdir


@pytest.mark.slow
def test_load_samples_with_the_runs_own_sampler_on_shared_noise(tiny_run, gcs_dir):
    run = mcm_jax.load(str(tiny_run))
    assert run.step == LAST and run.config.model.name == "tiny" and run.params is not None
    own = run.own_sampler()
    assert (own.method, own.steps) == (run.config.training.sample_method, 4)  # runlocal's
    grid = run.sample(5)
    assert grid.shape == (5, 16, 16, 1) and grid.dtype == np.uint8
    # Labels cycle through the classes by default; the noise depends on (seed, i) only.
    np.testing.assert_array_equal(run.sample(labels=[0, 1, 2, 3, 4]), grid)
    assert not np.array_equal(run.sample(5, seed=1), grid)
    assert run.sample(2, steps=2, method="ddim").shape == (2, 16, 16, 1)
    x_hat = run.denoise(np.zeros((3, 16, 16, 1)), 0.3, labels=[1, 2, 3], guidance=0.5)
    assert x_hat.shape == (3, 16, 16, 1) and np.isfinite(np.asarray(x_hat)).all()

    earlier = mcm_jax.load(str(tiny_run), step=FIRST)
    assert earlier.step == FIRST and not np.array_equal(earlier.sample(5), grid)

    # The same run on gs:// (the GCS emulator) gives the same samples.
    for path in tiny_run.rglob("*"):
        if path.is_file():
            target = gcs_dir / path.relative_to(tiny_run)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    remote = mcm_jax.load(str(gcs_dir))
    assert remote.step == LAST
    np.testing.assert_array_equal(remote.sample(5), grid)

    for call, message in (
        (lambda: run.sample(), "give exactly one of num, labels, prompts"),
        (lambda: run.sample(labels=[10, 11]), r"labels: need 2 labels in 0..9"),
        (lambda: run.sample(prompts=["a cat"]), "this run is not text-to-image"),
        (lambda: run.sample(2, method="euler"), "method: 'euler' is not one of"),
    ):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.slow
def test_load_refuses_a_missing_step_and_an_ema_index_out_of_range(tiny_run):
    with pytest.raises(ValueError) as error:
        mcm_jax.load(str(tiny_run), step=FIRST - 1)
    assert str(error.value) == (
        f"mcm_jax.load: checkpoint step {FIRST - 1} does not exist in {tiny_run}; "
        f"available: [{FIRST}, {LAST}]"
    )
    with pytest.raises(ValueError) as error:
        mcm_jax.load(str(tiny_run), ema_index=1)
    assert str(error.value) == (
        f"mcm_jax.load: ema_index=1 but the run in {tiny_run} has 1 EMA parameter set(s) "
        "(ema_decays=(0.999,)): use 0..0"
    )


def test_load_refuses_a_directory_without_a_run_or_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        mcm_jax.load(str(tmp_path))
    assert str(error.value) == (
        f"mcm_jax.load: no config.json in {tmp_path}: is it the workdir of a training run?"
    )
    checkpointing.write_config(str(tmp_path), presets.digits_diffusion("runlocal"))
    with pytest.raises(FileNotFoundError) as error:
        mcm_jax.load(str(tmp_path))
    assert str(error.value) == f"mcm_jax.load: no checkpoints in {tmp_path}/checkpoints"
