"""Capacity traces: mahimahi/CSV loading, looping lookups, synthetic generators, errors."""
from __future__ import annotations

import numpy as np
import pytest

from cfqa_core.cli import main
from cfqa_core.errors import ScenarioError
from cfqa_sim.traces import (
    MTU_BYTES,
    SHIPPED_TRACES_DIR,
    Trace,
    find_trace,
    load_csv,
    load_mahimahi,
    load_trace,
    shipped_traces,
    synthetic,
    write_mahimahi,
)

CELLULAR = SHIPPED_TRACES_DIR / "cellular"


def test_shipped_traces_are_found_by_name_and_unknown_names_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing beside the working directory
    assert shipped_traces() == ["cellular/TMobile-UMTS-driving.up", "cellular/Verizon-LTE-short.up"]
    assert find_trace("cellular/Verizon-LTE-short.up") == CELLULAR / "Verizon-LTE-short.up"
    with pytest.raises(ScenarioError,
                       match=r"file not found: cellular/absent\.up "
                             r"\(neither a path nor a shipped trace: cellular/TMobile"):
        find_trace("cellular/absent.up")


def test_real_traces_match_their_readme():
    lte = load_mahimahi(CELLULAR / "Verizon-LTE-short.up")
    umts = load_mahimahi(CELLULAR / "TMobile-UMTS-driving.up")
    raw = np.loadtxt(CELLULAR / "Verizon-LTE-short.up", dtype=np.int64)
    assert lte.count == raw.size and lte.period_ms == raw[-1] == 140000
    assert lte.mean_mbps == pytest.approx(5.95, abs=0.01)
    assert umts.duration_s == pytest.approx(931.2, abs=0.1)
    assert umts.mean_mbps == pytest.approx(0.94, abs=0.01)


def test_index_and_time_loop_over_periods():
    tr = Trace(np.array([2, 2, 5, 9]), 10)
    assert tr.index_at(0.0) == 0
    assert tr.index_at(0.002) == 0            # an opportunity at exactly t is usable
    assert tr.index_at(0.0021) == 2
    assert tr.index_at(0.0095) == 4           # past the last one: first of the next loop
    assert tr.time_s(4) == pytest.approx(0.012)
    assert tr.time_s(4 * 7 + 3) == pytest.approx(0.079)
    assert tr.index_at(0.079) == 31
    assert tr.mean_mbps == pytest.approx(4 * MTU_BYTES * 8 / 0.010 / 1e6)


def test_capacity_per_bin_counts_opportunities():
    tr = Trace(np.array([2, 2, 5, 9]), 10)
    cap = tr.capacity_mbps(np.array([0.0, 0.005, 0.010, 0.020]))
    # [0,5ms): two packets; [5,10ms): two; [10,20ms): four
    assert cap == pytest.approx(np.array([2, 2, 4]) * MTU_BYTES * 8 / np.array([0.005, 0.005, 0.010]) / 1e6)


def test_mahimahi_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.up"
    bad.write_text("1\n4\n3\n")
    with pytest.raises(ScenarioError, match=r"bad\.up:3: timestamps not monotonic"):
        load_mahimahi(bad)
    bad.write_text("1\nx2\n")
    with pytest.raises(ScenarioError, match=r"bad\.up:2: not an integer"):
        load_mahimahi(bad)
    bad.write_text("\n\n")
    with pytest.raises(ScenarioError, match="empty trace"):
        load_mahimahi(bad)
    with pytest.raises(ScenarioError, match="trace file not found"):
        load_trace(tmp_path / "absent.up")


def test_csv_trace_holds_each_rate_until_the_next_row(tmp_path):
    f = tmp_path / "rates.csv"
    f.write_text("time_s,Mbit/s\n0,1.2\n1,2.4\n")
    tr = load_trace(f)
    # 1.2 Mbit/s for 1 s = 100 packets, then 2.4 Mbit/s for one more second = 200 packets
    assert tr.period_ms == 2000
    assert tr.count == 300
    assert tr.index_at(1.001) == 100  # the 100th packet leaves at ms 1000
    f.write_text("0,1\n2,1\n1,1\n")
    with pytest.raises(ScenarioError, match=r"rates\.csv:3: timestamps not monotonic"):
        load_csv(f)


def test_synthetic_kinds_have_the_requested_rates():
    const = synthetic("constant", capacity_mbps=12.0, duration_s=1.0)
    assert const.count == 1000  # 12 Mbit/s = 1000 packets of 1500 bytes per second
    steps = synthetic("steps", levels_mbps=(1.2, 2.4), step_s=1.0, duration_s=2.0)
    assert steps.index_at(1.001) == 100 and steps.count == 300
    onoff = synthetic("onoff", capacity_mbps=12.0, on_s=1.0, off_s=1.0, duration_s=4.0)
    t = onoff.times_ms
    in_off = ((t - 1) // 1000) % 2 == 1
    assert in_off.sum() <= 1  # only the marker that pins the period to the end
    walk_a = synthetic("random_walk", capacity_mbps=3.0, sigma=0.5, step_s=1.0, duration_s=20.0, seed=5)
    walk_b = synthetic("random_walk", capacity_mbps=3.0, sigma=0.5, step_s=1.0, duration_s=20.0, seed=5)
    walk_c = synthetic("random_walk", capacity_mbps=3.0, sigma=0.5, step_s=1.0, duration_s=20.0, seed=6)
    assert np.array_equal(walk_a.times_ms, walk_b.times_ms)
    assert not np.array_equal(walk_a.times_ms, walk_c.times_ms)
    with pytest.raises(ScenarioError, match="unknown synthetic trace kind"):
        synthetic("sawtooth")


def test_written_trace_reads_back_identically(tmp_path):
    tr = synthetic("steps", levels_mbps=(0.5, 3.0), step_s=0.5, duration_s=3.0)
    write_mahimahi(tr, tmp_path / "s.up")
    back = load_mahimahi(tmp_path / "s.up")
    assert back.period_ms == tr.period_ms == 3000
    assert np.array_equal(back.times_ms, tr.times_ms)


def test_trace_gen_command(tmp_path, capsys):
    out = tmp_path / "c.up"
    assert main(["trace", "gen", "constant", "--capacity-mbps", "6", "--duration-s", "2", "--out", str(out)]) == 0
    tr = load_mahimahi(out)
    assert tr.count == 1000 and tr.period_ms == 2000
    assert main(["trace", "info", str(out)]) == 0
    assert "mean 6.000 Mbit/s" in capsys.readouterr().out
    assert main(["trace", "gen", "zigzag", "--out", str(out)]) == 2
    assert "unknown synthetic trace kind 'zigzag'" in capsys.readouterr().err
