"""Rate plans: fitting on calibration images, running them in the real policies, their files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cfqa_core.errors import PolicyError
from cfqa_edge.policies import get_policy
from cfqa_edge.policies.api import as_decision
from cfqa_edge.policies.plan import DEFAULT_PLANS, PlanStep, RatePlan, RatePlans
from cfqa_sim.ratecontrol.fit import fit_plan, plan_outcome
from cfqa_sim.ratecontrol.replay import replay_arrays, replay_context
from tests.support.policy_frames import synthetic_frame


@pytest.fixture(scope="module")
def arr():
    return replay_arrays(synthetic_frame(np.exp(np.random.default_rng(3).normal(-0.6, 0.7, 60))), "cls", "hevc")


def test_fitted_plan_reaches_the_target_at_fewer_bytes_than_any_single_rung(arr):
    sent = arr.bytes + arr.meta_bytes
    ok = arr.output_change == 0
    plan = fit_plan("cls", "hevc", arr.rate_points, "proxy", arr.metric("proxy"), arr.output_change, sent,
                    target=0.99)
    assert len(plan.steps) == 2 and plan.steps[0].threshold is not None
    probe, fallback = (arr.rate_points.index(s.rate_point) for s in plan.steps)
    chosen, encodes = plan_outcome(arr.metric("proxy"), probe, plan.steps[0].threshold, fallback)
    rows = np.arange(arr.n_images)
    # The target, or the best any single rung reaches when none reaches it.
    goal = min(0.99, ok.mean(axis=0).max())
    assert ok[rows, chosen].mean() >= goal - 1e-12
    cost = sent[rows, chosen].mean()
    assert cost == pytest.approx(plan.fitted["bytes_per_frame_on_fit"], abs=0.1)
    reaching = [r for r in range(len(arr.rate_points)) if ok[:, r].mean() >= goal - 1e-12]
    assert cost < min(sent[:, r].mean() for r in reaching)
    assert plan.fitted["matched_fixed_rate_point"] == arr.rate_points[min(reaching, key=lambda r: sent[:, r].mean())]
    assert set(np.unique(encodes)) <= {1, 2}


def test_a_useless_metric_gives_the_matched_fixed_rung(arr):
    sent = arr.bytes + arr.meta_bytes
    noise = np.random.default_rng(0).random(arr.output_change.shape)
    plan = fit_plan("cls", "hevc", arr.rate_points, "noise", noise, arr.output_change, sent, target=1.0)
    # Random scores cannot tell which images survive a cheaper rung: at 100 % nothing beats a single rung
    # unless the threshold rejects every fragile image by luck, which the fit may find; it never gets costlier.
    assert plan.fitted["bytes_per_frame_on_fit"] <= plan.fitted["matched_fixed_bytes_on_fit"]


def test_runtime_policy_makes_the_decisions_the_fit_assumed(arr, tmp_path):
    sent = arr.bytes + arr.meta_bytes
    plan = fit_plan("cls", "hevc", arr.rate_points, "proxy", arr.metric("proxy"), arr.output_change, sent)
    path = tmp_path / "plans.json"
    RatePlans({("cls", "hevc"): plan}).save(path)
    policy = get_policy("cfqa-target", plan=str(path))
    assert policy.metric == "proxy"
    probe, fallback = (arr.rate_points.index(s.rate_point) for s in plan.steps)
    expected, encodes = plan_outcome(arr.metric("proxy"), probe, plan.steps[0].threshold, fallback)
    for i in range(arr.n_images):
        ctx = replay_context(arr, i, frame_idx=i, metric_s=0.001)
        d = as_decision(policy.decide(ctx), ctx)
        assert arr.rate_points.index(d.rate_point) == expected[i]
        assert d.encodes == encodes[i]
        # Edge time: every encode, plus the decode and the metric of the scored probe.
        r_probe = arr.rate_points.index(plan.steps[0].rate_point)
        want = arr.encode_s[i, r_probe] + arr.decode_s[i, r_probe] + 0.001
        if encodes[i] == 2:
            want += arr.encode_s[i, fallback]
        assert d.edge_time_s == pytest.approx(want)


def test_hybrid_caps_the_plan_at_the_link_budget(arr, tmp_path):
    plan = RatePlan("cls", "hevc", "proxy", (PlanStep(arr.rate_points[3], 10.0), PlanStep(arr.rate_points[0])))
    path = tmp_path / "plans.json"
    RatePlans({("cls", "hevc"): plan}).save(path)
    roomy = get_policy("hybrid", plan=str(path))
    tight = get_policy("hybrid", plan=str(path))
    for i in range(5):
        ctx = replay_context(arr, i, frame_idx=i, throughput_bps=1e9, time_left_s=1.0)
        assert as_decision(roomy.decide(ctx), ctx).rate_point == arr.rate_points[3]
    for i in range(5):
        # A budget that nothing fits: once the node has seen a frame's size (frame 0), every step of the
        # plan is pushed down to the lowest rung.
        ctx = replay_context(arr, i, frame_idx=i, throughput_bps=800.0, time_left_s=1.0)
        d = as_decision(tight.decide(ctx), ctx)
        if i > 0:
            assert d.rate_point == arr.rate_points[-1]
            assert d.reason and d.reason.startswith("link budget")


def test_fixed_matched_reads_the_plans(arr, tmp_path):
    plan = RatePlan("cls", "hevc", "proxy", (PlanStep(arr.rate_points[2]),), {"matched_fixed_rate_point": 30})
    path = tmp_path / "plans.json"
    RatePlans({("cls", "hevc"): plan}).save(path)
    policy = get_policy("fixed", matched=True, plan=str(path))
    ctx = replay_context(arr, 0, frame_idx=0)
    assert as_decision(policy.decide(ctx), ctx).rate_point == 30
    with pytest.raises(PolicyError, match="no rate plan for seg/hevc"):
        policy.matched_rate_point("seg", "hevc")
    with pytest.raises(PolicyError, match="matched takes the rung"):
        get_policy("fixed", matched=True, rate_point=30)


def test_plan_files_are_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"plans": {"cls": {"hevc": {"metric": "proxy", "steps": [{"qp": 3}]}}}}))
    with pytest.raises(PolicyError, match="malformed"):
        RatePlans.load(bad)
    with pytest.raises(PolicyError, match="not found"):
        RatePlans.load(tmp_path / "missing.json")
    with pytest.raises(PolicyError, match="finite threshold"):
        RatePlan("cls", "hevc", "proxy", (PlanStep(30), PlanStep(20)))
    with pytest.raises(PolicyError, match="plan replaces threshold"):
        get_policy("cfqa-target", plan=str(bad), threshold=0.9)


def test_shipped_plans_cover_the_shipped_table():
    plans = RatePlans.load(DEFAULT_PLANS)
    assert {("cls", "hevc"), ("seg", "hevc"), ("dpt", "hevc")} <= set(plans.plans)
    for plan in plans.plans.values():
        assert plan.metric == "proxy" and len(plan.steps) <= 2
        assert plan.fitted["target_success"] == 0.99


def test_a_fall_back_that_makes_frames_late_is_not_fitted(arr):
    from cfqa_sim.ratecontrol.fit import Deadline

    sent = arr.bytes + arr.meta_bytes
    args = ("cls", "hevc", arr.rate_points, "proxy", arr.metric("proxy"), arr.output_change, sent)
    assert len(fit_plan(*args).steps) == 2
    # Each encode takes 0.6 s against a 1 s deadline: one encode fits, a probe plus a fall-back does not.
    slow = Deadline(np.full(sent.shape, 0.6), np.full(sent.shape, 0.01), 0.001, 1e9, 1.0)
    plan = fit_plan(*args, deadline=slow)
    assert len(plan.steps) == 1 and plan.steps[0].rate_point == plan.fitted["matched_fixed_rate_point"]
    # Fast enough for both encodes: the two-step plan comes back.
    fast = Deadline(np.full(sent.shape, 0.3), np.full(sent.shape, 0.01), 0.001, 1e9, 1.0)
    assert len(fit_plan(*args, deadline=fast).steps) == 2
