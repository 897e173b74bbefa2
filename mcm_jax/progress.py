"""What a long job shows a person: one line per stage, with its progress and the time left.

A job declares its stages up front with an estimated cost each (any unit: steps times a cost per
step); the time left is the remaining cost at the rate measured so far, so it corrects itself as
stages finish. On a terminal the current stage is a progress bar redrawn in place; elsewhere (a
log file, CI) each stage prints one line when it ends.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

ProgressFn = Callable[[int, int], None]  # (done, total) within one stage


def duration(seconds: float) -> str:
    """`1h02m`, `4m05s` or `17s`."""
    seconds = max(int(round(seconds)), 0)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    cost: float  # estimated, in the job's own unit


class Plan:
    """The stages of a job; `run(i)` reports stage i's progress while it runs."""

    BAR_WIDTH = 24

    def __init__(self, stages: Sequence[Stage], stream: TextIO | None = None, *, clock=time.time):
        self.stages = list(stages)
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.clock = clock
        self.start = clock()
        self.done_cost = 0.0  # cost of the finished stages and the finished part of the current one
        self._last_draw = 0.0

    def _seconds_left(self, done_cost: float) -> float | None:
        if done_cost <= 0:
            return None
        total = sum(s.cost for s in self.stages)
        return (self.clock() - self.start) / done_cost * (total - done_cost)

    def _prefix(self, index: int) -> str:
        return f"[{index + 1}/{len(self.stages)}] {self.stages[index].name}"

    @contextmanager
    def run(self, index: int) -> Iterator[ProgressFn]:
        """Stage `index`: yields `progress(done, total)` for the stage's code to call."""
        stage, stage_start, finished_before = self.stages[index], self.clock(), self.done_cost

        def progress(done: int, total: int) -> None:
            self.done_cost = finished_before + stage.cost * min(done / max(total, 1), 1.0)
            if not self.interactive or self.clock() - self._last_draw < 0.2 and done < total:
                return
            self._last_draw = self.clock()
            filled = int(self.BAR_WIDTH * done / max(total, 1))
            bar = "█" * filled + "·" * (self.BAR_WIDTH - filled)
            left = self._seconds_left(self.done_cost)
            eta = f", job {duration(left)} left" if left is not None else ""
            line = f"{self._prefix(index)} {bar} {done}/{total}{eta}"
            self.stream.write("\r" + line[:150].ljust(80))
            self.stream.flush()

        if self.interactive:
            progress(0, 1)
        yield progress
        self.done_cost = finished_before + stage.cost
        left = self._seconds_left(self.done_cost)
        elapsed = self.clock() - self.start
        tail = f"; {duration(left)} left" if left and index + 1 < len(self.stages) else ""
        line = (
            f"{self._prefix(index)}: {duration(self.clock() - stage_start)} "
            f"(elapsed {duration(elapsed)}{tail})"
        )
        self.stream.write(("\r" + line.ljust(80) if self.interactive else line) + "\n")
        self.stream.flush()
