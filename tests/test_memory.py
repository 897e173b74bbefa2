"""mcm_jax.train.memory: exact per-device state bytes, activations per remat policy, the report."""

import math
import os
import subprocess
import sys

import jax
import pytest

from mcm_jax.config import presets
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import memory, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(fsdp: int = 2):
    config = presets.digits_mcm("steps=2,method=cd,model=tiny")
    config.teacher.workdir = "unused"
    config.training.batch_size = 32
    config.mesh.fsdp = fsdp
    config.mesh.fsdp_min_size = 1024  # so that the tiny network has sharded parameters
    return config


def _shard_bytes(tree) -> int:
    """Bytes of one device's shards, from the shardings JAX itself would use."""
    return sum(
        math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(tree)
    )


@pytest.mark.parametrize("fsdp", [1, 2, 8])
def test_state_bytes_equal_the_trainers_shards(fsdp):
    config = _config(fsdp)
    trainer = train.Trainer(RunSetup.create(config))  # 8 CPU devices: the mesh the bytes are planned for
    state = memory.state_bytes(config)
    abstract = trainer.abstract_state
    assert state.params == _shard_bytes(abstract.params)
    assert state.optimizer == _shard_bytes(abstract.opt_state)
    assert state.ema == _shard_bytes(abstract.ema_params)
    assert state.teacher == _shard_bytes(trainer.abstract_teacher_params)
    if fsdp > 1:
        unsharded = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract.params))
        assert state.params < unsharded  # some parameters are split


@pytest.mark.slow
def test_activations_grow_linearly_with_the_batch_and_shrink_with_remat():
    config = _config()
    per_example = {}
    for remat in ("none", "full"):
        config.model.remat = remat
        one, two, four = (memory.residual_bytes(config, b) for b in (1, 2, 4))
        assert four - two == 2 * (two - one) > 0
        per_example[remat] = memory.activation_bytes_per_example(config)
    assert per_example["full"] < per_example["none"]


@pytest.mark.slow
def test_report_command_prints_every_item_and_the_verdict():
    command = [
        sys.executable, "-m", "mcm_jax.train.memory", "--config=configs/digits_mcm.py:model=tiny",
        "--devices=4", "--chip=v5e", "--config.mesh.fsdp=2", "--remat=none,full",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "4 devices, mesh data 2 x fsdp 2, batch 32 per device; per device:"
    for item in ("parameters", "optimizer", "EMA", "teacher", "gradients"):
        assert any(line.split()[0] == item for line in lines[1:6]), item
    remat_lines = [line for line in lines if line.lstrip().startswith("remat ")]
    assert [line.split()[1] for line in remat_lines] == ["none", "full"]
    assert all("of 16.00 GiB (v5e)  fits" in line for line in remat_lines)


def test_bad_mesh_fails_naming_the_field():
    config = _config(fsdp=3)
    with pytest.raises(ValueError, match="config.mesh.fsdp"):
        memory.report(config, num_devices=8)
