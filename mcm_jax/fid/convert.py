r"""The one-off command that turns pytorch-fid's Inception .pth into our .npz.

    python -m mcm_jax.fid.convert --input pt_inception-2015-12-05-6726825d.pth \
        --output fid_inception.npz

reads the .pth once with torch (the only place torch is used; it is not a dependency of
mcm_jax) and writes a pickle-free .npz plus its SHA-256 in `<output>.sha256`. Both paths go
through etils.epath, so either may be on gs://.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from etils import epath

from mcm_jax import files
from mcm_jax.fid import conversion, weights


def read_pth_state_dict(path: epath.PathLike) -> dict[str, np.ndarray]:
    """The state dict of a torch .pth file as numpy arrays (torch imported only here)."""
    try:
        import torch
    except ImportError as error:
        raise SystemExit(
            "Reading a .pth file needs PyTorch, for this one-off conversion only: "
            "pip install torch"
        ) from error
    data = io.BytesIO(epath.Path(path).read_bytes())
    state_dict = torch.load(data, map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in state_dict.items()}


def convert_file(state_dict: dict[str, np.ndarray], output: epath.PathLike) -> str:
    """Convert and write `output` (.npz) and `output`.sha256; returns the SHA-256."""
    return weights.save_params(conversion.convert_pytorch_fid_state_dict(state_dict), output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert pytorch-fid's Inception .pth to .npz.")
    parser.add_argument("--input", type=epath.Path, required=True,
                        help=f"pytorch-fid weights, from {weights.PYTORCH_FID_WEIGHTS_URL}")
    parser.add_argument("--output", type=epath.Path, required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    if not files.is_file(args.input):
        raise SystemExit(f"--input: no file at {args.input}; download it with\n"
                         f"  {weights.DOWNLOAD_COMMAND}")
    sha256 = convert_file(read_pth_state_dict(args.input), args.output)
    print(f"wrote {args.output}\nSHA-256 {sha256} (also in {weights.sidecar_path(args.output)})")


if __name__ == "__main__":
    main()
