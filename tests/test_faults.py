"""Faults a run meets: a damaged latest checkpoint, a workdir resumed with another run's config, a
run that diverges before its first save, a full disk, a read-only workdir, a damaged data set, a
damaged config.json. Each is met where a user meets it: on the command line."""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from mcm_jax.config import presets
from mcm_jax.run import checkpointing, resume_config
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = "--config=configs/digits_diffusion.py:model=tiny"
STUDENT = "--config=configs/digits_mcm.py:steps=2,method=cd,model=tiny"


def _command(config_flag, workdir, data_dir, num_steps, *extra):
    return [
        sys.executable, "-m", "mcm_jax.main", config_flag, f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}", "--config.data.shuffle_buffer=500",
        "--config.training.batch_size=16", "--config.training.log_every=3",
        "--config.training.sample_every=0", f"--config.training.num_steps={num_steps}",
        "--config.training.checkpoint_every=3", *extra,
    ]


def _run(command, check=True):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _tree_digest(directory):
    """{relative path: sha256} of every file under `directory`."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory, digits_data_dir):
    """A teacher run with checkpoints at steps 3 and 6."""
    workdir = tmp_path_factory.mktemp("six") / "run"
    _run(_command(TEACHER, workdir, digits_data_dir, 6))
    assert checkpointing.Checkpointer(str(workdir), read_only=True).all_steps() == [3, 6]
    return workdir


def _largest_params_file(workdir, step):
    """The data file that orbax's OCDBT store reads the step's parameter arrays from."""
    data = workdir / "checkpoints" / str(step) / "params" / "d"
    return max(data.iterdir(), key=lambda p: p.stat().st_size)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_64_bytes(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        data = f.read(64)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_truncate, os.remove, _flip_64_bytes], ids=["truncated", "deleted", "bit_flipped"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_step(
    tmp_path, digits_data_dir, six_step_run, damage
):
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    damage(_largest_params_file(workdir, 6))

    result = _run(_command(TEACHER, workdir, digits_data_dir, 9))
    assert "checkpoint step 6 in" in result.stderr and "is damaged" in result.stderr
    assert "resuming from step 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert (workdir / "damaged_checkpoints" / "6" / "params").is_dir()  # kept, not deleted
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    assert ckpt.all_steps() == [3, 6, 9]  # steps 4-6 were trained again, then 7-9


def _corrupt_recorded_checksum(workdir, step):
    """Changes one recorded checksum: what arrays whose values changed without the file format
    noticing look like to the restore."""
    path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    meta["checksums"]["params"][0] ^= 1
    path.write_text(json.dumps(meta))


@pytest.mark.slow
def test_no_restorable_step_is_one_message_and_moves_nothing(tmp_path, six_step_run):
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    _flip_64_bytes(_largest_params_file(workdir, 6))
    _corrupt_recorded_checksum(workdir, 3)
    abstract = train.Trainer(RunSetup.create(_config())).abstract_state
    ckpt = checkpointing.Checkpointer(str(workdir))
    with pytest.raises(checkpointing.DamagedCheckpointError) as error:
        ckpt.restore_latest(abstract)
    message = str(error.value)
    assert "no checkpoint in" in message and "can be restored" in message
    assert "step 6: step 6 could not be read" in message
    assert "step 3: step 3: 1 of the" in message and "checksum mismatch" in message
    assert ckpt.all_steps() == [3, 6] and not (workdir / "damaged_checkpoints").exists()


def _config():
    config = presets.digits_diffusion("model=tiny")
    config.training.batch_size = 16
    return config


@pytest.mark.slow
def test_teacher_workdir_rerun_as_a_student_is_refused_and_left_untouched(
    tmp_path, digits_data_dir, six_step_run
):
    teacher = tmp_path / "teacher"
    shutil.copytree(six_step_run, teacher)
    before = _tree_digest(teacher)
    result = _run(
        _command(STUDENT, teacher, digits_data_dir, 9, f"--config.teacher.workdir={teacher}"),
        check=False,
    )
    assert result.returncode != 0
    assert "holds a run with another config" in result.stderr
    assert "config.objective: the run has 'diffusion', this command has 'mcm'" in result.stderr
    assert _tree_digest(teacher) == before


def test_allowed_changes_on_resume_are_recorded():
    saved = json.loads(_config().to_json_best_effort())
    new = _config()
    new.training.num_steps, new.mesh.fsdp, new.seed = 50, 2, 1
    new.training.batch_size = 32
    new.data.autotune = not new.data.autotune  # how fast the data is read, not which data
    forbidden, allowed = resume_config.config_changes(saved, new)
    assert forbidden == {"seed": (0, 1)}
    assert allowed == {
        "data.autotune": (saved["data"]["autotune"], new.data.autotune),
        "mesh.fsdp": (1, 2), "training.batch_size": (16, 32),
        "training.num_steps": (saved["training"]["num_steps"], 50),
    }
    new.seed = 0
    new.model.embedding_width = 999  # a field the saved run lacks entirely is not compared
    del saved["model"]["embedding_width"]
    assert resume_config.config_changes(saved, new)[0] == {}


def test_a_config_json_with_the_removed_duplicate_fields_still_resumes(tmp_path):
    """Runs written before model_name and model.resolution/channels/num_classes were removed (the
    network's name is model.name, the rest the data's) keep them in config.json; a resume with
    today's config is not refused for them."""
    config = _config()
    saved = json.loads(config.to_json_best_effort())
    saved["model_name"] = config.model.name
    saved["model"].update(resolution=16, channels=1, num_classes=10)
    assert resume_config.config_changes(saved, config) == ({}, {})
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)  # a run with a saved step
    (tmp_path / "config.json").write_text(json.dumps(saved))
    resume_config.claim_workdir(str(tmp_path), config)  # no error
    assert "model_name" not in json.loads((tmp_path / "config.json").read_text())


