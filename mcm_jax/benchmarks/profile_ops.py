"""The most expensive operations of a profiled program, read from a `jax.profiler` trace.

A trace (`<dir>/plugins/profile/<run>/<host>.xplane.pb`) holds one event per executed XLA
operation: on a GPU on the device plane's "XLA Ops" line, on a CPU as host events that carry an
`hlo_op` stat. Their durations, summed per operation name and divided by the traced steps, say
where a step's time goes: the diagnosis a single short run on a device should give.
"""

from __future__ import annotations

import collections
import dataclasses

from etils import epath
from jax.profiler import ProfileData


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One operation's time per step and its share of all operations' time."""

    name: str
    ms_per_step: float
    share: float


def latest_trace(trace_dir: str) -> epath.Path:
    """The newest .xplane.pb under `trace_dir` (as `jax.profiler.trace(trace_dir)` writes it)."""
    traces = sorted(epath.Path(trace_dir).glob("plugins/profile/*/*.xplane.pb"))
    if not traces:
        raise FileNotFoundError(f"no jax.profiler trace (*.xplane.pb) under {trace_dir}")
    return traces[-1]


def _op_durations_ns(data: ProfileData) -> collections.Counter:
    totals: collections.Counter = collections.Counter()
    for plane in data.planes:
        on_device = plane.name.startswith("/device:")
        for line in plane.lines:
            device_ops = on_device and line.name == "XLA Ops"
            for event in line.events:
                if device_ops or (not on_device and any(k == "hlo_op" for k, _ in event.stats)):
                    totals[event.name] += event.duration_ns
    return totals


def top_ops(trace_dir: str, steps: int, count: int = 10) -> list[OpTime]:
    """The `count` operations that took the most time in the newest trace of `trace_dir`, which
    traced `steps` steps; shares are of the time of all operations."""
    totals = _op_durations_ns(ProfileData.from_file(str(latest_trace(trace_dir))))
    everything = sum(totals.values()) or 1.0
    return [
        OpTime(name, ns / steps / 1e6, ns / everything)
        for name, ns in totals.most_common(count)
    ]


def table(ops: list[OpTime]) -> str:
    """A markdown table of `ops`."""
    lines = ["| op | ms/step | share |", "|---|---:|---:|"]
    lines += [f"| {op.name} | {op.ms_per_step:.3f} | {100 * op.share:.1f}% |" for op in ops]
    return "\n".join(lines)
