"""Build a scenario's world (links, cloud, nodes) and run it for one policy.

Randomness comes from independent streams keyed by (seed, purpose, index),
so arrivals, images and link offsets are identical whatever the policy: a
comparison sees the same frames on the same links.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import simpy

import cfqa_sim.ratecontrol.oracle  # noqa: F401  (registers the offline-only oracle policy)
from cfqa_edge.policies import get_policy
from cfqa_sim.cloud import Cloud
from cfqa_sim.link import Link, outage_process
from cfqa_sim.node import Arrivals, EdgeNode, NodeSpec
from cfqa_sim.outcomes import FrameOutcomeProvider, make_provider
from cfqa_sim.records import DROP_REASONS, STATUSES, FrameLog
from cfqa_sim.scenario import LoadedScenario, NodeGroup
from cfqa_sim.traces import Trace

# Stream purposes for ``_rng``.
_ARRIVALS, _IMAGES, _OFFSET, _LOSS, _POLICY = range(5)


def _rng(seed: int, purpose: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, index]))


@dataclass
class LinkInfo:
    """One link instance as the report needs it."""

    spec: str
    trace: Trace
    offset_s: float
    outages: list[tuple[float, float]]
    shared: bool
    wire_bytes: int = 0

    def usable(self, t_s: float) -> int:
        """Delivery opportunities the link had in [0, t_s), outages removed."""
        def index(t: float) -> int:
            return self.trace.index_at(t + self.offset_s)

        total = index(t_s) - index(0.0)
        for start, dur in self.outages:
            end = min(t_s, start + dur)
            if end > start:
                total -= index(end) - index(start)
        return total


@dataclass
class RunResult:
    """Everything measured in one run of one policy."""

    policy: str
    columns: dict[str, np.ndarray]
    group_names: list[str]
    group_tasks: list[str]
    group_codecs: list[str]
    group_deadlines: list[float]
    image_ids: dict[str, np.ndarray]
    links: list[LinkInfo]
    duration_s: float
    sim_end_s: float
    wall_s: float
    partial: bool
    nodes: int
    servers: int
    edge_busy_s: float
    cloud_busy_s: float
    ladders: dict[str, tuple[int, ...]] = field(default_factory=dict)  # "task/codec" -> ladder
    # "task/codec" -> [(rate point, mean bytes, mean task score)] of the static ladder
    rate_curves: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)

    def frames(self):
        """Per-frame pandas DataFrame with readable labels."""
        import pandas as pd

        c = self.columns
        groups = c["group"].astype(int)
        tasks = np.array(self.group_tasks, dtype=object)[groups]
        image_id = np.empty(tasks.size, dtype=object)
        for task in set(self.group_tasks):
            sel = tasks == task
            image_id[sel] = self.image_ids[task][c["image"][sel]].astype(str)
        df = pd.DataFrame({
            "policy": self.policy,
            "node": c["node"],
            "frame": c["frame"],
            "group": np.array(self.group_names, dtype=object)[groups],
            "task": tasks,
            "codec": np.array(self.group_codecs, dtype=object)[groups],
            "image_id": image_id,
            "link": c["link"],
            "status": np.array(STATUSES, dtype=object)[c["status"]],
            "drop_reason": np.array(DROP_REASONS, dtype=object)[c["drop_reason"]],
            "latency_s": c["t_result"] - c["t_capture"],
        })
        skip = {"node", "frame", "group", "image", "link", "status", "drop_reason"}
        for name, col in c.items():
            if name not in skip:
                df[name] = col
        return df


# ---- building -----------------------------------------------------------------------------


def _timing(loaded: LoadedScenario, index: int, group: NodeGroup) -> tuple[float, float, float]:
    """(edge backbone s, cloud service s, metric s) for a node group."""
    timing = loaded.scenario.timing
    profile = loaded.timing_profile()
    if profile is None or not profile.get("entries"):
        # No backbone/cloud entries (e.g. a profile of codec times only): the scenario's constants.
        metric_s = timing.metric_s
        if profile is not None and group.task in profile.get("metrics", {}).get("proxy", {}):
            metric_s = float(profile["metrics"]["proxy"][group.task])
        return timing.edge_backbone_s.get(group.task, 0.0), timing.cloud_service_s.get(group.task, 0.0), metric_s
    model = loaded.scenario.live.model if loaded.scenario.live else None
    for entry in profile.get("entries", []):
        if entry.get("task") != group.task:
            continue
        if group.split is not None and entry.get("split") != group.split:
            continue
        if model is not None and entry.get("model", model) != model:
            continue
        return (
            float(entry["edge_backbone_s"]),
            float(entry["cloud_service_s"]),
            float(profile.get("metric_s", timing.metric_s)),
        )
    raise loaded.error(("nodes", index, "task"),
                       f"timing profile has no entry for task {group.task} split {group.split}")


def arrival_times(group: NodeGroup, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Capture times of one node in [0, duration_s)."""
    period = 1.0 / group.arrivals.fps
    if group.arrivals.kind == "periodic":
        phase = rng.uniform(0.0, period) if group.arrivals.random_phase else 0.0
        return np.arange(phase, duration_s, period)
    expected = duration_s / period
    n = int(expected + 6.0 * np.sqrt(expected) + 10)
    times = np.cumsum(rng.exponential(period, n))
    while times[-1] < duration_s:  # rare: extend the draw
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(period, n))])
    return times[times < duration_s]


