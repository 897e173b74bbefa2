"""Files read and written through etils.epath, so local paths and gs:// behave alike on every
worker of a pod.

Writes go to a temporary name beside the target and are renamed into place, so a reader never
trusts a half-written file (one that fails is removed). An .npz is built in memory before it is
written: np.savez seeks back into its output, which TensorFlow's gs:// files (epath's backend when
TensorFlow is installed) refuse ("File isn't open for reading"). Reads stream from the file, so
loading `mu` and `sigma` from a reference batch does not fetch its images.

A full disk, met by any writer (Python, orbax's tensorstore, TensorFlow), is recognised by
`no_space_left` and told by `DiskFullError`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
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
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            partial.unlink(missing_ok=True)
        raise


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


# How tensorstore (orbax) and TensorFlow report ENOSPC: the OS's message, or its error code.
_NO_SPACE = re.compile(r"No space left on device|os_error_code='?%d\b" % errno.ENOSPC)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error` and the errors it was raised from."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def no_space_left(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a full disk (ENOSPC)."""
    return any(
        (isinstance(e, OSError) and e.errno == errno.ENOSPC) or _NO_SPACE.search(str(e))
        for e in _chain(error)
    )


class DiskFullError(OSError):
    """A job stopped by a full disk; the message names the directory, its disk and free space."""

    def __init__(self, error: BaseException, directory: str, job: str, resume: str):
        """`error` is the full disk as a writer raised it, `directory` the job's own (the one
        named, unless the file that could not be written lies elsewhere), `resume` what a rerun
        does once there is space."""
        failed = _failed_file(error)
        if failed and not os.path.abspath(failed).startswith(os.path.abspath(directory) + os.sep):
            directory = os.path.dirname(failed)
        super().__init__(
            f"{job} stopped: no space left on the disk of {directory}{_usage(directory)}; free "
            f"space there (or move {directory} to a larger disk) and rerun the same command: "
            f"{resume}"
        )


def _failed_file(error: BaseException) -> str | None:
    """The local file a full-disk error names (OSError.filename, or the first absolute path
    in quotes in a tensorstore or TensorFlow message), None if it names none."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.filename:
            return os.fspath(e.filename)
        quoted = re.search(r"[\"'](/[^\"']+)[\"']", str(e))
        if quoted:
            return quoted.group(1)
    return None


def _usage(directory: str) -> str:
    """' (<mount point>: <free> free of <size>)' for a local directory, '' for gs:// and others."""
    if "://" in directory:
        return ""
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    mount = path
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    usage = shutil.disk_usage(path)
    return f" ({mount}: {_size(usage.free)} free of {_size(usage.total)})"


def _size(num_bytes: float) -> str:
    """`num_bytes` in binary units, e.g. '3.0 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"
