"""Two local processes (jax.distributed over gloo), launched as the README says: they train
together, stop at one agreed step when any of them gets SIGTERM, and resume, also on one process."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mcm_jax.config import presets
from mcm_jax.run import checkpointing
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MAIN = ("-m", "mcm_jax.main")
# mcm_jax.main with a fault injected into one process (see the file).
FAIL_AT_STEP = (os.path.join(ROOT, "tests", "programs", "fail_at_step.py"),)


def _command(workdir, data_dir, num_steps, checkpoint_every, *flags, program=MAIN):
    return [
        sys.executable, *program, "--config=configs/digits_diffusion.py:model=tiny",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        "--config.data.shuffle_buffer=500", "--config.training.batch_size=16",
        "--config.training.log_every=3", "--config.training.sample_every=0",
        f"--config.training.num_steps={num_steps}",
        f"--config.training.checkpoint_every={checkpoint_every}", *flags,
    ]


def _start(
    workdir, data_dir, num_steps, *flags, checkpoint_every=3, processes=2, devices=1, tag="run",
    program=MAIN, extra_env=None,
):
    """Starts the processes of one launch (extra command-line `flags`; `program` instead of
    `-m mcm_jax.main`; environment variables `extra_env`), each with `devices` CPU devices; their logs go
    to <workdir>.<tag>.<process>.log."""
    port = _free_port()
    launched = []
    for process_id in range(processes):
        env = dict(
            os.environ,
            XLA_FLAGS=os.environ["XLA_FLAGS"].replace("device_count=8", f"device_count={devices}"),
            **(extra_env or {}),
        )
        if processes > 1:
            env.update(
                JAX_NUM_PROCESSES=str(processes),
                JAX_PROCESS_ID=str(process_id),
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            )
        log = f"{workdir}.{tag}.{process_id}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                _command(workdir, data_dir, num_steps, checkpoint_every, *flags, program=program),
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        launched.append((process, log))
    return launched


def _finish(launched, timeout=300, returncode=0):
    for process, log in launched:
        process.wait(timeout=timeout)
        assert process.returncode == returncode, open(log).read()[-4000:]
    return [open(log).read() for _, log in launched]


def _params(workdir):
    """(step, params, meta) of the latest checkpoint, restored onto this process's first device."""
    config = presets.digits_diffusion("model=tiny")
    config.training.batch_size = 16
    abstract = train.Trainer(RunSetup.create(config, devices=jax.devices()[:1])).abstract_state
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    step = ckpt.latest_step()
    items, meta = ckpt.restore(step, abstract)
    ckpt.close()
    return step, items["params"], meta


NUM_STEPS = 40


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_data_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    _finish(_start(workdir, digits_data_dir, NUM_STEPS, checkpoint_every=NUM_STEPS))
    return _params(workdir)


def _wait_for_training(workdir, launched, timeout=300):
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / "3").exists():
        for process, log in launched:
            assert process.poll() is None, open(log).read()[-4000:]
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("signalled", [(0, 1), (1,)], ids=["both_1.5s_apart", "one_only"])
def test_sigterm_stops_every_process_at_one_step_and_resumes_exactly(
    tmp_path, digits_data_dir, uninterrupted, signalled
):
    workdir = tmp_path / "run"
    launched = _start(workdir, digits_data_dir, NUM_STEPS, checkpoint_every=3)
    _wait_for_training(workdir, launched)
    for i, process_id in enumerate(signalled):
        if i:
            time.sleep(1.5)
        launched[process_id][0].send_signal(signal.SIGTERM)
    started = time.time()
    logs = _finish(launched, timeout=120)
    assert time.time() - started < 120

    step = checkpointing.Checkpointer(str(workdir), read_only=True).latest_step()
    assert 3 <= step < NUM_STEPS  # the signal really interrupted the run
    for process_id, log in enumerate(logs):  # each process saved that step
        assert f"process {process_id}: preemption notice: saving step {step} " in log, log[-3000:]

    _finish(_start(workdir, digits_data_dir, NUM_STEPS, checkpoint_every=3, tag="resumed"))
    step_a, params_a, meta_a = uninterrupted
    step_b, params_b, meta_b = _params(workdir)
    assert step_a == step_b == NUM_STEPS
    assert meta_a["data_state"] == meta_b["data_state"]
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(a, b)


