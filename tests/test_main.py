"""The command line as a user meets it: relative paths work end to end, and every mistake ends in
one `error:` line and a non-zero exit before anything is written, with the traceback on request."""

import os
import re
import subprocess

import pytest

from mcm_jax import paths
from mcm_jax.config import presets
from mcm_jax.run import checkpointing, distributed
from test_train import ROOT, _event_losses, _main_command

TEACHER = "configs/digits_diffusion.py:model=tiny"
STUDENT = "configs/digits_mcm.py:steps=2,model=tiny"


def _run(command, **env):
    """Runs `command` in the repository root; returns (exit status, stderr)."""
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}
    )
    return result.returncode, result.stderr


def _relative(path):
    """`path` relative to the directory the commands run in."""
    return os.path.relpath(path, ROOT)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_relative_paths_train_resume_distil_and_evaluate(tmp_path, digits_data_dir):
    """orbax needs absolute paths: relative --workdir, data_dir and teacher.workdir are resolved."""
    teacher, data_dir = _relative(tmp_path / "runs" / "teacher"), _relative(digits_data_dir)
    for num_steps in (2, 4):  # the second run resumes the first
        command = _main_command(teacher, data_dir, num_steps, 2) + ["--config.training.log_every=1"]
        status, stderr = _run(command)
        assert status == 0, stderr[-3000:]
        start = "starting at step 0" if num_steps == 2 else "resuming from step 2"
        assert f"] {start}\n" in stderr and f"] finished at step {num_steps}\n" in stderr
        assert "checkpoint_manager.py" not in stderr  # orbax's INFO lines are left out
    teacher_dir = tmp_path / "runs" / "teacher"
    assert checkpointing.Checkpointer(str(teacher_dir), read_only=True).all_steps() == [2, 4]
    assert [step for step, _ in _event_losses(teacher_dir)] == [1, 2, 3, 4]  # not restarted

    student = _relative(tmp_path / "runs" / "student")
    command = _main_command(student, data_dir, 1, 1, config=STUDENT)
    status, stderr = _run(command + [f"--config.teacher.workdir={teacher}"])
    assert status == 0, stderr[-3000:]
    student_dir = tmp_path / "runs" / "student"
    assert checkpointing.Checkpointer(str(student_dir), read_only=True).all_steps() == [1]

    command = _main_command(teacher, data_dir, 4, 2) + [
        "--mode=eval", "--config.eval.num_samples=8", "--config.eval.batch_size=8",
        "--config.eval.metric=none", "--config.eval.sweep_steps=(2,)",
        '--config.eval.sweep_methods=("ddim",)', "--config.eval.grid_images=0",
        "--config.eval.name=relative",
    ]
    status, stderr = _run(command)
    assert status == 0, stderr[-3000:]
    setting_dir = teacher_dir / "eval" / "relative" / "step_00000004" / "ddim_2steps"
    assert (setting_dir / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, args, message",
    [
        (TEACHER, ["--config.diffusion.distance=pseudo_huber", "--config.diffusion.huber_c=0"],
         r"config.diffusion: huber_c must be > 0"),
        (TEACHER, ["--workdir="], r"--workdir: empty"),
        (TEACHER, ["--workdir={tmp}/a_file"], r"--workdir: \S+/a_file is a file, not a directory"),
        (TEACHER, ["--workdir={tmp}/a_file/run"],
         r"--workdir: \S+/a_file/run cannot be a directory: \S+/a_file is a file"),
        (STUDENT, ["--config.teacher.workdir={tmp}/a_file"],
         r"config.teacher.workdir: '\S+/a_file' is a file"),
        (STUDENT, ["--config.teacher.workdir={tmp}/student_run"],
         r"config.teacher.workdir: \S+/student_run holds a run with objective 'mcm'; a teacher is"),
        (STUDENT, ["--config.teacher.workdir={tmp}/untrained_teacher"],
         r"config.teacher.workdir: no checkpoints in \S+/untrained_teacher"),
    ],
    ids=["huber_c", "empty_workdir", "workdir_is_a_file", "workdir_under_a_file",
         "teacher_is_a_file", "teacher_is_a_student", "teacher_without_checkpoints"],
)
def test_bad_input_is_refused_before_the_workdir_is_written(
    tmp_path, digits_data_dir, config, args, message
):
    (tmp_path / "a_file").write_text("not a run")
    checkpointing.write_config(str(tmp_path / "student_run"), presets.digits_mcm("model=tiny"))
    teacher = presets.digits_diffusion("model=tiny")
    checkpointing.write_config(str(tmp_path / "untrained_teacher"), teacher)
    workdir = tmp_path / "run"
    command = _main_command(workdir, digits_data_dir, 2, 2, config=config)
    status, stderr = _run(command + [arg.format(tmp=tmp_path) for arg in args])

    assert status == 1, stderr[-3000:]
    (line,) = _error_lines(stderr)
    assert re.match(f"error: {message}", line), line
    assert "Traceback" not in stderr
    assert not workdir.exists()
    assert (tmp_path / "a_file").read_text() == "not a run"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, config, message",
    [
        (["--config.training.bogus_key=3"], TEACHER,
         r"--config.training.bogus_key: unknown field 'bogus_key' in config.training; "
         r"closest: (\w+), (\w+), (\w+)$"),
        (["--config.traning.num_steps=3"], TEACHER,
         r"--config.traning.num_steps: unknown field 'traning' in config; closest: training, "),
        (["--config.ema_decays[0]=0.5"], TEACHER,
         r"--config.ema_decays\[0\]: config.ema_decays is a tuple and cannot be set item by item"),
        ([], "configs/digits_diffusion.py:model=huge",
         r"flag --config=\S+:model=huge: config argument model='huge': expected one of digits, "
         r"tiny"),
        (["--config.model.name=digits"], TEACHER,
         r"--config.model.name: the network is chosen by the config file's argument \(e.g. "
         r"--config=configs/digits_diffusion.py:model=tiny"),
    ],
    ids=["unknown_key", "unknown_group", "tuple_item", "config_argument", "model_name"],
)
def test_command_line_mistakes_name_the_flag(tmp_path, args, config, message):
    workdir = tmp_path / "run"
    command = _main_command(workdir, tmp_path, 2, 2, config=config)
    status, stderr = _run(command + args)

    assert status == 2, stderr[-3000:]
    (line,) = _error_lines(stderr)
    match = re.match(f"error: {message}", line)
    assert match, line
    training_fields = set(presets.digits_diffusion().training)
    assert set(match.groups()) <= training_fields  # the suggestions are real keys
    assert "Traceback" not in stderr
    assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, env",
    [([], {}), (["--verbose"], {}), ([], {"MCM_JAX_VERBOSE": "1"}),
     (["--verbose", "--config.training.bogus_key=3"], {})],
    ids=["message_only", "verbose_flag", "verbose_env", "verbose_command_line_error"],
)
def test_traceback_only_on_request(tmp_path, args, env):
    command = _main_command(tmp_path / "run", tmp_path, 2, 2) + ["--config.training.batch_size=12"]
    status, stderr = _run(command + args, **env)

    assert status != 0
    if args or env:
        assert "Traceback" in stderr and not _error_lines(stderr)
    else:
        assert _error_lines(stderr) == [
            "error: config.training.batch_size: 12 is not divisible by the 8 devices"
        ]
        assert "Traceback" not in stderr


def test_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tmp_path = tmp_path.resolve()  # the directory as the process sees it
    config = presets.digits_mcm("model=tiny")
    config.teacher.workdir = "runs/teacher"
    config.data.data_dir = "gs://bucket/tfds"
    config.eval.x_var_table = "~/table.npz"
    paths.resolve_config_paths(config)
    assert config.teacher.workdir == str(tmp_path / "runs" / "teacher")
    assert config.data.data_dir == "gs://bucket/tfds"
    assert config.eval.x_var_table == os.path.expanduser("~/table.npz")
    assert config.eval.reference_stats == ""  # unset stays unset
    assert paths.resolve("gs://bucket/run") == "gs://bucket/run"
    assert paths.resolve_workdir("run") == str(tmp_path / "run")


@pytest.mark.parametrize(
    "env,processes",
    [
        ({}, 1),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, 1),  # salloc or batch shell: no step
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}, 8),  # srun step
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, 1),
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4"}, 4),
    ],
)
def test_jax_distributed_starts_only_inside_a_launched_step(monkeypatch, env, processes):
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched_processes() == processes
