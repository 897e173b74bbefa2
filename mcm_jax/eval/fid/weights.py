"""The converted FID Inception weights on disk: a pickle-free .npz checked by SHA-256.

The .npz holds one float32 array per parameter, named by its path ("Mixed_5b/branch1x1/conv/
kernel"). The converter writes it byte-reproducibly (fixed zip timestamps, sorted names) and puts
its SHA-256 in a sidecar `<file>.sha256` (sha256sum format); the loader refuses a file whose
digest differs from the sidecar's or the one given, and anything that would need pickle. Both
files are read and written through etils.epath (local or gs://).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile

import numpy as np
from etils import epath
from flax import traverse_util

from mcm_jax import files
from mcm_jax.eval.fid import inception

PYTORCH_FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
DOWNLOAD_COMMAND = f"curl -L -o pt_inception-2015-12-05-6726825d.pth {PYTORCH_FID_WEIGHTS_URL}"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def sidecar_path(npz_path: epath.PathLike) -> epath.Path:
    """Where the converter writes the SHA-256 of `npz_path`."""
    npz_path = epath.Path(npz_path)
    return npz_path.parent / f"{npz_path.name}.sha256"


def make_weights_commands(npz_path: epath.PathLike) -> str:
    """The shell commands that produce the converted weights at `npz_path`."""
    return (
        f"  {DOWNLOAD_COMMAND}\n"
        "  pip install torch  # only for the conversion; mcm_jax does not need it\n"
        "  python -m mcm_jax.eval.fid.convert --input pt_inception-2015-12-05-6726825d.pth "
        f"--output {npz_path}"
    )


def file_sha256(path: epath.PathLike) -> str:
    """The SHA-256 (hex) of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_param_shapes(params: dict) -> None:
    """Raise, naming the parameters, unless `params` has InceptionV3's structure and shapes."""
    expected = traverse_util.flatten_dict(inception.param_shapes(), sep="/")
    actual = traverse_util.flatten_dict(params, sep="/")
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    wrong = sorted(
        f"{k}: {np.shape(actual[k])} != {expected[k].shape}"
        for k in set(expected) & set(actual)
        if np.shape(actual[k]) != expected[k].shape
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"not FID InceptionV3 params: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )


def save_params(params: dict, path: epath.PathLike) -> str:
    """Write params as a byte-reproducible .npz and its `.sha256` sidecar; returns the SHA-256."""
    check_param_shapes(params)
    path = epath.Path(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in sorted(traverse_util.flatten_dict(params, sep="/").items()):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                array = np.ascontiguousarray(value, dtype=np.float32)
                np.lib.format.write_array(member, array, allow_pickle=False)
    data = buffer.getvalue()
    files.write_bytes_atomic(path, data)
    sha256 = hashlib.sha256(data).hexdigest()
    files.write_bytes_atomic(sidecar_path(path), f"{sha256}  {path.name}\n".encode())
    return sha256


def load_inception_params(path: epath.PathLike, expected_sha256: str | None = None) -> dict:
    """The InceptionV3 params (numpy float32 pytree) from a converted .npz.

    The file's SHA-256 must equal `expected_sha256`, by default the one in `<path>.sha256`.
    The file is read once, so the bytes checked are the bytes loaded. Only plain float32 arrays
    are read (allow_pickle=False).
    """
    path = epath.Path(path)
    if not files.is_file(path):
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}. Make them once with:\n"
            + make_weights_commands(path)
        )
    if expected_sha256 is None:
        expected_sha256 = _read_sidecar(path)
    expected_sha256 = expected_sha256.strip().lower()
    if not _SHA256_PATTERN.fullmatch(expected_sha256):
        raise ValueError(f"expected_sha256: expected 64 hex digits, got {expected_sha256!r}")
    data = path.read_bytes()
    actual_sha256 = hashlib.sha256(data).hexdigest()
    if actual_sha256 != expected_sha256:
        raise ValueError(
            f"SHA-256 mismatch for {path}: file has {actual_sha256}, expected {expected_sha256}. "
            "Re-create it with:\n" + make_weights_commands(path)
        )
    return _read_npz(path, data)


def _read_sidecar(path: epath.Path) -> str:
    sidecar = sidecar_path(path)
    if not files.is_file(sidecar):
        raise FileNotFoundError(
            f"no SHA-256 for {path}: expected {sidecar} (the converter writes it) "
            "or pass expected_sha256"
        )
    fields = sidecar.read_text().split()
    if not fields:
        raise ValueError(f"{sidecar} is empty; expected '<sha256>  {path.name}'")
    return fields[0]


def _read_npz(path: epath.Path, data: bytes) -> dict:
    """The params in `data`, the bytes of the .npz at `path` (named in messages)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError(
            f"{path} is not an .npz archive; make it with:\n" + make_weights_commands(path)
        )
    flat = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            for name in archive.files:
                flat[name] = archive[name]
    except ValueError as error:  # numpy refuses object arrays and pickles without allow_pickle
        raise ValueError(f"{path} needs pickle to load; refusing it (plain .npz only)") from error
    for name, value in flat.items():
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            kind = value.dtype if isinstance(value, np.ndarray) else "a non-array member"
            raise ValueError(f"{path}: {name!r} is {kind}; expected a float32 array")
    params = traverse_util.unflatten_dict(flat, sep="/")
    check_param_shapes(params)
    return params
