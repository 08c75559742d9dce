"""Learned completion times: the planning sum equals the per-task expected waits it replaces."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kling_async._polling import Completions

# No example database: the suite must leave no `.hypothesis/` folder behind in the repository.
FAST = settings(max_examples=100, deadline=None, database=None)

_times = st.floats(min_value=0.01, max_value=200.0, allow_nan=False)
_task = st.tuples(st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0)), _times)
_samples = st.lists(_times, min_size=3, max_size=40)


def _absolute(tasks: list[tuple[float | None, float]]) -> list[tuple[float | None, float]]:
    """(started, seen since start) as (started, seen): the task seen running at or after its start."""
    return [(started, seen if started is None else started + seen) for started, seen in tasks]


@FAST
@given(
    samples=_samples,
    tasks=st.lists(_task, max_size=30),
    later=st.lists(st.floats(min_value=0.0, max_value=300.0), min_size=1, max_size=5),
)
def test_total_waited_is_the_sum_of_each_tasks_waited_at_every_time(
    samples: list[float], tasks: list[tuple[float | None, float]], later: list[float]
) -> None:
    completions = Completions(samples)
    absolute = _absolute(tasks)
    total = completions.total_waited(absolute)
    for step in later:
        now = max((seen for _, seen in absolute), default=0.0) + step
        expected = 0.0
        for started, seen in absolute:
            if started is None:
                expected += (now - seen) / completions.median
            else:
                expected += completions.waited(seen - started, now - started)
        assert total(now) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@FAST
@given(
    samples=_samples,
    tasks=st.lists(_task, min_size=1, max_size=30),
    steps=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=2, max_size=8),
)
def test_total_waited_never_falls_as_time_goes_on(
    samples: list[float], tasks: list[tuple[float | None, float]], steps: list[float]
) -> None:
    # The tracker finds the next sweep by bisecting a grid of times on this sum: it must not fall.
    absolute = _absolute(tasks)
    total = Completions(samples).total_waited(absolute)
    start = max(seen for _, seen in absolute)
    times = [start + sum(steps[: k + 1]) for k in range(len(steps))]
    sums = [total(now) for now in times]
    for earlier, later in itertools.pairwise(sums):
        assert later >= earlier - 1e-9 * max(1.0, abs(earlier))
