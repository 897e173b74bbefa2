"""mcm_jax.log_filter: a run's log keeps mcm_jax's and clu's INFO lines and every warning, and
drops other libraries' INFO lines."""

import logging as std_logging
import os

import clu
import orbax.checkpoint
import pytest
from absl import logging

import mcm_jax
from mcm_jax import log_filter


@pytest.fixture
def absl_filters():
    """absl's handler with the filter installed; its filters as they were afterwards."""
    handler = logging.get_absl_handler()
    before = list(handler.filters)
    log_filter.quiet_libraries()
    log_filter.quiet_libraries()  # a second call adds nothing
    assert len(handler.filters) == len(before) + 1
    yield handler
    handler.filters[:] = before


def _passes(handler, package, level) -> bool:
    pathname = os.path.join(os.path.dirname(package.__file__), "some_module.py")
    record = std_logging.LogRecord("absl", level, pathname, 1, "a line", None, None)
    return bool(handler.filter(record))


def test_library_info_lines_are_dropped_and_warnings_kept(absl_filters):
    for package in (mcm_jax, clu):
        assert _passes(absl_filters, package, std_logging.INFO)
    assert not _passes(absl_filters, orbax.checkpoint, std_logging.INFO)
    assert not _passes(absl_filters, orbax.checkpoint, std_logging.DEBUG)
    assert _passes(absl_filters, orbax.checkpoint, std_logging.WARNING)
    assert _passes(absl_filters, orbax.checkpoint, std_logging.ERROR)
