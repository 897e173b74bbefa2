"""Files read and written through etils.epath, so local paths and gs:// behave alike on every
worker of a pod.

Writes go to a temporary name beside the target and are renamed into place, so a reader never
trusts a half-written file. An .npz is built in memory before it is written: np.savez seeks
back into its output, which TensorFlow's gs:// files (epath's backend when TensorFlow is
installed) refuse ("File isn't open for reading"). Reads stream from the file, so loading
`mu` and `sigma` from a reference batch does not fetch its images.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from etils import epath


def is_file(path: epath.PathLike) -> bool:
    """Whether `path` is an existing file; unlike pathlib's is_file, also true for gs:// objects."""
    path = epath.Path(path)
    return path.exists() and not path.is_dir()


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
    """Writes `data` to `path` (creating its directory) under a temporary name, then renames it."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f"{path.name}.partial-{uuid.uuid4().hex[:12]}"
    partial.write_bytes(data)
    partial.replace(path)


def save_npz(path: epath.PathLike, **arrays: npt.ArrayLike) -> None:
    """np.savez of `arrays` to `path`, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def open_npz(path: epath.PathLike) -> Iterator[np.lib.npyio.NpzFile]:
    """The .npz at `path`, its members read on access; refuses pickled members."""
    with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as archive:
        yield archive


def read_npz_members(
    path: epath.PathLike, keys: tuple[str, ...], *, what: str, hint: str
) -> dict[str, np.ndarray]:
    """The members `keys` of the .npz at `path`. A missing file or member is an error that names
    `what` (the config field or role of the file) and says `hint` (how to make a good one)."""
    if not is_file(path):
        raise FileNotFoundError(f"{what}: no file at {path}; {hint}")
    with open_npz(path) as archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise ValueError(
                f"{what}: {path} has no member(s) {missing} (found {sorted(archive.files)}); {hint}"
            )
        return {key: archive[key] for key in keys}



def walk_files(root: epath.PathLike) -> Iterator[epath.Path]:
    """Every file under the directory `root`, recursively (epath's rglob refuses gs://)."""
    for item in epath.Path(root).iterdir():
        if item.is_dir():
            yield from walk_files(item)
        else:
            yield item
