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
        ]
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
    for p in processes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-4000:]


def test_two_processes_train_checkpoint_and_resume(tmp_path, digits_data_dir):
    workdir = tmp_path / "run"
    _train_together(workdir, digits_data_dir, num_steps=6)
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    assert ckpt.all_steps() == [3, 6]
    _train_together(workdir, digits_data_dir, num_steps=9)  # resumes at 6
    assert checkpointing.Checkpointer(str(workdir), read_only=True).all_steps() == [3, 6, 9]
