"""Every command's user mistakes end in one `error:` line naming the flag, exit status 2 (command
line) or 1 (run), with the traceback only on request (mcm_jax.run.cli.run)."""

import os
import subprocess
import sys

import pytest
from absl import app

from mcm_jax import paths
from mcm_jax.data import prepare
from test_train import ROOT

MEMORY = ["mcm_jax.train.memory", "--config=configs/digits_mcm.py:model=tiny", "--remat=none"]


def test_a_directory_flag_is_refused_when_it_is_or_lies_under_a_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert paths.resolve_directory(str(tmp_path / "new" / "dir"), "out") == str(tmp_path / "new/dir")
    with pytest.raises(NotADirectoryError, match="--out: .*a_file is a file, not a directory"):
        paths.resolve_directory(str(tmp_path / "a_file"), "out")
    with pytest.raises(NotADirectoryError, match="--out: .*a_file/sub cannot be a directory"):
        paths.resolve_directory(str(tmp_path / "a_file" / "sub"), "out")
    with pytest.raises(ValueError, match="--out: empty"):
        paths.resolve_directory("", "out")


@pytest.mark.parametrize(
    "name, error, message",
    [("digitz", app.UsageError, "digitz: not a TFDS data set; closest: digits"),
     ("digits/17x17", app.UsageError, "digits/17x17: not a TFDS data set; closest: digits/16x16"),
     ("imagenet2012", FileNotFoundError,
      "imagenet2012 needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar .* in .*manual")],
)
def test_prepare_refuses_unknown_names_and_missing_imagenet_files(tmp_path, name, error, message):
    with pytest.raises(error, match=message):
        prepare.main(["prepare", name, f"--data_dir={tmp_path}"])
    assert not (tmp_path / "downloads").exists()


def test_prepare_refuses_a_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="--data_dir: .*a_file is a file"):
        prepare.main(["prepare", "digits/8x8", f"--data_dir={tmp_path / 'a_file'}"])


def _run(args, **env):
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    return result.returncode, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, status, message",
    [
        (["mcm_jax.experiments.main_job", "--workdir={tmp}/a_file"], 1,
         "--workdir: {tmp}/a_file is a file, not a directory"),
        (["mcm_jax.experiments.main_job", "--workdir={tmp}/w", "--teacher_steps=0"], 2,
         "flag --teacher_steps=0: 0 is not a positive integer (see --helpshort)"),
        (["mcm_jax.experiments.text_digits", "--workdir={tmp}/w", "--out={tmp}/a_file", "--quick"], 1,
         "--out: {tmp}/a_file is a file, not a directory"),
        ([*MEMORY, "--chip=v9"], 2, "--chip: unknown chip 'v9'; known: v4, "),
        ([*MEMORY, "--devices=0"], 2, "flag --devices=0: 0 is not a positive integer"),
        ([*MEMORY, "--config.training.bach_size=8"], 2,
         "--config.training.bach_size: unknown field 'bach_size' in config.training; closest: "
         "batch_size"),
        (["mcm_jax.eval.fid.reference", "--config=configs/digits_mcm.py", "--weights={tmp}/no.npz",
          "--output={tmp}/o.npz"], 1,
         "--weights: FID Inception weights not found at {tmp}/no.npz"),
        (["mcm_jax.data.prepare", "digitz", "--data_dir={tmp}"], 2,
         "digitz: not a TFDS data set; closest: digits"),
    ],
    ids=["workdir_file", "teacher_steps", "out_file", "chip", "devices", "config_key", "weights",
         "tfds_name"],
)
def test_command_mistakes_end_in_one_error_line(tmp_path, args, status, message):
    (tmp_path / "a_file").write_text("x")
    code, stderr = _run([arg.format(tmp=tmp_path) for arg in args])

    assert code == status, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {message.format(tmp=tmp_path)}"), line
    assert "Traceback" not in stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, env", [(["--verbose"], {}), ([], {"MCM_JAX_VERBOSE": "1"})],
                         ids=["flag", "env"])
def test_traceback_on_request(tmp_path, args, env):
    (tmp_path / "a_file").write_text("x")
    code, stderr = _run(["mcm_jax.experiments.main_job", f"--workdir={tmp_path / 'a_file'}", *args], **env)

    assert code == 1 and "Traceback" in stderr and "NotADirectoryError: --workdir:" in stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, message",
    [("def get_config(:\n    pass\n", "line 1: invalid syntax"),
     ("import ml_collections\n", "the file defines no get_config; a config file defines "
      "get_config(arg) that returns the config (see configs/)"),
     ("def get_config(arg=None):\n    return undefined_name\n",
      "line 2: NameError: name 'undefined_name' is not defined")],
    ids=["syntax_error", "no_get_config", "error_in_get_config"],
)
def test_a_config_file_that_does_not_load_is_one_error_line(tmp_path, source, message):
    config_file = tmp_path / "my_config.py"
    config_file.write_text(source)
    code, stderr = _run(["mcm_jax.main", f"--config={config_file}", f"--workdir={tmp_path}/w"])

    assert code == 2, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert line == f"error: --config={config_file}: {message}"
    assert "Traceback" not in stderr
    assert not (tmp_path / "w").exists()
