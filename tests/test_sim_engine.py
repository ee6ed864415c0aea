"""Nodes, cloud and engine on a synthetic benchmark table (test data made here)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cfqa_core.errors import PolicyError, ScenarioError
from cfqa_edge.policies.registry import POLICIES, PolicyParams
from cfqa_sim.engine import simulate
from cfqa_sim.node import ThroughputEstimator
from cfqa_sim.outcomes import ReplayProvider
from cfqa_sim.records import DROP_REASONS
from cfqa_sim.scenario import load_scenario
from cfqa_sim.table import BenchmarkTable
from tests.support.sim_tables import SYNTHETIC_QPS, synthetic_table, tiny_scenario


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "table.parquet"
    synthetic_table(images=6).to_parquet(path)
    return path


def load(table_path, **fields):
    return load_scenario(data=tiny_scenario(table_path, **fields))


def test_table_is_indexed_from_best_to_worst_quality(table_path):
    table = BenchmarkTable.load(table_path)
    c = table.codec("cls", "hevc")
    assert c.rate_points == SYNTHETIC_QPS
    assert np.all(np.diff(c.sent_bytes.mean(axis=0)) < 0)
    assert set(table.metric_names) == {"cosine", "proxy", "mse", "psnr"}
    ids, ref = table.images("cls")
    assert np.all(ref == 1.0)
    # what is sent is the bitstream plus its decode sidecar
    raw = synthetic_table(images=6)
    row = raw[(raw["task"] == "cls") & (raw["rate_point"] == SYNTHETIC_QPS[1])].iloc[0]
    i = list(ids).index(row["image_id"])
    assert c.sent_bytes[i, 1] == row["bytes"] + row["meta_bytes"]


def test_incomplete_or_malformed_tables_are_rejected(tmp_path):
    raw = synthetic_table(images=3)
    hole = raw.drop(raw[(raw["task"] == "seg") & (raw["image_id"] == "img0001") & (raw["rate_point"] == 30)].index)
    table = BenchmarkTable(hole)
    with pytest.raises(ScenarioError, match=r"seg/hevc: no row for image .*img0001.* at rate point 30"):
        table.codec("seg", "hevc")
    assert table.codec("cls", "hevc").sent_bytes.shape == (3, len(SYNTHETIC_QPS))  # complete pairs still serve
    raw.drop(columns=["decode_s"]).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ScenarioError, match=r"lacks column\(s\): decode_s"):
        BenchmarkTable.load(tmp_path / "t.parquet")
    with pytest.raises(ScenarioError, match="benchmark table not found"):
        BenchmarkTable.load(tmp_path / "absent.parquet")


def test_same_seed_same_results_and_seed_matters(table_path):
    a = simulate(load(table_path), progress=False).frames()
    b = simulate(load(table_path), progress=False).frames()
    c = simulate(load(table_path, seed=8), progress=False).frames()
    assert len(a) > 100
    assert a.equals(b)
    assert not np.array_equal(a["t_capture"].to_numpy(), c["t_capture"].to_numpy()[: len(a)])


def test_policies_see_the_same_arrivals_and_images(table_path):
    loaded = load(table_path)
    hq = simulate(loaded, "hq", progress=False).frames()
    lq = simulate(loaded, "lq", progress=False).frames()
    for col in ("node", "frame", "t_capture", "image_id"):
        assert np.array_equal(hq[col].to_numpy(), lq[col].to_numpy())
    assert set(hq["rate_point"]) == {SYNTHETIC_QPS[0]} and set(lq["rate_point"]) == {SYNTHETIC_QPS[-1]}
    assert lq["bytes"].sum() < hq["bytes"].sum() / 3


def test_frame_times_are_consistent(table_path):
    df = simulate(load(table_path), progress=False).frames()
    done = df[df["status"].isin(["ok", "late"])]
    assert len(done) > 0
    assert np.all(done["t_encode_done"] >= done["t_encode_start"])
    assert np.all(done["t_send_start"] >= done["t_encode_done"] - 1e-12)
    assert np.allclose(done["t_cloud_arrive"], done["t_send_done"] + 0.010)   # delay_ms = 10
    assert np.all(done["t_cloud_start"] >= done["t_cloud_arrive"] - 1e-12)
    assert np.allclose(done["t_cloud_done"] - done["t_cloud_start"], done["cloud_s"])
    assert np.allclose(done["t_result"], done["t_cloud_done"] + 0.010)
    late = done["latency_s"] > 0.5
    assert np.array_equal(late.to_numpy(), (done["status"] == "late").to_numpy())
    # bytes come from the table for (image, rate point)
    table = BenchmarkTable.load(table_path)
    c = table.codec("cls", "hevc")
    ids = list(table.images("cls")[0])
    for _, row in done.head(20).iterrows():
        assert row["bytes"] == c.sent_bytes[ids.index(row["image_id"]), c.index[row["rate_point"]]]


def test_bounded_queue_drops_when_full_and_stale_frames_are_dropped(table_path):
    slow = {"up": {"trace": {"kind": "constant", "capacity_mbps": 0.05, "duration_s": 10.0}, "shared": True}}
    nodes = [{"name": "n", "count": 2, "link": "up", "task": "cls", "arrivals": {"fps": 5.0},
              "deadline_s": 1.0, "queue_frames": 2}]
    df = simulate(load(table_path, links=slow, nodes=nodes), progress=False).frames()
    reasons = df.loc[df["status"] == "dropped", "drop_reason"].value_counts()
    assert reasons.get("queue_full", 0) > 0 and reasons.get("stale", 0) > 0
    assert set(df["drop_reason"]) <= set(DROP_REASONS)
    # every frame has exactly one fate
    assert (df["status"] != "unfinished").sum() + (df["status"] == "unfinished").sum() == len(df)
    nodes[0]["drop_stale"] = False
    df2 = simulate(load(table_path, links=slow, nodes=nodes), progress=False).frames()
    assert "stale" not in set(df2["drop_reason"])


def test_cloud_queue_and_servers(table_path):
    timing = {"cloud_service_s": {"cls": 0.2}, "edge_backbone_s": {"cls": 0.0}}
    fast = {"up": {"trace": {"kind": "constant", "capacity_mbps": 50.0, "duration_s": 10.0}, "shared": True}}
    one = simulate(load(table_path, timing=timing, links=fast), progress=False)
    four = simulate(load(table_path, timing=timing, links=fast, cloud={"servers": 4}), progress=False)
    wait = lambda r: np.nanmean(r.columns["t_cloud_start"] - r.columns["t_cloud_arrive"])  # noqa: E731
    # 12 frames/s at >= 0.2 s each overloads one server; four keep up
    assert wait(one) > 1.0 > 0.1 > wait(four)
    assert one.cloud_busy_s / one.sim_end_s == pytest.approx(1.0, abs=0.1)


def test_poisson_and_periodic_arrival_counts(table_path):
    nodes = [{"name": "p", "count": 10, "link": "up", "arrivals": {"kind": "poisson", "fps": 2.0}},
             {"name": "f", "count": 2, "link": "up", "arrivals": {"kind": "periodic", "fps": 2.0}}]
    r = simulate(load(table_path, nodes=nodes, duration_s=50.0), progress=False)
    g = r.columns["group"]
    assert (g == 0).sum() == pytest.approx(10 * 2 * 50, rel=0.1)
    assert (g == 1).sum() == 2 * 2 * 50


def test_harmonic_mean_estimator():
    est = ThroughputEstimator(window=3, initial_bps=5.0)
    assert est.estimate_bps == 5.0
    for x in (1.0, 2.0, 4.0, 4.0):
        est.add(x)
    assert est.estimate_bps == pytest.approx(3 / (1 / 2 + 1 / 4 + 1 / 4))


class SearchParams(PolicyParams):
    target: float = 0.999


class SearchPolicy:
    """Test policy: the cheapest rate point whose cosine stays above a target (trial encodes)."""

    Params = SearchParams
    name = "search"
    made: list = []

    def __init__(self, params: SearchParams) -> None:
        self.target = params.target
        self.seen = []
        SearchPolicy.made.append(self)

    def decide(self, ctx):
        self.seen.append((ctx.throughput_bps, ctx.time_left_s))
        best = ctx.ladder[0]
        for rp in ctx.ladder:
            if ctx.encode(rp).metrics["cosine"] >= self.target:
                best = rp
            else:
                break
        cos = ctx.encode(best).metrics["cosine"]
        return ctx.decision(best, cos, cos >= self.target)


def test_policy_interface_counts_trial_encodes(table_path, monkeypatch):
    monkeypatch.setitem(POLICIES, "search", SearchPolicy)
    loaded = load(table_path, policy="search")
    SearchPolicy.made.clear()  # validation built one to check the name
    r = simulate(loaded, progress=False)
    c = r.columns
    enc = c["encodes"][c["rate_point"] >= 0]
    assert enc.mean() > 1.0 and enc.max() <= len(SYNTHETIC_QPS)
    # edge time = backbone (0.02) + per trial: encode (>= 10 ms) + local decode (2 ms) + metric (1 ms)
    assert np.all(c["edge_s"][c["rate_point"] >= 0] >= 0.02 + enc * 0.013 - 1e-9)
    assert np.isfinite(c["metric"][c["rate_point"] >= 0]).all()
    assert len(SearchPolicy.made) == 3  # one instance per node
    seen = [s for p in SearchPolicy.made for s in p.seen]
    assert seen[0][0] is None  # no throughput sample before the first transfer
    assert any(bps is not None and bps > 0 for bps, _ in seen)
    assert all(0 < left <= 0.5 + 1e-9 for _, left in seen)  # stale frames never reach the policy


def test_registered_policies_run_in_the_simulator(table_path):
    policies = {
        "target": {"name": "cfqa-target", "params": {"metric": "cosine", "threshold": 0.999}},
        "oracle": {"name": "oracle", "params": {}},
        "link": {"name": "bandwidth", "params": {}},
    }
    loaded = load(table_path, policies=policies, policy="target", baseline_policy=None)
    for label in policies:
        r = simulate(loaded, label, progress=False)
        c = r.columns
        sent = c["rate_point"] >= 0
        assert sent.sum() > 50
        assert set(c["rate_point"][sent]) <= set(SYNTHETIC_QPS)
    # the oracle keeps every cls output unchanged (synthetic cls is correct iff cosine >= 0.999)
    r = simulate(loaded, "oracle", progress=False)
    delivered = np.isin(r.columns["status"], [1, 2])
    assert r.columns["task_score"][delivered].min() == 1.0


def test_policy_with_a_rate_point_off_the_ladder_fails(table_path):
    loaded = load(table_path, policies={"bad": {"name": "fixed", "params": {"rate_point": 23}}}, policy="bad",
                  baseline_policy=None)
    with pytest.raises(PolicyError, match="rate point 23 is not on the hevc ladder"):
        simulate(loaded, progress=False)


class Interrupting:
    """Test policy: Ctrl-C on its 40th frame."""

    Params = PolicyParams
    name = "interrupting"
    calls = 0

    def __init__(self, params) -> None:
        pass

    def decide(self, ctx):
        Interrupting.calls += 1
        if Interrupting.calls == 40:
            raise KeyboardInterrupt
        return ctx.decision(ctx.ladder[0])


def test_ctrl_c_keeps_a_partial_result(table_path, monkeypatch):
    monkeypatch.setitem(POLICIES, "interrupting", Interrupting)
    Interrupting.calls = 0
    r = simulate(load(table_path, policy="interrupting"), progress=False)
    assert r.partial
    assert 39 <= r.columns["node"].size < 200
    assert r.sim_end_s < 20.0
    assert not math.isnan(r.columns["t_capture"][0])


class TimedReplay(ReplayProvider):
    """A provider that measures its own edge and cloud times (as the live one does)."""

    def extract(self, frame):
        return 0.5

    def infer(self, frame, codec, rate_point):
        return super().infer(frame, codec, rate_point)._replace(service_s=0.25)


def test_provider_times_override_the_profile(table_path):
    loaded = load(table_path)
    r = simulate(loaded, provider=TimedReplay(loaded.table()), progress=False)
    c = r.columns
    enc = c["rate_point"] >= 0
    assert np.all(c["edge_s"][enc] >= 0.5)
    table = loaded.table().codec("cls", "hevc")
    served = ~np.isnan(c["cloud_s"])
    decode = table.arrays.decode_s[c["image"][served], [table.index[rp] for rp in c["rate_point"][served]]]
    assert np.allclose(c["cloud_s"][served], decode + 0.25)