@pytest.mark.slow
def test_resume_with_more_steps_and_another_batch_records_the_change(
    tmp_path, digits_data_dir, six_step_run
):
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    _run(_command(TEACHER, workdir, digits_data_dir, 9, "--config.training.batch_size=32"))
    (record,) = [json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()]
    assert record["resumed_after_step"] == 6
    assert record["changes"] == {"training.batch_size": [16, 32], "training.num_steps": [6, 9]}
    assert checkpointing.read_config(str(workdir)).training.batch_size == 32


@pytest.mark.slow
def test_divergence_before_the_first_save_says_so(tmp_path, digits_data_dir):
    config = _config()
    config.data.data_dir = str(digits_data_dir)
    config.data.shuffle_buffer = 500
    config.training.update(num_steps=20, checkpoint_every=100, log_every=1, sample_every=0)
    config.optimizer.learning_rate = 1e38  # the first real update blows the parameters up
    config.optimizer.warmup_steps = 4
    with pytest.raises(FloatingPointError, match="diverged before its first save"):
        train.train(config, str(tmp_path))


def _one_error_line(result):
    """The one `error:` line of a run that ended in a user error, with no traceback."""
    assert result.returncode == 1, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return errors[0]


def _mount(*args):
    """Runs mount(8); skips the test where this machine cannot mount (not root, no
    CAP_SYS_ADMIN), which it needs to make a small or read-only file system for real."""
    result = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a test file system here (needs root): {result.stderr.strip()}")


@contextlib.contextmanager
def _mounted(*args, at):
    _mount(*args, at)
    try:
        yield at
    finally:
        subprocess.run(["umount", str(at)], check=True)


