r"""The one-off command that turns pytorch-fid's Inception .pth into our .npz (the mapping itself:
mcm_jax.eval.fid.from_pytorch_fid).

    python -m mcm_jax.eval.fid.convert --input pt_inception-2015-12-05-6726825d.pth \
        --output fid_inception.npz

reads the .pth once with torch (the only place torch is used; it is not a dependency of
mcm_jax) and writes a pickle-free .npz plus its SHA-256 in `<output>.sha256`. Both paths go
through etils.epath, so either may be on gs://.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from etils import epath

from mcm_jax import files
from mcm_jax.eval.fid import from_pytorch_fid, weights
from mcm_jax.run import cli


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
    return weights.save_params(from_pytorch_fid.convert_pytorch_fid_state_dict(state_dict), output)


FLAGS = flags.FlagValues()  # this command's own: importing the module defines no global flags
flags.DEFINE_string(
    "input", None, f"pytorch-fid weights, from {weights.PYTORCH_FID_WEIGHTS_URL}",
    flag_values=FLAGS, required=True,
)
flags.DEFINE_string("output", None, "the .npz to write", flag_values=FLAGS, required=True)


def main(argv: Sequence[str]) -> None:
    """Converts --input to --output; `argv` is the command line, program name first."""
    if len(FLAGS(argv)) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}; use --input and --output")
    source, output = epath.Path(FLAGS.input), epath.Path(FLAGS.output)
    if not files.is_file(source):
        raise SystemExit(f"--input: no file at {source}; download it with\n"
                         f"  {weights.DOWNLOAD_COMMAND}")
    sha256 = convert_file(read_pth_state_dict(source), output)
    print(f"wrote {output}\nSHA-256 {sha256} (also in {weights.sidecar_path(output)})")


if __name__ == "__main__":
    cli.run(main, FLAGS)
