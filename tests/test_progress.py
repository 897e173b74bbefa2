"""The progress lines of long jobs: one per stage off a terminal, a bar on one, and time left."""

import io

from mcm_jax import progress


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_duration_formats():
    assert progress.duration(7.4) == "7s"
    assert progress.duration(245) == "4m05s"
    assert progress.duration(3720) == "1h02m"
    assert progress.duration(-3) == "0s"


def test_one_line_per_stage_with_time_left_from_the_measured_rate():
    clock, out = _Clock(), io.StringIO()
    plan = progress.Plan(
        [progress.Stage("teacher: train", 100.0), progress.Stage("teacher: evaluate", 300.0)],
        out, clock=clock,
    )
    with plan.run(0) as report:
        for step in range(1, 11):
            clock.now += 2.0
            report(step, 10)
    assert out.getvalue() == "[1/2] teacher: train: 20s (elapsed 20s; 1m00s left)\n"
    with plan.run(1) as report:
        clock.now += 30.0
        report(1, 2)
    lines = out.getvalue().splitlines()
    assert lines[1] == "[2/2] teacher: evaluate: 30s (elapsed 50s)"
    assert len(lines) == 2  # nothing between stage ends off a terminal


def test_a_terminal_gets_a_bar_redrawn_in_place_then_the_stage_line():
    clock, out = _Clock(), _Terminal()
    plan = progress.Plan([progress.Stage("student", 10.0), progress.Stage("eval", 10.0)], out,
                         clock=clock)
    with plan.run(0) as report:
        clock.now += 5.0
        report(1, 2)
    text = out.getvalue()
    assert "\r[1/2] student " in text and " 1/2, job 15s left" in text
    assert text.endswith("\n") and text.count("\n") == 1
    assert "[1/2] student: 5s (elapsed 5s; 5s left)" in text.splitlines()[-1]


def test_a_stage_that_reports_nothing_still_counts_as_done():
    clock, out = _Clock(), io.StringIO()
    plan = progress.Plan([progress.Stage("a", 1.0), progress.Stage("b", 3.0)], out, clock=clock)
    with plan.run(0):
        clock.now += 4.0
    assert out.getvalue() == "[1/2] a: 4s (elapsed 4s; 12s left)\n"
