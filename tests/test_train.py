"""The training loop end to end on digits: learning, exact resume after SIGKILL, SIGTERM, bad configs."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mcm_jax.config import presets
from mcm_jax.run import checkpointing
from mcm_jax.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _teacher_config(data_dir, **training):
    config = presets.digits_diffusion("model=tiny")
    config.data.data_dir = str(data_dir)
    config.data.shuffle_buffer = 500
    config.training.batch_size = 32
    config.training.log_every = 10
    config.training.sample_every = 0
    config.training.update(training)
    return config


def _overrides(config, keys):
    """Command-line flags that reproduce `config`'s values for the given dotted keys."""
    flags = []
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        flags.append(f"--config.{key}={value}")
    return flags


def _main_command(workdir, data_dir, num_steps, checkpoint_every,
                  config="configs/digits_diffusion.py:model=tiny"):
    return [
        sys.executable, "-m", "mcm_jax.main", f"--config={config}", f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}", "--config.data.shuffle_buffer=500",
        "--config.training.batch_size=32", "--config.training.log_every=10",
        "--config.training.sample_every=0", f"--config.training.num_steps={num_steps}",
        f"--config.training.checkpoint_every={checkpoint_every}",
    ]


def _final_params(workdir):
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    step = ckpt.latest_step()
    restored = ckpt.manager.restore(
        step,
        args=ocp.args.Composite(params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
    ckpt.close()
    return step, restored["params"], restored["meta"]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path, digits_data_dir):
    """2N steps straight equal N steps, SIGKILL at an arbitrary moment, and a restart to 2N."""
    steps, every = 40, 5
    straight = tmp_path / "straight"
    # Both runs in fresh processes: a test worker's process carries global state that earlier
    # tests set (keras, TensorFlow seeds), which the job's own processes never have.
    subprocess.run(_main_command(straight, digits_data_dir, steps, every), cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    killed = tmp_path / "killed"
    command = _main_command(killed, digits_data_dir, steps, every)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / str(every)).exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = checkpointing.Checkpointer(str(killed), read_only=True).latest_step()
    assert interrupted_at < steps  # the kill really interrupted the run

    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step_a, params_a, meta_a = _final_params(str(straight))
    step_b, params_b, meta_b = _final_params(str(killed))
    assert step_a == step_b == steps
    assert meta_a["data_state"] == meta_b["data_state"]
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, digits_data_dir):
    workdir = tmp_path / "run"
    command = _main_command(workdir, digits_data_dir, 100_000, 100_000)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list(workdir.glob("events.out.tfevents.*")):  # the loop has started
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    step = checkpointing.Checkpointer(str(workdir), read_only=True).latest_step()
    assert step is not None and 0 < step < 100_000


@pytest.mark.slow
def test_digits_teacher_learns_and_cd_student_trains(tmp_path, digits_data_dir):
    """The diffusion loss falls well below its start; a CD student from that teacher trains."""
    teacher_dir = tmp_path / "teacher"
    config = _teacher_config(digits_data_dir, num_steps=250, checkpoint_every=250, log_every=10)
    losses = _logged_losses(train.train, config, teacher_dir)
    # Measured on this machine: 1.0 over steps 1-10 (warm-up: barely trained), 0.37 at step 200.
    assert losses[-1] < 0.5 * losses[0], losses

    student = presets.digits_mcm("steps=2,method=cd,model=tiny")
    student.data.data_dir = str(digits_data_dir)
    student.data.shuffle_buffer = 500
    student.teacher.workdir = str(teacher_dir)
    student.training.update(
        batch_size=32, num_steps=10, log_every=5, checkpoint_every=10, sample_every=10, sample_images=4
    )
    student_losses = _logged_losses(train.train, student, tmp_path / "student")
    assert len(student_losses) == 2 and all(np.isfinite(student_losses))
    assert (tmp_path / "student" / "samples_00000010.png").exists()


def _logged_losses(run, config, workdir):
    """Runs training and returns the 'loss' scalars it wrote, in step order."""
    run(config, str(workdir))
    return [loss for _, loss in _event_losses(workdir)]


