"""Checkpoints with orbax: the whole train state, the data position and the resolved config.

Items are saved separately (params, opt_state, ema_params, meta, and progressive distillation's
round teacher) so a distillation run can restore only a teacher's EMA parameters. Saves are
asynchronous and atomic (orbax writes a temporary directory and renames it), so a job killed at
any moment restarts from the last complete step.
Every process calls every method; orbax coordinates the writes.

Each step's meta also holds a checksum of every saved array, computed from the values on the
devices when the step is saved. A restore recomputes them, so damaged files (truncated, missing,
flipped bits) are found even where the file format itself does not notice; `restore_latest`
then falls back to the newest step that restores intact, and moves the damaged ones aside.

Parameters are saved in the layout of the network that trains (models/stacking.py: scanned or
unrolled blocks). A restore into the other layout converts at restore: the step is read in the
layout it was written in, checked, then stacked or unstacked into the target's shardings.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from mcm_jax import files
from mcm_jax.models import stacking

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"
CONFIG_FILE = "config.json"
ARRAY_ITEMS = ("params", "opt_state", "ema_params")
OPTIONAL_ITEMS = ("teacher",)  # progressive distillation's round teacher, where the state has one
ITEMS = ARRAY_ITEMS + OPTIONAL_ITEMS + ("meta",)


def _array_items(state: Any) -> dict[str, Any]:
    """The state's array items that it has (a state's `teacher` is None but for progressive
    distillation)."""
    names = ARRAY_ITEMS + OPTIONAL_ITEMS
    return {k: getattr(state, k) for k in names if getattr(state, k, None) is not None}


class DamagedCheckpointError(ValueError):
    """A checkpoint step that cannot be read, or whose arrays differ from what was saved."""


def _drop_reports_of_abandoned_work() -> None:
    """When a save or restore fails (a full disk, a damaged file), orbax reports it several times
    over besides raising it: each background thread that met it logs it with a traceback, the
    reads and writes still in flight finish later and find their event loop closed (an unraisable
    RuntimeError, printed with a traceback), and futures and tasks whose error nobody retrieves are
    logged by asyncio, with a traceback, when they are collected. The failure itself reaches the
    caller once, as an exception (its traceback shown on request); from the first Checkpointer
    on, orbax's own reports keep their message and the error's first line but lose the traceback,
    and the other two are dropped."""
    if getattr(sys.unraisablehook, "drops_closed_loop_reports", False):
        return
    sys.unraisablehook = _dropping_closed_loop_reports(sys.unraisablehook)
    std_logging.getLogger("asyncio").addFilter(
        lambda record: not re.match(r"\w+ exception was never retrieved", record.getMessage())
    )
    std_logging.getLogger("absl").addFilter(_without_background_traceback)


def _without_background_traceback(record: std_logging.LogRecord) -> bool:
    """Keeps orbax's report of a failure as one line: its message and the error's first line."""
    if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
        error = record.exc_info[1]
        summary = f"{type(error).__name__}: {str(error).strip().partition(chr(10))[0]}"
        message = record.getMessage()
        record.msg = message if str(error) in message else f"{message} ({summary})"
        record.args, record.exc_info, record.exc_text = None, None, None
    return True


def _on_every_process(flag: bool) -> bool:
    """Whether `flag` holds on every process (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def _dropping_closed_loop_reports(previous):
    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_reports = True
    return hook


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """Position-weighted sum of the array's bits, modulo 2^32: any changed or moved element
    changes it (barring a 2^-32 coincidence), and integer sums do not depend on the device
    layout or the reduction order."""
    if x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
        bits = x.astype(jnp.uint32)
    # Row-major position from per-axis iotas: no reshape, so a sharded array stays sharded.
    position = jnp.zeros(x.shape, jnp.uint32)
    for axis, size in enumerate(x.shape):
        position = position * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
    weights = position * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def _fingerprint(items: dict[str, Any]) -> tuple[dict[str, list], jax.Array]:
    checksums = {name: [_leaf_checksum(x) for x in jax.tree.leaves(tree)] for name, tree in items.items()}
    finite = jnp.all(jnp.stack([
        jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(items)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]))
    return checksums, finite


def fingerprint(items: dict[str, Any]) -> tuple[dict[str, list[int]], bool]:
    """({item: [checksum of each leaf]}, whether every float is finite), fetched to the host."""
    checksums, finite = jax.device_get(_fingerprint(items))
    return {k: [int(c) for c in v] for k, v in checksums.items()}, bool(finite)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the given shardings: the restore target of `tree`'s layout."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )


def _write_replicated_arrays_from_one_replica_per_process() -> None:
    """Has orbax split the writing of a replicated array over its replicas only when they are
    in several processes (its default on CPU and TPU). Within one process the split gains
    nothing, and it slices every replica of every array on its device first: with 8 devices,
    about 2,300 device slices for a small network, each shape compiled once (10 of the 16 s a
    save took on the CPU)."""
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1),
        override=True,
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
            # A reader keeps and saves nothing (orbax warns about any other value).
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_checkpointing,
            create=not read_only,
            read_only=read_only,
        )
        self.directory = epath.Path(workdir) / CHECKPOINT_DIR
        _drop_reports_of_abandoned_work()
        _write_replicated_arrays_from_one_replica_per_process()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Saves (asynchronously) the train state, the data position and the arrays' checksums
        at `step`. A state with non-finite parameters is never saved: FloatingPointError."""
        items = _array_items(state)
        checksums, finite = fingerprint(items)
        if not finite:
            self.wait()
            raise FloatingPointError(
                f"the parameters at step {step} are not finite; training stopped without saving "
                f"them. {self.last_good_message()}"
            )
        meta = {"step": int(step), "data_state": data_state, "checksums": checksums}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{name: ocp.args.StandardSave(tree) for name, tree in items.items()},
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def last_good_message(self) -> str:
        """Names the newest saved step (only finite states are saved), or says there is none."""
        self.wait()
        latest = self.latest_step()
        run = self.directory.parent
        if latest is None:
            return f"No checkpoint was saved: the run in {run} diverged before its first save."
        return f"The last good checkpoint in {run} is step {latest}."

    def restore(self, step: int, abstract_state: Any) -> tuple[dict[str, Any], dict]:
        """Restores every item of `step` into the layout of `abstract_state`; returns (items, meta).

        Raises DamagedCheckpointError when the step cannot be read or its checksums differ.
        """
        return self._restore_arrays(step, _array_items(abstract_state))

    def restore_latest(self, abstract_state: Any) -> tuple[int, dict[str, Any], dict] | None:
        """(step, items, meta) of the newest step that restores intact, or None without steps.

        Damaged newer steps are moved to <workdir>/damaged_checkpoints (never deleted) with a
        warning. If no step restores, nothing is moved and the error lists every step's fault.
        """
        faults = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                items, meta = self.restore(step, abstract_state)
                fault = None
            except DamagedCheckpointError as error:
                fault = str(error)
            # Every process must continue from the same step, even if only one could not read it.
            if not _on_every_process(fault is None):
                faults.append((step, fault or "another process could not restore it"))
                continue
            if faults:
                self._move_aside(faults, good=step)
            return step, items, meta
        if not faults:
            return None
        raise DamagedCheckpointError(
            f"no checkpoint in {self.directory} can be restored:\n"
            + "\n".join(f"  step {bad}: {why}" for bad, why in faults)
        )

    def restore_ema_params(self, step: int, abstract_ema_params: Any) -> Any:
        """Restores only the EMA parameters of `step` (for a teacher or the eval job)."""
        return self._restore_arrays(step, {"ema_params": abstract_ema_params})[0]["ema_params"]

    def _restore_arrays(self, step: int, targets: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        """Restores the array items `targets` names into their layouts, (items, meta); the
        checksums are checked on the arrays as saved, before any change of block layout."""
        saved, wanted = self._saved_layout(step), stacking.tree_layout(targets)
        convert = saved is not None and wanted is not None and saved != wanted
        read_as = targets
        if convert:
            read_as = {name: stacking.to_layout(t, saved) for name, t in targets.items()}
        args = {name: ocp.args.StandardRestore(target) for name, target in read_as.items()}
        restored = self._restore(step, dict(args, meta=ocp.args.JsonRestore()))
        items = {name: restored[name] for name in targets}
        self._verify(step, items, restored["meta"])
        if convert:
            logging.info(
                "checkpoint step %d in %s has %s blocks: converting to %s", step, self.directory,
                saved, wanted,
            )
            for name, target in targets.items():
                shardings = jax.tree.map(lambda a: a.sharding, target)
                to_wanted = jax.jit(
                    lambda tree: stacking.to_layout(tree, wanted), out_shardings=shardings
                )
                items[name] = to_wanted(items[name])
        return items, restored["meta"]

    def _saved_layout(self, step: int) -> str | None:
        """The block layout the parameters of `step` were saved in, from the names of the
        parameter tree's top-level entries in orbax's tree metadata (a JSON file, read without
        orbax's asynchronous readers); None where unknown: the restore then reads the step as it
        is and fails as it would."""
        try:
            metadata = json.loads((self.directory / str(step) / "params" / "_METADATA").read_text())
            names = {
                entry["key_metadata"][0]["key"] for entry in metadata["tree_metadata"].values()
            }
        except (OSError, ValueError, KeyError, IndexError, TypeError):  # unreadable: see above
            return None
        return stacking.layout(dict.fromkeys(names))

    def _restore(self, step: int, args: dict) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as error:  # noqa: BLE001  (any failure to read the files: see below)
            # orbax, tensorstore and the JSON reader each raise their own types for unreadable
            # files; all of them mean this step cannot be used.
            summary = str(error).strip().splitlines()
            raise DamagedCheckpointError(
                f"step {step} could not be read ({type(error).__name__}: "
                f"{summary[-1] if summary else ''})"
            ) from error

    def _verify(self, step: int, items: dict[str, Any], meta: dict) -> None:
        expected = meta.get("checksums")
        if expected is None:  # written before checksums were saved
            return
        actual, _ = fingerprint(items)
        for name, checksums in actual.items():
            if checksums != expected[name]:
                bad = sum(a != e for a, e in zip(checksums, expected[name]))
                raise DamagedCheckpointError(
                    f"step {step}: {bad} of the {len(checksums)} arrays of {name!r} differ from "
                    "what was saved (checksum mismatch)"
                )

    def _move_aside(self, faults: list[tuple[int, str]], good: int) -> None:
        damaged = self.directory.parent / DAMAGED_DIR
        if jax.process_index() == 0:
            damaged.mkdir(parents=True, exist_ok=True)
            for step, why in faults:
                target, suffix = damaged / str(step), 1
                while target.exists():  # the same step number damaged again in a later attempt
                    target, suffix = damaged / f"{step}.{suffix}", suffix + 1
                (self.directory / str(step)).rename(target)
                logging.warning(
                    "checkpoint step %d in %s is damaged (%s); moved it to %s and resuming from "
                    "step %d.", step, self.directory, why, target, good,
                )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("mcm_jax: damaged checkpoints moved aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved config as JSON into the workdir, atomically (process 0 only; local or
    gs://)."""
    if jax.process_index() != 0:
        return
    files.write_bytes_atomic(
        epath.Path(workdir) / CONFIG_FILE,
        config.to_json_best_effort(indent=2, sort_keys=True).encode(),
    )


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote into its workdir; a file that is not a JSON object is a
    ValueError that names it."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir}: is it the workdir of a training run?")
    try:
        saved = json.loads(path.read_text())
        fault = None if isinstance(saved, dict) else f"a JSON {type(saved).__name__}, not an object"
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        fault = f"not valid JSON: {error}"
    if fault:
        raise ValueError(
            f"{path} is damaged ({fault}); it holds the run's resolved config, written by "
            "training: restore it from a copy, or delete it and rerun the run's training command, "
            "which writes it again"
        )
    return ml_collections.ConfigDict(saved)


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
