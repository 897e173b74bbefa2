"""The two layouts of a UViT's parameters, and their conversion.

Unrolled (scan_blocks=False): one entry per block, `down{L}_block{i}`, `middle_block{i}`,
`up{L}_block{i}`, and the up path's skip merges `up{L}_skip{i}`. Scanned (scan_blocks=True): one
entry per run of identical blocks, `down{L}_blocks`, `middle_blocks`, `up{L}_blocks`, holding
`block` (and, on the up path, `skip`), each array with a leading axis of length `i`'s count:
index i of the stack is block i. Everything else is the same in both.

`to_scanned` and `to_unrolled` convert any tree that holds parameter dicts (parameters, EMA sets,
Adam moments) of either layout, arrays or jax.ShapeDtypeStructs (a restore target; a leading
axis is never sharded). A checkpoint written in one layout restores into the other this way.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

SCANNED, UNROLLED = "scanned", "unrolled"
BLOCK, SKIP = "block", "skip"
_STACK = re.compile(r"^(down\d+|middle|up\d+)_blocks$")
_UNROLLED = re.compile(r"^(down\d+|middle|up\d+)_(block|skip)(\d+)$")


def stack_name(path: str, level: int | None = None) -> str:
    """The scanned entry of a run: stack_name("down", 0) == "down0_blocks", of the middle stack
    stack_name("middle") == "middle_blocks"."""
    return f"{path}{'' if level is None else level}_blocks"


def is_stacked(path: tuple) -> bool:
    """Whether a leaf at this key path (jax.tree_util) is a stacked block parameter, whose
    leading axis is the block index."""
    return any(_STACK.match(str(getattr(key, "key", ""))) for key in path)


def layout(params: Any) -> str | None:
    """SCANNED or UNROLLED by the names of a parameter dict's top-level entries (anything with
    .keys(), such as orbax's metadata tree); None if it has no blocks."""
    names = list(params.keys())
    if any(_STACK.match(name) for name in names):
        return SCANNED
    if any(_UNROLLED.match(name) for name in names):
        return UNROLLED
    return None


def _holds_blocks(node: Any) -> bool:
    return isinstance(node, dict) and layout(node) is not None


def tree_layout(tree: Any) -> str | None:
    """The layout of the first parameter dict found in `tree` (any pytree of dicts, lists and
    tuples, e.g. a train state or orbax's metadata tree); None if it holds none."""
    found = []
    jax.tree.map(
        lambda node: found.append(layout(node)) if _holds_blocks(node) else None,
        tree,
        is_leaf=_holds_blocks,
    )
    return found[0] if found else None


def _stack(leaves: list) -> Any:
    first = leaves[0]
    if not isinstance(first, jax.ShapeDtypeStruct):
        return jnp.stack(leaves)
    sharding = first.sharding
    if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype, sharding=sharding)


def _unstack(leaf: Any) -> list:
    if not isinstance(leaf, jax.ShapeDtypeStruct):
        return [leaf[i] for i in range(leaf.shape[0])]
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    item = jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)
    return [item] * leaf.shape[0]


def _stack_dict(params: dict) -> dict:
    runs: dict[str, dict[str, dict[int, Any]]] = {}
    out = {}
    for name, value in params.items():
        match = _UNROLLED.match(name)
        if match is None:
            out[name] = value
            continue
        run, part, index = match.group(1), match.group(2), int(match.group(3))
        runs.setdefault(run, {}).setdefault(part, {})[index] = value
    for run, parts in runs.items():
        out[stack_name(run)] = {
            part: jax.tree.map(lambda *xs: _stack(list(xs)), *(blocks[i] for i in sorted(blocks)))
            for part, blocks in parts.items()
        }
    return out


def _unstack_dict(params: dict) -> dict:
    out = {}
    for name, value in params.items():
        match = _STACK.match(name)
        if match is None:
            out[name] = value
            continue
        run = match.group(1)
        for part, stacked in value.items():
            leaves, treedef = jax.tree.flatten(stacked)
            per_block = list(zip(*(_unstack(leaf) for leaf in leaves)))
            for index, block_leaves in enumerate(per_block):
                out[f"{run}_{part}{index}"] = jax.tree.unflatten(treedef, block_leaves)
    return out


def _convert(tree: Any, convert_dict: Callable[[dict], dict]) -> Any:
    """Applies `convert_dict` to every dict of `tree` that holds blocks of either layout."""
    return jax.tree.map(
        lambda node: convert_dict(node) if _holds_blocks(node) else node,
        tree,
        is_leaf=_holds_blocks,
    )


def to_scanned(tree: Any) -> Any:
    """`tree` with every unrolled parameter dict in the scanned layout (others unchanged)."""
    return _convert(tree, _stack_dict)


def to_unrolled(tree: Any) -> Any:
    """`tree` with every scanned parameter dict in the unrolled layout (others unchanged)."""
    return _convert(tree, _unstack_dict)


def to_layout(tree: Any, target: str) -> Any:
    """`tree` in the layout SCANNED or UNROLLED."""
    return to_scanned(tree) if target == SCANNED else to_unrolled(tree)
