"""pytorch-fid's Inception state dict (numpy) -> InceptionV3 params, BatchNorm folded in: the
mapping only, torch-free; `python -m mcm_jax.eval.fid.convert` is the command that reads the
.pth."""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from mcm_jax.eval.fid import inception, weights

BATCHNORM_EPSILON = 1e-3
# Keys of the state dict that the pool features never read: the 1008-way classifier and
# BatchNorm's step counters.
UNUSED_KEY_SUFFIXES = (".num_batches_tracked",)
UNUSED_KEYS = ("fc.weight", "fc.bias")


def _fold_batchnorm(
    state_dict: dict[str, np.ndarray], prefix: str
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm folded into the conv before it: (HWIO kernel, bias), float64 math."""
    weight = np.asarray(state_dict[f"{prefix}.conv.weight"], np.float64)
    bn = {}
    for name in ("weight", "bias", "running_mean", "running_var"):
        bn[name] = np.asarray(state_dict[f"{prefix}.bn.{name}"], np.float64)
        if bn[name].shape != weight.shape[:1]:
            raise ValueError(
                f"{prefix}.bn.{name}: shape {bn[name].shape}, expected {weight.shape[:1]}"
            )
    scale = bn["weight"] / np.sqrt(bn["running_var"] + BATCHNORM_EPSILON)
    kernel = np.transpose(weight * scale[:, None, None, None], (2, 3, 1, 0))  # OIHW -> HWIO
    bias = bn["bias"] - bn["running_mean"] * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


def convert_pytorch_fid_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
    """pytorch-fid's `pt_inception-2015-12-05` state dict (numpy arrays) -> InceptionV3 params.

    Every `<name>.conv.weight` with its `<name>.bn.*` becomes `params[...][name]["conv"]`
    with the BatchNorm folded in. Missing, unexpected or misshapen keys raise with their names.
    """
    # Flax "Mixed_5b/branch1x1/conv/kernel" <- torch "Mixed_5b.branch1x1.{conv,bn}.*"
    conv_names = [
        name.removesuffix("/kernel")
        for name in traverse_util.flatten_dict(inception.param_shapes(), sep="/")
        if name.endswith("/kernel")
    ]
    prefixes = {".".join(name.split("/")[:-1]): name for name in conv_names}
    needed = {
        f"{prefix}.{part}"
        for prefix in prefixes
        for part in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    }
    ignored = {k for k in state_dict if k in UNUSED_KEYS or k.endswith(UNUSED_KEY_SUFFIXES)}
    missing = sorted(needed - set(state_dict))
    unexpected = sorted(set(state_dict) - needed - ignored)
    if missing or unexpected:
        raise KeyError(
            "state dict is not pytorch-fid's FID Inception: "
            f"missing {missing[:5]} ({len(missing)} in all), "
            f"unexpected {unexpected[:5]} ({len(unexpected)} in all)"
        )
    flat = {}
    for prefix, conv_name in prefixes.items():
        flat[f"{conv_name}/kernel"], flat[f"{conv_name}/bias"] = _fold_batchnorm(state_dict, prefix)
    params = traverse_util.unflatten_dict(flat, sep="/")
    weights.check_param_shapes(params)
    return params
