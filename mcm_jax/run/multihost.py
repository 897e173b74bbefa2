"""One voice in the logs of a multi-process run.

Metric lines, TensorBoard events and sample grids come from process 0 only; every process still
logs its own warnings and errors, prefixed with its index so a merged log says who spoke.
"""

from __future__ import annotations

import logging as std_logging

import jax
from absl import logging


def is_chief() -> bool:
    """Process 0: the one that writes metrics, grids and reports."""
    return jax.process_index() == 0


def metric_writer(workdir: str, *, asynchronous: bool):
    """clu's default writer (log lines and TensorBoard under `workdir`) on process 0; a writer
    that drops everything on the others, so each metric line appears once. (clu's writers import
    TensorFlow, so they are imported here, by the outer loops only.)"""
    from clu import metric_writers

    if is_chief():
        return metric_writers.create_default_writer(workdir, asynchronous=asynchronous)
    return metric_writers.MultiWriter([])


class _ProcessPrefix(std_logging.Formatter):
    def __init__(self, inner: std_logging.Formatter, prefix: str):
        super().__init__()
        self._inner, self._prefix = inner, prefix

    def format(self, record: std_logging.LogRecord) -> str:
        return self._prefix + self._inner.format(record)


def name_process_in_logs() -> None:
    """Prefixes every absl log line with `[process i/n] ` when there are several processes."""
    if jax.process_count() == 1:
        return
    handler = logging.get_absl_handler()
    prefix = f"[process {jax.process_index()}/{jax.process_count()}] "
    handler.setFormatter(_ProcessPrefix(handler.formatter or logging.PythonFormatter(), prefix))