def _image_pool(provider: FrameOutcomeProvider, group: NodeGroup) -> np.ndarray:
    ids = provider.image_ids(group.task)
    if group.images.ids is None:
        return np.arange(len(ids))
    wanted = {str(x) for x in group.images.ids}
    return np.array([i for i, x in enumerate(ids) if str(x) in wanted])


def image_sequence(pool: np.ndarray, group: NodeGroup, n: int, rng: np.random.Generator) -> np.ndarray:
    if group.images.order == "random":
        return rng.choice(pool, size=n)
    start = int(rng.integers(pool.size))
    return pool[(start + np.arange(n)) % pool.size]


# ---- running ------------------------------------------------------------------------------


def simulate(
    loaded: LoadedScenario,
    policy: str | None = None,
    *,
    provider: FrameOutcomeProvider | None = None,
    progress: bool = True,
) -> RunResult:
    """Run the scenario with the policy labelled ``policy`` (default: the scenario's).

    Ctrl-C stops the run early; the result then has ``partial=True`` and keeps
    every frame measured so far.
    """
    s = loaded.scenario
    label = policy or s.policy
    spec_policy = s.policy_spec(label)
    own_provider = provider is None
    provider = provider or make_provider(loaded)
    env = simpy.Environment()
    log = FrameLog(capacity=max(1024, int(s.node_count * s.duration_s * max(g.arrivals.fps for g in s.nodes) * 1.1)))
    cloud = Cloud(env, s.cloud.servers)

    links: list[Link] = []
    infos: list[LinkInfo] = []
    shared: dict[str, int] = {}
    by_spec: dict[str, list[Link]] = {name: [] for name in s.links}

    def link_for(name: str) -> int:
        spec = s.links[name]
        if spec.shared and name in shared:
            return shared[name]
        trace = loaded.trace(name)
        idx = len(links)
        offset = (
            float(_rng(s.seed, _OFFSET, idx).uniform(0.0, trace.duration_s))
            if spec.random_offset and not spec.shared else spec.offset_s
        )
        link = Link(
            env, trace, name=f"{name}#{idx}", delay_s=spec.delay_ms / 1000.0, loss_rate=spec.loss_rate,
            loss_mode=spec.loss_mode, offset_s=offset, rng=_rng(s.seed, _LOSS, idx),
        )
        links.append(link)
        by_spec[name].append(link)
        infos.append(LinkInfo(name, trace, offset, [(o.start_s, o.duration_s) for o in spec.outages], spec.shared))
        if spec.shared:
            shared[name] = idx
        return idx

    nodes: list[EdgeNode] = []
    ladders: dict[str, tuple[int, ...]] = {}
    node_id = 0
    for gi, group in enumerate(s.nodes):
        backbone_s, cloud_s, metric_s = _timing(loaded, gi, group)
        ladder = tuple(provider.ladder(group.task, group.codec))
        ladders[f"{group.task}/{group.codec}"] = ladder
        pool = _image_pool(provider, group)
        if pool.size == 0:
            raise loaded.error(("nodes", gi, "images"), "no images to capture")
        for _ in range(group.count):
            li = link_for(group.link)
            spec = NodeSpec(
                node_id=node_id, group=gi, task=group.task, codec=group.codec, ladder=ladder,
                deadline_s=group.deadline_s, queue_frames=group.queue_frames, drop_stale=group.drop_stale,
                estimator_window=group.estimator_window,
                initial_bps=group.initial_throughput_mbps * 1e6 if group.initial_throughput_mbps else None,
                backbone_s=backbone_s, cloud_s=cloud_s, metric_s=metric_s,
            )
            node = EdgeNode(
                env, spec, link=links[li], link_index=li, cloud=cloud, provider=provider,
                policy=get_policy(spec_policy.name, **spec_policy.params), log=log,
                rng=_rng(s.seed, _POLICY, node_id),
            )
            times = arrival_times(group, s.duration_s, _rng(s.seed, _ARRIVALS, node_id))
            images = image_sequence(pool, group, times.size, _rng(s.seed, _IMAGES, node_id))
            Arrivals(env, node, times, images)
            nodes.append(node)
            node_id += 1
    for name, spec in s.links.items():
        for outage in spec.outages:
            env.process(outage_process(env, by_spec[name], outage.start_s, outage.duration_s))

    wall0 = time.perf_counter()
    partial = _run(env, log, s.duration_s, s.drain_s, progress, f"{s.name}:{label}")
    wall = time.perf_counter() - wall0
    curves = {}
    for g in s.nodes:
        curve = provider.rate_curve(g.task, g.codec)
        if curve:
            curves[f"{g.task}/{g.codec}"] = curve
    if own_provider:
        provider.close()
    for info, link in zip(infos, links):
        info.wire_bytes = link.wire_bytes
    image_ids = {g.task: np.asarray(provider.image_ids(g.task)) for g in s.nodes}
    return RunResult(
        policy=label, columns=log.columns(), group_names=[g.name for g in s.nodes],
        group_tasks=[g.task for g in s.nodes], group_codecs=[g.codec for g in s.nodes],
        group_deadlines=[float(g.deadline_s) for g in s.nodes], image_ids=image_ids,
        links=infos, duration_s=s.duration_s, sim_end_s=float(env.now), wall_s=wall, partial=partial,
        nodes=len(nodes), servers=s.cloud.servers, edge_busy_s=sum(n.busy_s for n in nodes),
        cloud_busy_s=cloud.busy_s, ladders=ladders, rate_curves=curves,
    )


def _run(env: simpy.Environment, log: FrameLog, duration_s: float, drain_s: float, progress: bool, desc: str) -> bool:
    """Advance in slices with progress in simulated seconds; True if interrupted (partial)."""
    from cfqa_sim.progress import SimProgress

    end = duration_s + drain_s
    step = max(duration_s / 200.0, 1e-3)
    t = 0.0
    with SimProgress(duration_s, desc, enabled=progress) as bar:
        try:
            while t < end:
                t = min(t + step, end)
                env.run(until=t)
                bar.update(min(t, duration_s))
                if t <= duration_s:
                    continue
                if log.open == 0:
                    break  # arrivals stopped and every frame has its outcome
                bar.draining(log.open)
        except KeyboardInterrupt:
            return True
    return False
