"""Keeps library INFO lines out of a run's log.

Everything logged through absl (and Python loggers that reach the root logger) ends in absl's
handler. orbax logs a few dozen INFO lines per checkpoint save and TFDS a few per epoch; in a
long run they bury the run's own lines. `quiet_libraries()` lets INFO (and DEBUG) lines through
only from mcm_jax and clu (the metric lines, the parameter table, progress notes); from any other
module it keeps warnings and errors.
"""

from __future__ import annotations

import functools
import importlib.util
import logging as std_logging
import os

from absl import logging

_OWN_PACKAGES = ("mcm_jax", "clu")


class _OwnInfoOnly(std_logging.Filter):
    def __init__(self, directories: tuple[str, ...]):
        super().__init__()
        self._directories = directories

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or self._is_own(record.pathname)

    @functools.lru_cache(maxsize=None)
    def _is_own(self, pathname: str) -> bool:
        return os.path.realpath(pathname).startswith(self._directories)


def _package_directory(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(os.path.realpath(spec.submodule_search_locations[0]), "")


def quiet_libraries() -> None:
    """Drops INFO and DEBUG lines of modules outside mcm_jax and clu from absl's handler."""
    handler = logging.get_absl_handler()
    if any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
        return
    directories = tuple(d for d in map(_package_directory, _OWN_PACKAGES) if d)
    handler.addFilter(_OwnInfoOnly(directories))
