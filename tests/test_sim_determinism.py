"""The simulator's results are pinned: the hot path's shortcuts must not change a single frame.

The figures below were produced by the simulator before its per-frame
allocations were removed (a fresh policy context per frame, a process per
node's arrivals, the estimator summing 1/s each time); any change to them is a
change of behaviour, not of speed.
"""
from __future__ import annotations

import numpy as np
import pytest

from cfqa_sim.engine import simulate
from cfqa_sim.outcomes import ReplayProvider
from cfqa_sim.scenario import load_scenario
from tests.support.sim_tables import synthetic_table, tiny_scenario

POLICIES = {
    "hq": {"name": "fixed", "params": {"index": 0, "metric": "cosine"}},
    "target": {"name": "cfqa-target", "params": {"metric": "cosine", "threshold": 0.999}},
    "link": {"name": "bandwidth", "params": {}},
    "oracle": {"name": "oracle", "params": {}},
}

# label -> (frames, per-status counts, per-drop-reason counts, bytes, wire bytes, sum of rate points,
#           trial encodes, sum of result times of delivered frames)
PINNED = {
    "hq": (774, [0, 710, 14, 50], [724, 18, 12, 20], 13038994, 13034146, 16614, 756, 11052.299061),
    "target": (774, [0, 725, 9, 40], [734, 17, 12, 11], 8530373, 8517929, 21649, 1349, 11199.86311),
    "link": (774, [0, 710, 14, 50], [724, 18, 12, 20], 12876723, 12873375, 16846, 763, 11049.554825),
    "oracle": (774, [0, 722, 11, 41], [733, 18, 12, 11], 8526681, 8514237, 21618, 4041, 11225.279299),
}


def mixed_scenario(table) -> dict:
    """A shared link with an outage, per-node links with retransmitted and dropped loss, three tasks."""
    return tiny_scenario(
        table, duration_s=30.0, policies=POLICIES,
        links={
            "up": {"trace": {"kind": "constant", "capacity_mbps": 2.0, "duration_s": 10.0}, "shared": True,
                   "delay_ms": 10.0, "outages": [{"start_s": 12.0, "duration_s": 2.0}]},
            "cell": {"trace": {"kind": "random_walk", "capacity_mbps": 3.0, "step_s": 1.0, "duration_s": 20.0},
                     "delay_ms": 25.0, "loss_rate": 0.02},
            "udp": {"trace": {"kind": "onoff", "capacity_mbps": 4.0, "on_s": 3.0, "off_s": 1.0, "duration_s": 8.0},
                    "delay_ms": 5.0, "loss_rate": 0.01, "loss_mode": "drop"},
        },
        nodes=[
            {"name": "cams", "count": 3, "link": "up", "task": "cls", "codec": "hevc",
             "arrivals": {"kind": "poisson", "fps": 4.0}, "deadline_s": 0.5},
            {"name": "phones", "count": 2, "link": "cell", "task": "seg", "codec": "hevc",
             "arrivals": {"kind": "periodic", "fps": 5.0}, "deadline_s": 0.8, "queue_frames": 2},
            {"name": "drones", "count": 2, "link": "udp", "task": "dpt", "codec": "hevc",
             "arrivals": {"kind": "poisson", "fps": 2.0}, "deadline_s": 1.0, "drop_stale": False},
        ],
    )


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "table.parquet"
    synthetic_table(images=6).to_parquet(path)
    return load_scenario(data=mixed_scenario(path))


def figures(columns: dict[str, np.ndarray]) -> tuple:
    done = np.isfinite(columns["t_result"])
    return (
        int(columns["node"].size),
        np.bincount(columns["status"], minlength=4).tolist(),
        np.bincount(columns["drop_reason"], minlength=4).tolist(),
        int(columns["bytes"].sum()),
        int(columns["wire_bytes"].sum()),
        int(columns["rate_point"].sum()),
        int(columns["encodes"].sum()),
        round(float(columns["t_result"][done].sum()), 6),
    )


@pytest.mark.parametrize("label", list(POLICIES))
def test_results_match_the_pinned_figures(loaded, label):
    assert figures(simulate(loaded, label, progress=False).columns) == PINNED[label]


class FreshContextProvider(ReplayProvider):
    """Replay that refuses to reuse a policy context: every frame gets a new one."""

    def rebind_context(self, ctx, frame) -> bool:
        return False


@pytest.mark.parametrize("label", list(POLICIES))
def test_a_reused_policy_context_decides_as_a_fresh_one(loaded, label):
    reused = simulate(loaded, label, progress=False).frames()
    fresh = simulate(loaded, label, provider=FreshContextProvider(loaded.table()), progress=False).frames()
    assert len(reused) > 500
    assert reused.equals(fresh)


def test_reset_forgets_the_previous_frames_trials_and_keeps_the_node():
    from cfqa_edge.policies.api import EncodeOutcome, PolicyContext

    calls = []

    def encode(rp: int) -> EncodeOutcome:
        calls.append(rp)
        return EncodeOutcome(rp, 100 * rp, 0.01, {"cosine": 0.9}, 0.002)

    rng = np.random.default_rng(0)
    ctx = PolicyContext(node_id=4, frame_idx=0, task="cls", codec="hevc", ladder=(20, 30), now_s=1.0,
                        time_left_s=0.5, throughput_bps=None, queue_frames=0, previous_rate_point=None,
                        rng=rng, encode=encode, metric_s=0.003)
    assert ctx.encode(30).metrics == {"cosine": 0.9}
    assert ctx.encode(20, assess=False).metrics == {}
    assert (ctx.encodes, ctx.edge_time_s) == (2, pytest.approx(0.025))
    assert ctx.reset(frame_idx=1, now_s=2.0, time_left_s=0.4, throughput_bps=2e6, queue_frames=3,
                     previous_rate_point=30) is ctx
    assert (ctx.encodes, ctx.edge_time_s, ctx.encoded(30), ctx.assessed(30)) == (0, 0.0, None, False)
    assert (ctx.frame_idx, ctx.now_s, ctx.time_left_s, ctx.throughput_bps, ctx.queue_frames,
            ctx.previous_rate_point) == (1, 2.0, 0.4, 2e6, 3, 30)
    assert (ctx.node_id, ctx.ladder, ctx.rng) == (4, (20, 30), rng)
    assert ctx.encode(30, assess=False).metrics == {}  # not assessed in this frame
    assert calls == [30, 20, 30]