def test_two_processes_resume_on_one(tmp_path, digits_data_dir):
    """A run checkpointed by 2 processes (2 devices each) finishes on 1 process (2 devices): the
    state restores, and the data stream restarts its epoch under the new split with a warning."""
    workdir = tmp_path / "run"
    logs = _finish(_start(workdir, digits_data_dir, num_steps=6, devices=2))
    assert "[process 1/2]" in logs[1] and "steps_per_sec" not in logs[1]  # one voice
    assert "steps_per_sec" in logs[0]
    assert checkpointing.Checkpointer(str(workdir), read_only=True).all_steps() == [3, 6]

    (log,) = _finish(_start(workdir, digits_data_dir, num_steps=9, processes=1, devices=2, tag="one"))
    assert "written by 2 processes and this run has 1" in log
    step, params, meta = _params(workdir)
    assert step == 9 and meta["data_state"]["process_count"] == 1
    assert meta["data_state"]["examples_seen"] == 9 * 16
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def _error_lines(log):
    return [line for line in log.splitlines() if line.startswith("error:")]


def test_each_process_reports_a_user_error_as_one_line(tmp_path, digits_data_dir):
    launched = _start(tmp_path / "run", digits_data_dir, 6, "--config.training.batch_size=3", devices=2)
    message = "config.training.batch_size: 3 is not divisible by the 4 devices"
    logs = _finish(launched, returncode=1)
    for index, log in enumerate(logs):
        (line,) = _error_lines(log)
        assert line.startswith(f"error: process {index} of 2: ") and line.endswith(message), log
    # Both processes failed the same way; the first to report it is named by the other.
    assert any(_error_lines(log)[0] == f"error: process {i} of 2: {message}" for i, log in enumerate(logs))


def test_two_processes_start_on_an_empty_data_dir(tmp_path):
    """The first run into a new data dir builds the digits once (process 0), and both processes
    read it (TFDS alone let both build it, and one failed renaming its copy)."""
    data_dir = tmp_path / "new_tfds"
    logs = _finish(_start(tmp_path / "run", data_dir, num_steps=3))
    assert sum(log.count("] building the digits data set in ") for log in logs) == 1
    assert [p.name for p in (data_dir / "digits" / "16x16").iterdir() if not p.name.startswith(".")] == ["1.0.0"]


@pytest.mark.parametrize("failing", [1, 0])
def test_an_error_in_one_process_ends_every_process_with_its_message(tmp_path, digits_data_dir, failing):
    """A ValueError in one process at step 3 (the others then wait for it in a collective) ends
    every process within 60 s, each naming the failing process and its error, without the
    coordination service's C++ abort."""
    launched = _start(
        tmp_path / "run", digits_data_dir, 40, checkpoint_every=40, program=FAIL_AT_STEP,
        extra_env={"FAIL_PROCESS": str(failing), "FAIL_STEP": "3"},
    )
    launched[failing][0].wait(timeout=300)
    failed_at = time.time()
    for process, _ in launched:
        process.wait(timeout=60)
    assert time.time() - failed_at < 60
    logs = [open(log).read() for _, log in launched]
    cause = f"process {failing} of 2: injected fault at step 3"
    for index, ((process, _), log) in enumerate(zip(launched, logs)):
        assert process.returncode == 1, log[-4000:]
        expected = cause if index == failing else f"process {index} of 2: stopped because {cause}"
        assert _error_lines(log) == [f"error: {expected}"], log[-4000:]
        for crash in ("Traceback", "Check failure stack trace", "Fatal Python error"):
            assert crash not in log, log[-4000:]