@pytest.mark.slow
def test_full_disk_stops_training_in_one_line_and_the_rerun_resumes(
    tmp_path, digits_data_dir, six_step_run
):
    """A tmpfs as small as the run plus half a checkpoint: the save of step 9 finds the disk
    full. Steps 3 and 6 stay intact; with the disk grown, the same command resumes from 6."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with _mounted("-t", "tmpfs", "-o", "size=64m", "tmpfs", at=disk):
        workdir = disk / "run"
        shutil.copytree(six_step_run, workdir)
        saved = _tree_digest(workdir / "checkpoints")
        half_a_step = sum(os.path.getsize(p) for p in (workdir / "checkpoints" / "6").rglob("*")
                          if p.is_file()) // 2
        _mount("-o", f"remount,size={shutil.disk_usage(disk).used + half_a_step}", disk)

        line = _one_error_line(_run(_command(TEACHER, workdir, digits_data_dir, 9), check=False))
        assert line.startswith(f"error: training stopped: no space left on the disk of {workdir} "
                               f"({disk}: "), line
        assert line.endswith("rerun the same command: it resumes from the last checkpoint, step 6")
        assert all(_tree_digest(workdir / "checkpoints").get(f) == d for f, d in saved.items())

        _mount("-o", "remount,size=64m", disk)
        _run(_command(TEACHER, workdir, digits_data_dir, 9))
        assert checkpointing.Checkpointer(str(workdir), read_only=True).all_steps() == [3, 6, 9]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_read_only_workdir_is_refused_in_one_line(tmp_path, digits_data_dir, six_step_run, mode):
    """Tests run as root (in CI too), whom file permissions do not stop, so a chmod'ed workdir
    would be written anyway: the workdir is made read-only the way a read-only volume is, by a
    read-only bind mount of itself, which refuses every user (EROFS)."""
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    eval_flags = ["--mode=eval", "--config.eval.num_samples=16", "--config.eval.batch_size=16"]
    with _mounted("--bind", workdir, at=workdir):
        _mount("-o", "remount,bind,ro", workdir)
        result = _run(_command(TEACHER, workdir, digits_data_dir, 6,
                               *(eval_flags if mode == "eval" else [])), check=False)
    line = _one_error_line(result)
    expected = f"error: --workdir: cannot write into {workdir}: it is on a read-only file system"
    if mode == "eval":
        expected += (f"; the eval job writes its samples and scores into "
                     f"{workdir}/eval/n16_seed0_ema0")
    assert line == expected


@pytest.mark.slow
def test_a_cut_record_file_is_named_with_how_to_prepare_the_data_again(
    tmp_path, digits_data_dir, six_step_run
):
    data_dir = tmp_path / "tfds"
    shutil.copytree(digits_data_dir, data_dir)
    prepared = data_dir / "digits" / "16x16" / "1.0.0"
    (shard,) = prepared.glob("digits-train.tfrecord-*")
    with open(shard, "r+b") as f:  # a quarter left: fewer records than the shuffle buffer holds
        f.truncate(os.path.getsize(shard) // 4)
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    saved = _tree_digest(workdir / "checkpoints")

    line = _one_error_line(_run(_command(TEACHER, workdir, data_dir, 9), check=False))
    assert line.startswith(f"error: data.data_dir: the record file {shard} is damaged (cut short: "
                           "its record at byte "), line
    assert line.endswith(f"prepare the data set again: delete {prepared}; the next run builds it "
                         "again"), line
    assert _tree_digest(workdir / "checkpoints") == saved

    shutil.rmtree(prepared)  # as the message says
    _run(_command(TEACHER, workdir, data_dir, 9))
    assert checkpointing.Checkpointer(str(workdir), read_only=True).all_steps() == [3, 6, 9]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_damaged_config_json_is_named(tmp_path, digits_data_dir, six_step_run, mode):
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    (workdir / "config.json").write_text('{"seed": 0,')
    before = _tree_digest(workdir)
    extra = ["--mode=eval", "--config.eval.num_samples=16"] if mode == "eval" else []

    result = _run(_command(TEACHER, workdir, digits_data_dir, 9, *extra), check=False)
    line = _one_error_line(result)
    assert line.startswith(f"error: {workdir}/config.json is damaged (not valid JSON: "), line
    assert _tree_digest(workdir) == before
