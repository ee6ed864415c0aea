"""Rate-control policies on synthetic tables with known answers, and on the real HEVC codec."""
from __future__ import annotations

import math

import numpy as np
import pytest

import cfqa_sim.ratecontrol.oracle  # noqa: F401  (registers the offline-only oracle policy)
from cfqa_core.errors import PolicyError
from cfqa_core.fidelity import within_tolerance
from cfqa_edge.policies import (
    Decision,
    EncodeOutcome,
    PolicyContext,
    as_decision,
    get_policy,
    policy_names,
)
from cfqa_sim.ratecontrol.replay import replay_arrays, replay_context
from tests.support.policy_frames import QPS, synthetic_frame


def arrays(difficulty, **kw):
    return replay_arrays(synthetic_frame(np.asarray(difficulty, dtype=float), **kw), kw.get("task", "cls"), "hevc")


def replay(policy, arr, **ctx_kw):
    """Run ``policy`` over every image of ``arr`` in order; returns decisions and contexts."""
    out = []
    for i in range(arr.n_images):
        ctx = replay_context(arr, i, frame_idx=i, **ctx_kw)
        out.append((as_decision(policy.decide(ctx), ctx), ctx))
    return out


def cheapest_meeting(arr, metric: str, thr: float) -> np.ndarray:
    """Ladder index of the cheapest rate point with metric >= thr per image (brute force)."""
    m = arr.metric(metric)
    return np.array([max([r for r in range(m.shape[1]) if m[i, r] >= thr], default=0) for i in range(m.shape[0])])


@pytest.fixture
def random_arr():
    return arrays(np.exp(np.random.default_rng(3).normal(0, 0.8, 40)))


# ---- registry and parameters ------------------------------------------------------------------


def test_registry_lists_the_policies_and_rejects_bad_names_and_params():
    assert {"fixed", "cfqa-target", "bandwidth", "hybrid", "oracle"} <= set(policy_names())
    with pytest.raises(PolicyError, match="unknown policy 'fastest'"):
        get_policy("fastest")
    with pytest.raises(PolicyError, match="unknown parameter 'treshold'"):
        get_policy("cfqa-target", treshold=0.99)
    with pytest.raises(PolicyError, match="at most one of threshold or target_accuracy_drop"):
        get_policy("cfqa-target", threshold=0.99, target_accuracy_drop=1.0)
    assert get_policy("cfqa-target").plans is not None  # no target: the shipped rate plans
    with pytest.raises(PolicyError, match="needs a calibration file"):
        get_policy("cfqa-target", target_accuracy_drop=1.0)
    with pytest.raises(PolicyError, match="'max_encodes'"):
        get_policy("cfqa-target", threshold=0.99, max_encodes=0)
    with pytest.raises(PolicyError, match="'search'"):
        get_policy("hybrid", threshold=0.99, search="random")


def test_threshold_outside_the_metric_range_is_a_policy_error():
    with pytest.raises(PolicyError, match=r"outside the range \[-1, 1\] of metric 'cosine'"):
        get_policy("cfqa-target", threshold=1.5)
    with pytest.raises(PolicyError, match=r"outside the range \[0, inf\] of metric 'mse'"):
        get_policy("cfqa-target", metric="mse", threshold=-0.1)
    with pytest.raises(PolicyError, match="unknown metric 'lpips'"):
        get_policy("cfqa-target", metric="lpips", threshold=0.5)
    # A table-only metric works once its direction is given.
    p = get_policy("cfqa-target", metric="learned_score", threshold=0.5, higher_is_better=True)
    assert p.metric == "learned_score"


def test_params_from_strings_are_coerced():
    p = get_policy("cfqa-target", threshold="0.995", max_encodes="3", search="bisect")
    assert p.params.threshold == 0.995 and p.params.max_encodes == 3
    assert get_policy("fixed", rate_point="14").rate_point(QPS) == 14


# ---- the context -----------------------------------------------------------------------------


def _ctx(encode, ladder=(10, 20, 30), metric_s=0.5, judge=None):
    return PolicyContext(node_id=0, frame_idx=0, task="cls", codec="hevc", ladder=ladder, now_s=0.0,
                         time_left_s=1.0, throughput_bps=None, queue_frames=0, previous_rate_point=None,
                         rng=np.random.default_rng(0), encode=encode, metric_s=metric_s, judge=judge)


