"""Checkpoints with orbax: the whole train state, the data position and the resolved config.

Items are saved separately (params, opt_state, ema_params, meta) so a distillation run can restore
only a teacher's EMA parameters. Saves are asynchronous and atomic (orbax writes a temporary
directory and renames it), so a job killed at any moment restarts from the last complete step.
Every process calls every method; orbax coordinates the writes.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
ITEMS = ("params", "opt_state", "ema_params", "meta")


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the given shardings: the restore target of `tree`'s layout."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )


class Checkpointer:
    """An orbax CheckpointManager over `<workdir>/checkpoints` that keeps the last N and every K-th."""

    def __init__(
        self,
        workdir: str,
        *,
        keep: int = 3,
        keep_period: int = 0,
        async_checkpointing: bool = True,
        read_only: bool = False,
    ):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_checkpointing,
            create=not read_only,
            read_only=read_only,
        )
        self.directory = epath.Path(workdir) / CHECKPOINT_DIR
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Saves (asynchronously) the train state and the data position at `step`."""
        meta = {"step": int(step), "data_state": data_state}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                ema_params=ocp.args.StandardSave(state.ema_params),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[dict[str, Any], dict]:
        """Restores every item of `step` into the layout of `abstract_state`; returns (items, meta)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
                ema_params=ocp.args.StandardRestore(abstract_state.ema_params),
                meta=ocp.args.JsonRestore(),
            ),
        )
        items = {name: restored[name] for name in ("params", "opt_state", "ema_params")}
        return items, restored["meta"]

    def restore_ema_params(self, step: int, abstract_ema_params: Any) -> Any:
        """Restores only the EMA parameters of `step` (for a teacher)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(ema_params=ocp.args.StandardRestore(abstract_ema_params)),
        )
        return restored["ema_params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved config as JSON into the workdir (process 0 only; local or gs://)."""
    if jax.process_index() != 0:
        return
    directory = epath.Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote into its workdir."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir}: is it the workdir of a training run?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def resolve_step(checkpointer: Checkpointer, step: int, workdir: str) -> int:
    """`step`, or the latest one for -1; fails clearly when it does not exist."""
    steps = checkpointer.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {workdir}/{CHECKPOINT_DIR}")
    if step == -1:
        return max(steps)
    if step not in steps:
        raise ValueError(f"checkpoint step {step} does not exist in {workdir}; available: {sorted(steps)}")
    return step
