"""A workdir holds one run: the config a resume may change, and the config it may not.

`claim_workdir` runs before anything is written into a workdir. If the workdir already holds
checkpoints, the new config is compared with the run's own `config.json`: fields that define the
run (objective, network, data, schedule, losses, optimizer, seed, teacher) must be equal, and the
error names every one that differs with both values. Fields that only say how long, how often,
on what hardware or how fast it runs (`RESUMABLE`) may change; the changes are logged and
appended to `config_changes.jsonl`. `config.json` is then replaced atomically.
"""

from __future__ import annotations

import json
import time

import jax
import ml_collections
from absl import logging
from etils import epath
from flax import traverse_util

from mcm_jax import files
from mcm_jax.run import checkpointing

CHANGES_FILE = "config_changes.jsonl"

# Dotted config keys (or prefixes ending in ".") that a resume may change.
RESUMABLE = (
    "training.num_steps", "training.log_every", "training.checkpoint_every",
    "training.keep_checkpoints", "training.keep_period", "training.async_checkpointing",
    "training.sample_every", "training.sample_images", "training.sample_method",
    "training.sample_steps", "training.batch_size", "training.profile_steps",
    "mesh.", "model.dtype", "model.attention_impl", "model.remat", "model.scan_blocks",
    "model.fused_norms", "model.split_skip_dense",
    "data.data_dir", "data.num_parallel_calls", "data.prefetch", "data.autotune",
    "peak_tflops_per_device", "compilation_cache_dir", "eval.",
)


def _flat(config: ml_collections.ConfigDict | dict) -> dict[str, object]:
    """Dotted key -> JSON value, as config.json stores it (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())
    return traverse_util.flatten_dict(config, sep=".")


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def config_changes(
    saved: ml_collections.ConfigDict | dict, new: ml_collections.ConfigDict
) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """({key: (saved, new)} of run-defining differences, {key: (saved, new)} of allowed ones).

    Keys present on one side only (a field added or removed by a newer version of the code) are
    not differences.
    """
    old, cur = _flat(saved), _flat(new)
    forbidden, allowed = {}, {}
    for key in sorted(old.keys() & cur.keys()):
        if old[key] != cur[key]:
            (allowed if _resumable(key) else forbidden)[key] = (old[key], cur[key])
    return forbidden, allowed


def latest_saved_step(workdir: epath.PathLike) -> int | None:
    """The newest complete checkpoint step in `workdir` (orbax names it by its number), or None."""
    directory = epath.Path(workdir) / checkpointing.CHECKPOINT_DIR
    if not directory.is_dir():
        return None
    return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=None)


def claim_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Checks that `config` may continue the run in `workdir`, then writes its config.json.

    Raises ValueError naming each run-defining field that differs from the run's config.json
    (nothing is written then).
    """
    path = epath.Path(workdir)
    config_file = path / checkpointing.CONFIG_FILE
    allowed, latest = {}, latest_saved_step(path)
    if config_file.exists() and latest is not None:
        saved = checkpointing.read_config(workdir)
        forbidden, allowed = config_changes(saved, config)
        if forbidden:
            lines = "\n".join(
                f"  config.{key}: the run has {old!r}, this command has {new!r}"
                for key, (old, new) in forbidden.items()
            )
            raise ValueError(
                f"{workdir} holds a run with another config; resuming it with this one would mix "
                f"two runs. Fields that differ:\n{lines}\nUse a new --workdir, or the run's own "
                f"values (they are in {config_file})."
            )
    if jax.process_index() != 0:
        return
    if allowed:
        logging.warning(
            "resuming %s with changed settings: %s", workdir,
            ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in allowed.items()),
        )
        record = {
            "time": time.time(), "resumed_after_step": latest,
            "changes": {k: list(v) for k, v in allowed.items()},
        }
        changes_file = path / CHANGES_FILE
        history = changes_file.read_text() if changes_file.exists() else ""
        files.write_bytes_atomic(changes_file, (history + json.dumps(record) + "\n").encode())
    checkpointing.write_config(workdir, config)