def test_context_counts_each_encode_once_and_charges_assessment_separately():
    calls = []

    def encode(rp):
        calls.append(rp)
        return EncodeOutcome(rp, 1000 - rp, 0.25, {"cosine": 1 - rp / 1000}, 0.125)

    ctx = _ctx(encode)
    out = ctx.encode(20, assess=False)
    assert out.metrics == {} and ctx.encodes == 1 and ctx.edge_time_s == pytest.approx(0.25)
    out = ctx.encode(20)  # now decode + metric are paid, not a second encode
    assert out.metrics["cosine"] == pytest.approx(0.98) and ctx.encodes == 1
    assert ctx.edge_time_s == pytest.approx(0.25 + 0.125 + 0.5)
    ctx.encode(20)
    assert calls == [20] and ctx.edge_time_s == pytest.approx(0.875)
    with pytest.raises(PolicyError, match="rate point 25 is not on the hevc ladder"):
        ctx.encode(25)
    d = ctx.decision(30, reason="why")
    assert isinstance(d, Decision) and (d.rate_point, d.encodes, d.reason) == (30, 2, "why")
    assert d.edge_time_s == pytest.approx(1.125) and math.isnan(d.metric)


def test_as_decision_normalises_foreign_objects():
    ctx = _ctx(lambda rp: EncodeOutcome(rp, 100, 0.1, {}, 0.0))

    class Choice:
        rate_point = "20"
        met_target = 1

    d = as_decision(Choice(), ctx)
    assert (d.rate_point, d.encodes, d.met_target) == (20, 1, True)
    with pytest.raises(PolicyError, match="no integer rate_point"):
        as_decision(object(), ctx)


# ---- fixed ----------------------------------------------------------------------------------


def test_fixed_encodes_once_without_decode_or_metric(random_arr):
    for dec, ctx in replay(get_policy("fixed", rate_point=30), random_arr, metric_s=0.01):
        assert dec.rate_point == 30 and dec.encodes == 1
        r = random_arr.rate_points.index(30)
        assert dec.edge_time_s == pytest.approx(random_arr.encode_s[ctx.frame_idx, r])
    assert replay(get_policy("fixed", index=-1), random_arr)[0][0].rate_point == QPS[-1]
    with pytest.raises(PolicyError, match="index 9 outside the ladder"):
        replay(get_policy("fixed", index=9), random_arr)


# ---- cfqa-target ----------------------------------------------------------------------------


@pytest.mark.parametrize("search", ["model", "bisect", "exhaustive"])
def test_cfqa_target_picks_the_cheapest_rate_point_meeting_the_threshold(random_arr, search):
    thr = 0.999
    expected = cheapest_meeting(random_arr, "cosine", thr)
    assert len(set(expected.tolist())) >= 3  # the images really need different rate points
    decisions = replay(get_policy("cfqa-target", threshold=thr, search=search), random_arr, metric_s=1e-3)
    got = np.array([random_arr.rate_points.index(d.rate_point) for d, _ in decisions])
    np.testing.assert_array_equal(got, expected)
    reachable = random_arr.metric("cosine")[:, 0] >= thr
    assert 0 < (~reachable).sum() < 10
    for (d, ctx), r in zip(decisions, got):
        if reachable[ctx.frame_idx]:
            assert d.met_target is True and d.metric >= thr
        else:
            assert d.met_target is False and d.reason.startswith("unreachable:") and r == 0
        assert d.metric == pytest.approx(random_arr.metric("cosine")[ctx.frame_idx, r])
        # Edge time: every trial encode + its local decode + the metric.
        assert d.edge_time_s == pytest.approx(d.encodes * (0.002 + 1e-3) + sum(
            random_arr.encode_s[ctx.frame_idx, random_arr.rate_points.index(rp)] for rp in ctx._cache))


def test_model_search_needs_few_encodes_on_a_smooth_sequence():
    difficulty = np.exp(np.cumsum(np.random.default_rng(5).normal(0, 0.12, 80)))
    arr = arrays(difficulty)
    decisions = replay(get_policy("cfqa-target", threshold=0.999), arr)
    encodes = np.array([d.encodes for d, _ in decisions])
    assert encodes.mean() <= 2.0
    assert encodes[10:].mean() <= 1.5  # once warm
    bisect = np.mean([d.encodes for d, _ in replay(get_policy("cfqa-target", threshold=0.999, search="bisect"), arr)])
    exhaustive = np.mean([d.encodes for d, _ in
                          replay(get_policy("cfqa-target", threshold=0.999, search="exhaustive"), arr)])
    assert encodes.mean() < exhaustive and bisect < exhaustive


