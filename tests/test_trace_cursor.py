"""The link's trace cursor answers exactly as the trace's binary search, on the shipped traces."""
from __future__ import annotations

import numpy as np
import pytest

from cfqa_sim.traces import TraceCursor, find_trace, load_trace

SHIPPED = ["cellular/Verizon-LTE-short.up", "cellular/TMobile-UMTS-driving.up"]


@pytest.fixture(scope="module", params=SHIPPED)
def trace(request):
    return load_trace(find_trace(request.param))


def _monotone(trace, rng: np.random.Generator, n: int, offset_s: float) -> list[float]:
    """Forward query times as a link makes them: repeats, sub-millisecond steps, steps landing
    exactly on opportunities (the search's tolerance), jumps of seconds and across loops."""
    t = offset_s
    out = []
    for kind in rng.integers(0, 6, size=n):
        if kind == 0:
            pass                                             # the same time again
        elif kind == 1:
            t += float(rng.uniform(0.0, 0.002))              # within a few opportunities
        elif kind == 2:
            j = trace.index_at(t) + int(rng.integers(0, 50))
            t = max(t, trace.time_s(j))                      # exactly on an opportunity
        elif kind == 3:
            t += float(rng.exponential(10.0))                # an idle node's next frame
        elif kind == 4:
            t += float(rng.uniform(0.5, 2.0)) * trace.duration_s  # into a later loop
        else:
            t += 1e-9                                        # inside the millisecond tolerance
        out.append(t)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_monotone_queries_match_the_search(trace, seed):
    rng = np.random.default_rng(seed)
    offset = float(rng.uniform(0.0, trace.duration_s))
    cursor = TraceCursor(trace)
    times = _monotone(trace, rng, 5000, offset)
    assert all(b >= a for a, b in zip(times, times[1:]))
    assert [cursor.index_at(t) for t in times] == [trace.index_at(t) for t in times]


@pytest.mark.parametrize("seed", range(4))
def test_non_monotone_queries_match_the_search(trace, seed):
    """Time going backwards (another loop, or earlier in the same one) falls back to a search."""
    rng = np.random.default_rng(100 + seed)
    offset = float(rng.uniform(0.0, trace.duration_s))
    forward = _monotone(trace, rng, 3000, offset)
    shuffled = list(forward)
    rng.shuffle(shuffled)
    # Mostly forward with steps back: small (same millisecond), within the loop, to earlier loops.
    mixed = []
    for t in forward:
        mixed.append(t)
        r = rng.random()
        if r < 0.1:
            mixed.append(t - float(rng.uniform(0.0, 0.002)))
        elif r < 0.2:
            mixed.append(max(0.0, t - float(rng.uniform(0.0, trace.duration_s))))
        elif r < 0.25:
            mixed.append(float(rng.uniform(0.0, 3 * trace.duration_s)))
    for times in (shuffled, mixed, forward[::-1]):
        cursor = TraceCursor(trace)
        assert [cursor.index_at(t) for t in times] == [trace.index_at(t) for t in times]


def test_every_opportunity_and_the_loop_end(trace):
    """Each opportunity's own time, just before and just after it, in order over two loops."""
    cursor = TraceCursor(trace)
    js = range(0, 2 * trace.count + 3, 7)
    for j in js:
        t = trace.time_s(j)
        for q in (t - 1e-3, t - 1e-10, t, t + 1e-10, t + 1e-3):
            assert cursor.index_at(q) == trace.index_at(q), (j, q)
    end = trace.duration_s
    for q in (end - 1e-4, end, end + 1e-12, end + 1e-4):
        assert TraceCursor(trace).index_at(q) == trace.index_at(q)


def test_time_of_an_index_matches(trace):
    cursor = TraceCursor(trace)
    rng = np.random.default_rng(7)
    for j in rng.integers(0, 5 * trace.count, size=2000).tolist():
        assert cursor.time_s(j) == trace.time_s(j)