def _event_losses(workdir):
    """(step, loss) of every 'loss' scalar in the workdir's event files, in step order."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    found = []
    for path in sorted(map(str, workdir.glob("events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            found += [
                (event.step, float(tf.make_ndarray(v.tensor)))
                for v in event.summary.value
                if v.tag == "loss"
            ]
    return sorted(found)


def _bad(config, **changes):
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"training.batch_size": 12}, "config.training.batch_size: 12 is not divisible by the 8 devices"),
        ({"objective": "gan"}, "config.objective: 'gan' is not one of"),
        ({"mcm.student_steps": 0, "objective": "mcm", "teacher.workdir": "x"}, "config.mcm: student_steps"),
        ({"objective": "mcm", "teacher.workdir": ""}, "config.teacher.workdir"),
        ({"mesh.fsdp": 3}, "config.mesh.fsdp"),
        ({"data.resolution": 18}, "config.data.resolution: 18 must be a positive multiple of 4"),
    ],
)
def test_bad_configs_fail_before_compiling(tmp_path, changes, message):
    config = _bad(presets.digits_diffusion("model=tiny"), **changes)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.train(config, str(tmp_path))


def test_missing_or_mismatched_teacher_fails_naming_the_field(tmp_path, digits_data_dir):
    student = presets.digits_mcm("steps=2,model=tiny")
    student.teacher.workdir = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.teacher.workdir: .* does not exist"):
        train.train(student, str(tmp_path / "student"))

    teacher = presets.digits_diffusion("model=digits")  # a different network
    teacher_dir = tmp_path / "teacher"
    checkpointing.write_config(str(teacher_dir), teacher)
    student.teacher.workdir = str(teacher_dir)
    with pytest.raises(ValueError, match=r"config.model.\w+: the student has"):
        train.train(student, str(tmp_path / "student"))


@pytest.mark.slow
def test_nonfinite_loss_stops_training_and_keeps_good_checkpoints(tmp_path, digits_data_dir):
    config = _teacher_config(digits_data_dir, num_steps=20, checkpoint_every=1, log_every=1)
    config.optimizer.learning_rate = 1e38  # the first real update blows the parameters up
    config.optimizer.warmup_steps = 4
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d+"):
        train.train(config, str(tmp_path))
    ckpt = checkpointing.Checkpointer(str(tmp_path), read_only=True)
    steps = ckpt.all_steps()
    assert steps and max(steps) < 20
    for step in steps:
        restored = ckpt.manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore())
        )
        assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(restored["params"]))


@pytest.mark.slow
def test_the_config_is_validated_once_per_job(tmp_path, digits_data_dir, monkeypatch):
    from mcm_jax.config import config_lib
    from mcm_jax.eval import evaluate

    calls = []
    validate = config_lib.validate
    monkeypatch.setattr(config_lib, "validate", lambda *a, **k: calls.append(1) or validate(*a, **k))
    config = _teacher_config(digits_data_dir, num_steps=2, checkpoint_every=2)
    config.eval.update(num_samples=8, batch_size=8, metric="none", sweep_steps=(2,),
                       sweep_methods=("ddim",))
    train.train(config, str(tmp_path))
    assert len(calls) == 1
    evaluate.evaluate(config, str(tmp_path))
    assert len(calls) == 2


def test_a_teacher_written_before_new_fields_existed_still_teaches(tmp_path):
    """config.json of an older run lacks fields added since (data.class_conditional): they take
    their defaults, which are what the older code did; a field since removed (model.text_width,
    now the data's) is ignored."""
    import json

    from mcm_jax.config import presets
    from mcm_jax.run import checkpointing, run_setup

    teacher = presets.digits_diffusion("model=tiny")
    saved = json.loads(teacher.to_json_best_effort())
    del saved["data"]["class_conditional"]
    saved["model"]["text_width"] = 0
    (tmp_path / checkpointing.CONFIG_FILE).write_text(json.dumps(saved))
    restored = run_setup.saved_config(str(tmp_path))
    assert restored.data.class_conditional is True
    student = presets.digits_mcm("steps=2,method=cd,model=tiny")
    student.teacher.workdir = str(tmp_path)
    assert run_setup.check_teacher_matches(student).model.name == "tiny"
