"""Two local processes (jax.distributed over gloo) train together, checkpoint, and resume."""

import os
import socket
import subprocess
import sys

from mcm_jax import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_together(workdir, data_dir, num_steps):
    for returncode, stderr in _launch_together(workdir, data_dir, num_steps):
        assert returncode == 0, stderr[-4000:]


def _launch_together(workdir, data_dir, num_steps, *flags):
    """Runs the two processes of one job with extra `flags`; returns their (exit status, stderr)."""
    port = _free_port()
    processes = []
    for process_id in range(2):
        env = dict(
            os.environ,
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id),
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
                "device_count=8", "device_count=2"
            ),
        )
        command = [
            sys.executable, "-m", "mcm_jax.main", "--config=configs/digits_diffusion.py:model=tiny",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            "--config.data.shuffle_buffer=500", "--config.training.batch_size=16",
            "--config.training.log_every=3", "--config.training.sample_every=0",
            f"--config.training.num_steps={num_steps}", "--config.training.checkpoint_every=3",
            *flags,
        ]
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
    stderrs = [p.communicate(timeout=600)[1].decode() for p in processes]
    return [(p.returncode, stderr) for p, stderr in zip(processes, stderrs)]


def test_two_processes_train_checkpoint_and_resume(tmp_path, digits_data_dir):
    workdir = tmp_path / "run"
    _train_together(workdir, digits_data_dir, num_steps=6)
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    assert ckpt.all_steps() == [3, 6]
    _train_together(workdir, digits_data_dir, num_steps=9)  # resumes at 6
    assert checkpointing.Checkpointer(str(workdir), read_only=True).all_steps() == [3, 6, 9]


def test_each_process_reports_a_user_error_as_one_line(tmp_path, digits_data_dir):
    results = _launch_together(
        tmp_path / "run", digits_data_dir, 6, "--config.training.batch_size=3"
    )
    for index, (returncode, stderr) in enumerate(results):
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert returncode == 1 and errors == [
            f"error: process {index} of 2: config.training.batch_size: 3 is not divisible by the "
            "4 devices"
        ], stderr[-4000:]
