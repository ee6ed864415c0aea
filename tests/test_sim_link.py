"""The trace-driven link: exact processor sharing, looping, outages, loss, delay."""
from __future__ import annotations

import math

import numpy as np
import pytest
import simpy

from cfqa_sim.link import Link, outage_process
from cfqa_sim.traces import MTU_BYTES, SHIPPED_TRACES_DIR, Trace, load_mahimahi, synthetic

LTE = SHIPPED_TRACES_DIR / "cellular" / "Verizon-LTE-short.up"

# Opportunities at 2, 2, 5 and 9 ms, looping every 10 ms (so 12, 12, 15, 19, 22, ...).
HAND = Trace(np.array([2, 2, 5, 9]), 10)


def run_transfers(link: Link, env: simpy.Environment, jobs: dict[str, tuple[float, int]]) -> dict:
    """Start each job (start time s, bytes) and collect its Delivery."""
    out = {}

    def job(name, start, nbytes):
        yield env.timeout(start)
        out[name] = yield link.transfer(nbytes)

    for name, (start, nbytes) in jobs.items():
        env.process(job(name, start, nbytes))
    env.run()
    return out


def test_processor_sharing_matches_hand_computation():
    env = simpy.Environment()
    link = Link(env, HAND)
    d = run_transfers(link, env, {"A": (0.0, 3000), "B": (0.0, 1500), "C": (0.006, 4500)})
    # A and B share both 2 ms packets (750 B each per packet): B has its 1500 B after the
    # second one, at 2 ms. A, alone, gets the 5 ms packet: done at 5 ms.
    assert d["B"].done_s == pytest.approx(0.002)
    assert d["A"].done_s == pytest.approx(0.005)
    # C (3 packets) joins at 6 ms: 9 ms, then the next loop's 12 ms and 12 ms.
    assert d["C"].done_s == pytest.approx(0.012)
    assert link.wire_bytes == 9000


def test_late_joiner_shares_capacity_fairly():
    env = simpy.Environment()
    link = Link(env, synthetic("constant", capacity_mbps=12.0, duration_s=1.0))  # 1 packet per ms
    d = run_transfers(link, env, {"A": (0.0, 15000), "B": (0.004, 15000)})
    # A alone takes the 1, 2, 3 ms packets (4500 B); from 4 ms each gets 750 B per packet,
    # so A needs 14 more (done at 17 ms); B then has 10500 B and takes 18, 19, 20 ms alone.
    assert d["A"].done_s == pytest.approx(0.017)
    assert d["B"].done_s == pytest.approx(0.020)


def test_transfer_time_follows_the_trace_not_its_mean_rate():
    trace = load_mahimahi(LTE) if LTE.is_file() else synthetic("random_walk", duration_s=140.0, seed=1)
    start, nbytes = trace.duration_s - 0.5, 1_500_000  # crosses the loop boundary
    env = simpy.Environment()
    link = Link(env, trace)
    done = run_transfers(link, env, {"X": (start, nbytes)})["X"].done_s
    # Independent computation: the ceil(B / MTU)-th opportunity at or after the start.
    times = np.concatenate([trace.times_ms, trace.times_ms + trace.period_ms]) / 1000.0
    ready = times[times >= start - 1e-9]
    expected = ready[math.ceil(nbytes / MTU_BYTES) - 1]
    assert done == pytest.approx(expected)
    assert abs((done - start) - nbytes * 8 / (trace.mean_mbps * 1e6)) > 0.05


def test_outage_wastes_opportunities_and_stalls_transfers():
    env = simpy.Environment()
    link = Link(env, HAND)
    env.process(outage_process(env, [link], 0.003, 0.005))  # down over [3 ms, 8 ms)
    d = run_transfers(link, env, {"E": (0.0, 4500)})
    # 2 and 2 ms before the outage (3000 B), the 5 ms packet is lost to it, then 9 ms.
    assert d["E"].done_s == pytest.approx(0.009)
    env = simpy.Environment()
    link = Link(env, HAND)
    env.process(outage_process(env, [link], 0.0, 0.006))
    d = run_transfers(link, env, {"D": (0.001, 1500)})
    assert d["D"].done_s == pytest.approx(0.009)


def test_offset_starts_the_trace_later():
    env = simpy.Environment()
    link = Link(env, HAND, offset_s=0.003)  # simulation t=0 is trace time 3 ms
    d = run_transfers(link, env, {"A": (0.0, 3000)})
    assert d["A"].done_s == pytest.approx(0.006)  # trace 5 ms and 9 ms


def test_propagation_delay_and_retransmission_penalty():
    env = simpy.Environment()
    link = Link(env, synthetic("constant", capacity_mbps=12.0, duration_s=1.0), delay_s=0.05,
                loss_rate=0.2, rng=np.random.default_rng(3))
    jobs = {f"j{i}": (0.1 * i, 15000) for i in range(300)}
    d = run_transfers(link, env, jobs)
    extra = np.array([(x.wire_bytes - 15000) / MTU_BYTES for x in d.values()])
    # Negative binomial: 10 packets at 20 % loss resend 10 * 0.2 / 0.8 = 2.5 on average.
    assert extra.mean() == pytest.approx(2.5, abs=0.5)
    for x in d.values():
        resent = x.wire_bytes > 15000
        assert x.arrive_s - x.done_s == pytest.approx(0.15 if resent else 0.05)
        assert not x.lost


def test_drop_mode_loses_whole_frames_at_the_packet_rate():
    env = simpy.Environment()
    link = Link(env, synthetic("constant", capacity_mbps=12.0, duration_s=1.0), loss_rate=0.1,
                loss_mode="drop", rng=np.random.default_rng(4))
    d = run_transfers(link, env, {f"j{i}": (0.1 * i, 15000) for i in range(400)})
    lost = np.mean([x.lost for x in d.values()])
    assert lost == pytest.approx(1 - 0.9 ** 10, abs=0.08)
    assert all(x.wire_bytes == 15000 for x in d.values())