def test_unreachable_threshold_sends_the_best_rate_and_says_so(random_arr):
    best = random_arr.metric("cosine")[:, 0].max()
    for d, _ in replay(get_policy("cfqa-target", threshold=min(best + 1e-6, 1.0)), random_arr)[:5]:
        assert d.rate_point == QPS[0] and d.met_target is False
        assert d.reason.startswith("unreachable:")


# ---- bandwidth and hybrid -------------------------------------------------------------------


def test_bandwidth_picks_the_highest_quality_that_fits(random_arr):
    arr = random_arr
    throughput, deadline, safety = 40e3, 1.0, 0.9
    # The planner keeps the previous frame's edge time (~11 ms here) for this frame's encode.
    budget = safety * throughput * (deadline - 0.011) / 8
    sent = arr.bytes + arr.meta_bytes
    expected = np.array([min([r for r in range(sent.shape[1]) if sent[i, r] <= budget], default=sent.shape[1] - 1)
                         for i in range(arr.n_images)])
    assert len(set(expected.tolist())) >= 2
    decisions = replay(get_policy("bandwidth", safety=safety), arr, throughput_bps=throughput, time_left_s=deadline)
    got = np.array([arr.rate_points.index(d.rate_point) for d, _ in decisions])
    last = len(arr.rate_points) - 1
    # Over budget only when even the lowest quality overshoots, and then it says so.
    for (d, _), i, g in zip(decisions, range(arr.n_images), got):
        assert sent[i, g] <= budget or (g == last and d.reason.startswith("over budget"))
    assert (got == expected).mean() >= 0.9
    assert all(d.encodes >= 1 for d, _ in decisions)
    assert np.mean([d.encodes for d, _ in decisions]) <= 2.0
    assert all(math.isnan(d.metric) and d.met_target is None for d, _ in decisions)


def test_bandwidth_without_a_throughput_estimate_sends_the_lowest_quality(random_arr):
    d, _ = replay(get_policy("bandwidth"), random_arr, throughput_bps=None, time_left_s=0.1)[0]
    assert d.rate_point == QPS[-1] and "no throughput estimate" in d.reason


def test_hybrid_equals_cfqa_target_on_an_ample_link_and_flags_a_tight_one(random_arr):
    arr, thr = random_arr, 0.999
    ample = replay(get_policy("hybrid", threshold=thr), arr, throughput_bps=1e9, time_left_s=1.0)
    target = replay(get_policy("cfqa-target", threshold=thr), arr)
    assert [d.rate_point for d, _ in ample] == [d.rate_point for d, _ in target]
    tight_budget = 0.9 * 40e3 * 1.0 / 8  # less the previous frame's few ms of edge time
    tight = replay(get_policy("hybrid", threshold=thr), arr, throughput_bps=40e3, time_left_s=1.0)
    expected = cheapest_meeting(arr, "cosine", thr)
    flagged = 0
    for (d, ctx), e in zip(tight, expected):
        i, r = ctx.frame_idx, arr.rate_points.index(d.rate_point)
        if arr.bytes[i, e] + arr.meta_bytes[i, e] <= 0.8 * tight_budget:
            assert d.met_target is True  # the target fits the link with room: met
        elif arr.bytes[i, e] + arr.meta_bytes[i, e] > tight_budget:
            assert d.met_target is False and d.reason.startswith("link budget")
            flagged += 1
        assert arr.bytes[i, r] + arr.meta_bytes[i, r] <= tight_budget or r == len(arr.rate_points) - 1
        assert d.met_target is (d.metric >= thr)
    assert flagged >= 3


# ---- oracle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["cls", "seg", "dpt"])
def test_oracle_choice_is_minimal(task):
    arr = arrays(np.exp(np.random.default_rng(7).normal(0, 0.8, 30)), task=task, ref_score=0.6)
    ok = within_tolerance(task, arr.output_change)
    for d, ctx in replay(get_policy("oracle"), arr):
        i, r = ctx.frame_idx, arr.rate_points.index(d.rate_point)
        assert d.met_target is True and ok[i, r]
        assert not ok[i, r + 1:].any()  # every cheaper rate point moves the output out of tolerance


def test_oracle_needs_a_judging_context():
    ctx = _ctx(lambda rp: EncodeOutcome(rp, 100, 0.1, {}, 0.0))
    with pytest.raises(PolicyError, match="cannot judge"):
        get_policy("oracle").decide(ctx)


