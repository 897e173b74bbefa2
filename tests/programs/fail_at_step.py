"""`python -m mcm_jax.main` whose process FAIL_PROCESS raises FAIL_ERROR (a ValueError, or any
builtin exception name) when it fetches batch FAIL_STEP: a fault in one process of a job, for
tests of how a multi-process job ends. Arguments are main's."""

import builtins
import os
import runpy

from mcm_jax.data import input_pipeline

_next = input_pipeline.TrainIterator.__next__
_fetched = 0


def _failing_next(self):
    global _fetched
    _fetched += 1
    if self._process_index == int(os.environ["FAIL_PROCESS"]) and _fetched == int(os.environ["FAIL_STEP"]):
        error = getattr(builtins, os.environ.get("FAIL_ERROR", "ValueError"))
        raise error(f"injected fault at step {_fetched}")
    return _next(self)


input_pipeline.TrainIterator.__next__ = _failing_next
runpy.run_module("mcm_jax.main", run_name="__main__", alter_sys=True)
