"""A run resumes on another mesh: fewer devices, another fsdp split of the parameters."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mcm_jax.config import presets
from mcm_jax.run import checkpointing
from mcm_jax.run.run_setup import RunSetup
from mcm_jax.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(fsdp):
    config = presets.digits_diffusion("model=tiny")
    config.training.batch_size = 16
    config.mesh.fsdp = fsdp
    config.mesh.fsdp_min_size = 1  # shard every divisible array, so the layouts really differ
    return config


@pytest.mark.slow
def test_state_restores_exactly_into_another_mesh(tmp_path):
    eight = train.Trainer(RunSetup.create(_config(fsdp=2)))
    state = eight.init_state()
    state = state.replace(step=state.step + 7)
    ckpt = checkpointing.Checkpointer(str(tmp_path), async_checkpointing=False)
    ckpt.save(7, state, {"epoch": 0})
    ckpt.close()

    four = train.Trainer(RunSetup.create(_config(fsdp=4), devices=jax.devices()[:4]))
    items, meta = checkpointing.Checkpointer(str(tmp_path), read_only=True).restore(
        7, four.abstract_state
    )
    assert (meta["step"], meta["data_state"]) == (7, {"epoch": 0})
    saved = {k: getattr(state, k) for k in items}
    sharded_differently = 0
    for (path, new), old, target in zip(
        jax.tree_util.tree_leaves_with_path(items),
        jax.tree.leaves(saved),
        jax.tree.leaves({k: getattr(four.state_shardings, k) for k in items}),
    ):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old), err_msg=str(path))
        assert new.sharding == target, path
        assert len(new.sharding.device_set) == 4
        sharded_differently += new.sharding.shard_shape(new.shape) != old.sharding.shard_shape(old.shape)
    assert sharded_differently > 0


def _command(workdir, data_dir, num_steps, fsdp):
    return [
        sys.executable, "-m", "mcm_jax.main", "--config=configs/digits_diffusion.py:model=tiny",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        "--config.data.shuffle_buffer=500", "--config.training.batch_size=16",
        "--config.training.sample_every=0", "--config.training.log_every=4",
        f"--config.training.num_steps={num_steps}", "--config.training.checkpoint_every=4",
        f"--config.mesh.fsdp={fsdp}", "--config.mesh.fsdp_min_size=1",
        # Adam's default eps (1e-12) turns rounding noise in near-zero gradients into full-size
        # updates; a larger eps keeps two reduction orders comparable.
        "--config.optimizer.eps=1e-3",
    ]


def _run(command, devices):
    env = dict(
        os.environ,
        XLA_FLAGS=os.environ["XLA_FLAGS"].replace("device_count=8", f"device_count={devices}"),
    )
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


@pytest.mark.slow
def test_eight_devices_resume_on_four_with_another_fsdp(tmp_path, digits_data_dir):
    straight, moved = tmp_path / "straight", tmp_path / "moved"
    _run(_command(straight, digits_data_dir, 8, fsdp=2), devices=8)
    _run(_command(moved, digits_data_dir, 4, fsdp=2), devices=8)
    log = _run(_command(moved, digits_data_dir, 8, fsdp=4), devices=4)
    assert "cannot be re-split" not in log  # one process: the data position carries over exactly

    ckpt_a = checkpointing.Checkpointer(str(straight), read_only=True)
    ckpt_b = checkpointing.Checkpointer(str(moved), read_only=True)
    assert ckpt_a.latest_step() == ckpt_b.latest_step() == 8
    abstract = train.Trainer(RunSetup.create(_config(fsdp=1))).abstract_state
    items_a, meta_a = ckpt_a.restore(8, abstract)
    items_b, meta_b = ckpt_b.restore(8, abstract)
    before, _ = ckpt_a.restore(4, abstract)  # where both runs were when the mesh changed
    assert meta_a["data_state"] == meta_b["data_state"]
    # Another device count sums gradients in another order, so the runs differ by rounding only:
    # far less than the 4 steps moved the parameters.
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    a, b, a0 = flat(items_a["params"]), flat(items_b["params"]), flat(before["params"])
    assert np.linalg.norm(a - b) < 1e-3 * np.linalg.norm(a - a0)