# ---- live: the real HEVC codec, decoder and metric ---------------------------------------------


def _feature():
    rng = np.random.default_rng(0)
    # DINOv2-like: per-channel scales, a few outlier channels.
    scale = rng.uniform(0.3, 1.5, 128).astype(np.float32)
    scale[:3] = 6.0
    return (rng.normal(0, 1, (1, 145, 128)).astype(np.float32) * scale), [-10.0, 10.0]


def test_live_context_sends_the_bitstream_it_scored():
    from cfqa_core.codecs import get_codec
    from cfqa_core.metrics import compute_metric
    from cfqa_edge.policies.live import LiveContext

    codec = get_codec("hevc")
    feature, vr = _feature()
    ladder = (8, 20, 32, 44)
    policy = get_policy("cfqa-target", threshold=0.995, search="bisect")
    ctx = LiveContext(feature, codec, vr, "cosine", task="cls", ladder=ladder)
    d = policy.decide(ctx)
    enc = ctx.chosen(d)
    assert enc.rate_point == d.rate_point and enc.codec == "hevc" and d.met_target is True
    cos = compute_metric("cosine", feature, codec.decode(enc).reshape(feature.shape))
    assert cos == pytest.approx(d.metric, abs=1e-12) and cos >= 0.995
    # The next cheaper rung misses the target (so this is the cheapest that meets it) ...
    k = ladder.index(d.rate_point)
    if k + 1 < len(ladder):
        cheaper = codec.decode(codec.encode(feature, ladder[k + 1], value_range=vr)).reshape(feature.shape)
        assert compute_metric("cosine", feature, cheaper) < 0.995
    # ... and the counts are real: every trial encoded, decoded and scored, with measured times.
    assert d.encodes == len(ctx.bitstreams) >= 1
    assert d.edge_time_s > 0 and ctx.encoded(d.rate_point).nbytes == enc.nbytes + enc.meta_bytes


def test_runner_adapter_and_registration():
    import cfqa_edge.runner as runner
    from cfqa_core.codecs import get_codec
    from cfqa_edge.policies.live import RunnerPolicy, runner_factory

    assert not hasattr(runner, "POLICIES")  # one rate-control system: cfqa_edge.policies
    adapter = runner.build_policy("cfqa-target", {"rate_point": None, "threshold": "0.99", "search": "bisect"})
    assert isinstance(adapter, RunnerPolicy)
    feature, vr = _feature()
    enc, record = adapter.decide(feature, get_codec("hevc"), task="cls", value_range=vr, bit_depth=10)
    assert record["rate_point"] == enc.rate_point and record["metric_name"] == "cosine" and record["metric"] >= 0.99
    assert record["met_target"] is True and record["encodes"] >= 1
    with pytest.raises(PolicyError, match="--rate-point is a parameter of the fixed policy"):
        runner_factory("cfqa-target")({"rate_point": 12, "threshold": "0.99"})
    with pytest.raises(PolicyError, match="unknown parameter 'treshold'"):
        runner_factory("cfqa-target")({"treshold": "0.99"})


# ---- cheap feature statistics and set-level bounds -----------------------------------------------


def test_feature_statistic_predicts_the_first_trial():
    from cfqa_edge.policies.search import feature_statistic

    rng = np.random.default_rng(9)
    difficulty = np.exp(rng.normal(0, 0.8, 60))
    arr = arrays(difficulty)
    # Features whose token energy falls as 1/difficulty: the statistic is log(difficulty) + const.
    base = rng.normal(0, 1, (1, 145, 128)).astype(np.float32)
    base /= np.linalg.norm(base, axis=-1, keepdims=True)
    feats = [base / np.sqrt(k) for k in difficulty]
    assert np.corrcoef([feature_statistic(f) for f in feats], np.log(difficulty))[0, 1] > 0.999

    def run(use_stat):
        policy = get_policy("cfqa-target", threshold=0.999, feature_stat=use_stat)
        out = []
        for i in range(arr.n_images):
            ctx = replay_context(arr, i, frame_idx=i, feature=feats[i])
            out.append(as_decision(policy.decide(ctx), ctx))
        return out

    with_stat, without = run(True), run(False)
    expected = cheapest_meeting(arr, "cosine", 0.999)
    assert [arr.rate_points.index(d.rate_point) for d in with_stat] == expected.tolist()
    assert np.mean([d.encodes for d in with_stat[10:]]) <= 1.1
    assert np.mean([d.encodes for d in with_stat]) < np.mean([d.encodes for d in without])
