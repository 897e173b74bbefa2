"""main.py's choice to start jax.distributed from the launcher's environment."""

import pytest

from mcm_jax import main


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
def test_launched_processes(monkeypatch, env, processes):
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main._launched_processes() == processes
