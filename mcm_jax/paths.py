"""User paths, resolved once at the entry point.

orbax needs absolute paths (a relative workdir crashes at the first checkpoint), so local paths are
made absolute against the directory the job was started in, with ~ expanded; URIs such as gs://
are absolute already and stay as given.
"""

from __future__ import annotations

import os

import ml_collections
from etils import epath

# Config fields that hold paths a user gives (empty or None: unset).
CONFIG_PATH_FIELDS = (
    "teacher.workdir",
    "data.data_dir",
    "eval.x_var_table",
    "eval.inception_weights",
    "eval.reference_stats",
)


def resolve(path: str) -> str:
    """`path` absolute: local paths against the current directory (~ expanded), URIs as given."""
    p = epath.Path(path)
    return path if p.is_absolute() else os.fspath(p.expanduser().resolve())


def resolve_config_paths(config: ml_collections.ConfigDict) -> None:
    """Makes every set path field of CONFIG_PATH_FIELDS absolute, in place."""
    for field in CONFIG_PATH_FIELDS:
        group, name = field.split(".")
        if group in config and config[group].get(name):
            config[group][name] = resolve(config[group][name])


def resolve_directory(path: str | None, flag: str) -> str:
    """The absolute `path` that --`flag` names, a directory there or one that can be made; refuses
    an empty one, one that is (or lies under) a file, and one whose storage cannot be reached (a
    gs:// bucket without network or credentials)."""
    if not path:
        raise ValueError(f"--{flag}: empty; give a directory (local or gs://)")
    resolved = resolve(path)
    try:
        nearest = next((p for p in (epath.Path(resolved), *epath.Path(resolved).parents)
                        if p.exists()), None)  # the directory or its nearest existing parent
        is_file = nearest is not None and not nearest.is_dir()
    except Exception as error:  # an OSError, or tf.errors.OpError from TensorFlow's GCS client
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(f"--{flag}: cannot reach {resolved} ({first_line})") from None
    if is_file and str(nearest) == resolved:
        raise NotADirectoryError(f"--{flag}: {resolved} is a file, not a directory")
    if is_file:
        raise NotADirectoryError(f"--{flag}: {resolved} cannot be a directory: {nearest} is a file")
    return resolved


def check_writable(path: str, flag: str, purpose: str = "") -> None:
    """Refuses a local `path` (or, not made yet, its nearest existing parent) that this process
    cannot write into: a read-only file system, or no write permission (EACCES; root writes
    anyway). `purpose` says what would be written there. gs:// is checked by its first write."""
    if "://" in path:
        return
    nearest = os.path.abspath(path)
    while not os.path.exists(nearest):
        nearest = os.path.dirname(nearest)
    if os.access(nearest, os.W_OK | os.X_OK):
        return
    if os.statvfs(nearest).f_flag & os.ST_RDONLY:
        reason = "it is on a read-only file system"
    else:
        reason = "no permission to write there"
    raise PermissionError(
        f"--{flag}: cannot write into {nearest}: {reason}" + (f"; {purpose}" if purpose else "")
    )


def resolve_workdir(workdir: str | None) -> str:
    """The absolute --workdir (`resolve_directory`)."""
    return resolve_directory(workdir, "workdir")
