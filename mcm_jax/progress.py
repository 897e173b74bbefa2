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
    """The stages of a job; `run(i)` reports stage i's progress while it runs.

    The time left is the remaining cost at the rate of the stages that did work (called their
    `progress`); a stage that found its work done (a finished run reused) does not count, so a
    resumed job does not promise too little time."""

    BAR_WIDTH = 24

    def __init__(self, stages: Sequence[Stage], stream: TextIO | None = None, *, clock=time.time):
        self.stages = list(stages)
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.clock = clock
        self.start = clock()
        self.remaining_cost = sum(s.cost for s in self.stages)
        self.work_seconds = 0.0  # time and cost of the finished stages that did work
        self.work_cost = 0.0
        self._last_draw = 0.0

    def _seconds_left(self, seconds: float, cost: float, remaining: float) -> float | None:
        return seconds / cost * remaining if cost > 0 else None

    def _prefix(self, index: int) -> str:
        return f"[{index + 1}/{len(self.stages)}] {self.stages[index].name}"

    @contextmanager
    def run(self, index: int) -> Iterator[ProgressFn]:
        """Stage `index`: yields `progress(done, total)` for the stage's code to call."""
        stage, stage_start = self.stages[index], self.clock()
        worked = False

        def progress(done: int, total: int) -> None:
            nonlocal worked
            worked = True
            if not self.interactive or self.clock() - self._last_draw < 0.2 and done < total:
                return
            self._last_draw = now = self.clock()
            fraction = min(done / max(total, 1), 1.0)
            partial = stage.cost * fraction
            left = self._seconds_left(
                self.work_seconds + now - stage_start, self.work_cost + partial,
                self.remaining_cost - partial,
            )
            filled = int(self.BAR_WIDTH * fraction)
            bar = "█" * filled + "·" * (self.BAR_WIDTH - filled)
            eta = f", job {duration(left)} left" if left is not None else ""
            line = f"{self._prefix(index)} {bar} {done}/{total}{eta}"
            self.stream.write("\r" + line[:150].ljust(80))
            self.stream.flush()

        yield progress
        now = self.clock()
        self.remaining_cost -= stage.cost
        if worked:
            self.work_seconds += now - stage_start
            self.work_cost += stage.cost
        left = self._seconds_left(self.work_seconds, self.work_cost, self.remaining_cost)
        tail = f"; {duration(left)} left" if left is not None and index + 1 < len(self.stages) else ""
        done_before = "" if worked else ", done before"
        line = (
            f"{self._prefix(index)}: {duration(now - stage_start)}{done_before} "
            f"(elapsed {duration(now - self.start)}{tail})"
        )
        self.stream.write(("\r" + line.ljust(80) if self.interactive else line) + "\n")
        self.stream.flush()
