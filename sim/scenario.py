# Over 450 lines: one pydantic schema with its YAML loading, line numbers and --set overrides.
"""Scenario files: pydantic schema, YAML loading with line numbers, ``--set``.

Every error is a :class:`ScenarioError` naming the field path and, when the
value came from the file, its YAML line (``nodes.0.fps (line 12): ...``).
Loading validates everything a run needs before it starts: schema, link
references, trace files (parsed), the benchmark table in replay mode, codecs
and policy names.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cfqa_core.errors import CfqaError, ScenarioError
from cfqa_core.task_names import TaskName
from cfqa_sim.traces import SYNTHETIC_KINDS, Trace, find_trace, load_trace, synthetic

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every number is finite and bounded (documented maxima), so a scenario that validates also runs.
MAX_SECONDS = 7 * 86400.0      # durations, offsets, times: one week of simulated time
MAX_MBPS = 100_000.0           # link rates: 100 Gbit/s
MAX_NODES = 100_000            # nodes of one group
PosFloat = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
Mbps = Annotated[float, Field(ge=0, le=MAX_MBPS, allow_inf_nan=False)]
PosMbps = Annotated[float, Field(gt=0, le=MAX_MBPS, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticTraceSpec(_Strict):
    """A generated trace (see ``cfqa_sim.traces.synthetic``)."""

    kind: Literal[SYNTHETIC_KINDS]  # type: ignore[valid-type]
    duration_s: PosFloat = 60.0
    capacity_mbps: Mbps = 5.0
    levels_mbps: list[Mbps] = Field([2.0, 8.0, 4.0], max_length=10_000)
    step_s: PosFloat = 10.0
    sigma: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.2
    min_mbps: PosMbps = 0.2
    max_mbps: PosMbps = 20.0
    on_s: PosFloat = 20.0
    off_s: NonNegFloat = 5.0
    seed: Seed = 0


class OutageSpec(_Strict):
    start_s: NonNegFloat
    duration_s: PosFloat


class LinkSpec(_Strict):
    """An uplink: a trace plus delay, loss and outages."""

    trace: str | SyntheticTraceSpec = Field(
        description="mahimahi/CSV path (relative to the scenario, the repo, or the shipped traces: "
                    "cellular/Verizon-LTE-short.up) or a synthetic spec")
    shared: bool = Field(False, description="one link shared fairly by all its nodes; else one link per node")
    delay_ms: Annotated[float, Field(ge=0, le=60_000, allow_inf_nan=False)] = Field(
        20.0, description="one-way propagation delay, also applied to the result's return (at most 60 s)")
    loss_rate: float = Field(0.0, ge=0.0, lt=1.0, allow_inf_nan=False, description="packet loss probability")
    loss_mode: Literal["retransmit", "drop"] = "retransmit"
    random_offset: bool = Field(True, description="per-node links start at a random point of the trace")
    offset_s: NonNegFloat = Field(0.0, description="start point in the trace when random_offset is false")
    outages: list[OutageSpec] = Field([], max_length=10_000)


class ArrivalSpec(_Strict):
    kind: Literal["periodic", "poisson"] = "periodic"
    fps: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = Field(
        1.0, description="frames per second (at most 1000)")
    random_phase: bool = Field(True, description="periodic: each node starts at a random phase")


class ImageSpec(_Strict):
    order: Literal["random", "sequential"] = "random"
    ids: list[str | int] | None = Field(None, description="restrict to these image ids")


class NodeGroup(_Strict):
    """``count`` identical edge nodes."""

    name: str = "nodes"
    count: Annotated[int, Field(ge=1, le=MAX_NODES)] = Field(1, description=f"at most {MAX_NODES}")
    link: str
    task: TaskName = "cls"
    codec: str = "hevc"
    split: Annotated[int, Field(ge=0, le=1000)] | None = Field(
        None, description="split block (timing-profile key; live mode)")
    arrivals: ArrivalSpec = ArrivalSpec()
    images: ImageSpec = ImageSpec()
    deadline_s: PosFloat = 1.0
    queue_frames: Annotated[int, Field(ge=1, le=100_000)] = Field(
        4, description="frames held on the node before the link")
    drop_stale: bool = Field(True, description="drop frames whose deadline passed before they could be sent")
    estimator_window: Annotated[int, Field(ge=1, le=100_000)] = Field(
        5, description="transfers in the harmonic-mean throughput estimate")
    initial_throughput_mbps: PosMbps | None = None


class PolicySpec(_Strict):
    name: str = Field(description="registered policy name")
    params: dict[str, Any] = {}


BUILTIN_TABLE = "builtin:embedded"
BUILTIN_TIMING = "builtin:embedded"


def shipped_table() -> Path:
    """The compact replay table of the embedded model shipped with the package."""
    return Path(__file__).resolve().parent / "data" / "embedded_table.parquet"


def shipped_timing() -> Path:
    """The timing profile of the embedded model's codecs shipped with the package (``cfqa timing profile``)."""
    return Path(__file__).resolve().parent / "data" / "timing-embedded.json"


class CloudSpec(_Strict):
    servers: Annotated[int, Field(ge=1, le=10_000)] = 1


class TimingSpec(_Strict):
    """Compute times not in the benchmark table (seconds)."""

    profile: str | None = Field(None, description="JSON profile measured on this machine (overrides the constants; "
                                "'builtin:embedded': the shipped profile of the embedded model's codecs)")
    edge_backbone_s: dict[TaskName, NonNegFloat] = {"cls": 0.02, "seg": 0.04, "dpt": 0.04}
    cloud_service_s: dict[TaskName, NonNegFloat] = {"cls": 0.002, "seg": 0.01, "dpt": 0.015}
    metric_s: NonNegFloat = Field(0.001, description="edge time of one quality-metric evaluation")
    edge_encode_s: dict[TaskName, NonNegFloat] = Field(
        {"cls": 0.03, "seg": 0.06, "dpt": 0.2},
        description="live mode: edge time of one trial encode + local decode (the clock stays reproducible)")


class ReplaySpec(_Strict):
    table: str = Field(BUILTIN_TABLE, description="benchmark table.parquet (relative to the scenario or the repo); "
                       f"'{BUILTIN_TABLE}': the table of the embedded model shipped with the package")
    images: Literal["evaluation", "all"] = Field(
        "evaluation", description="evaluation: only the half of the table's images the shipped rate plans were "
        "not fitted on (odd positions in image-id order); all: every image")


class LiveSpec(_Strict):
    model: str = "embedded"
    server: str | None = Field(None, description="cloud gRPC address; None runs the cloud in-process")
    images: str | None = Field(None, description="image folder the nodes capture from")


class ReportSpec(_Strict):
    plot_nodes: Annotated[int, Field(ge=1, le=1000)] = 4
    bin_s: PosFloat | None = Field(None, description="time bin of the capacity plot (default: duration / 120)")


class Scenario(_Strict):
    """A simulation scenario."""

    name: str
    description: str = ""
    mode: Literal["replay", "live"] = "replay"
    seed: Seed = 0
    duration_s: PosFloat = Field(description=f"simulated seconds (at most {MAX_SECONDS:.0f})")
    drain_s: NonNegFloat = Field(30.0, description="extra time for frames in flight after arrivals stop")
    links: dict[str, LinkSpec] = Field(min_length=1)
    nodes: list[NodeGroup] = Field(min_length=1)
    cloud: CloudSpec = CloudSpec()
    timing: TimingSpec = TimingSpec()
    policy: str = Field("fixed", description="a label of `policies` or a registered policy name")
    baseline_policy: str | None = Field(None, description="policy that bandwidth savings are measured against")
    compare: list[str] | None = Field(
        None, description="policies `cfqa run` simulates on the same arrivals and links (default: `policy` alone); "
        "with `fixed-matched` among them, the summary gives every policy's savings against it at equal accuracy")
    policies: dict[str, PolicySpec] = {}
    replay: ReplaySpec | None = None
    live: LiveSpec | None = None
    report: ReportSpec = ReportSpec()

    def policy_spec(self, label: str) -> PolicySpec:
        """The policy a label stands for: an entry of ``policies``, else ``name[:key=value...]``."""
        if label in self.policies:
            return self.policies[label]
        from cfqa_edge.policies.spec import parse_spec

        try:
            spec = parse_spec(label)
        except CfqaError as exc:
            raise ScenarioError(str(exc)) from None
        return PolicySpec(name=spec.name, params=spec.params)

    @property
    def node_count(self) -> int:
        return sum(g.count for g in self.nodes)


def json_schema() -> dict:
    """The scenario JSON Schema (``cfqa scenario schema``)."""
    return Scenario.model_json_schema()


# ---- loading ---------------------------------------------------------------------------


class LoadedScenario:
    """A validated scenario with its file's location and YAML marks."""

    def __init__(self, scenario: Scenario, path: Path | None, root: yaml.Node | None, overridden: set[tuple]) -> None:
        self.scenario = scenario
        self.path = path
        self.base_dir = path.parent if path else Path.cwd()
        self._root = root
        self._overridden = overridden
        self._traces: dict[str, Trace] = {}

    def where(self, loc: tuple) -> str:
        """``a.b.0 (line N)`` / ``(from --set)`` for a field path."""
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if any(loc[: len(o)] == o for o in self._overridden):
            return f"{dotted} (from --set)"
        line = line_of(self._root, loc)
        return f"{dotted} (line {line})" if line else dotted

    def error(self, loc: tuple, message: str) -> ScenarioError:
        name = self.path.name if self.path else "scenario"
        return ScenarioError(f"{name}: {self.where(loc)}: {message}")

    def resolve(self, loc: tuple, rel: str) -> Path:
        """A file named in the scenario: relative to the scenario's folder, then the repo."""
        p = Path(rel).expanduser()
        tries = [p] if p.is_absolute() else [self.base_dir / p, REPO_ROOT / p]
        for t in tries:
            if t.exists():
                return t.resolve()
        raise self.error(loc, f"file not found: {rel} (looked in {', '.join(str(t.parent) for t in tries)})")

    def trace(self, link_name: str) -> Trace:
        """The parsed trace of a link (cached)."""
        if link_name not in self._traces:
            spec = self.scenario.links[link_name].trace
            loc = ("links", link_name, "trace")
            path = None
            if isinstance(spec, str):
                try:
                    path = find_trace(spec, (self.base_dir, REPO_ROOT))
                except ScenarioError as exc:
                    raise self.error(loc, str(exc)) from None
            try:
                trace = load_trace(path) if path else synthetic(**spec.model_dump())
            except ScenarioError as exc:
                raise self.error(loc, str(exc)) from None
            self._traces[link_name] = trace
        return self._traces[link_name]

    @cached_property
    def _table(self):
        from cfqa_sim.table import BenchmarkTable

        if self.scenario.replay is None:
            raise self.error(("replay",), "replay mode needs a 'replay: {table: ...}' section")
        path = self.table_path()
        try:
            return BenchmarkTable.load(path, images=self.scenario.replay.images)
        except ScenarioError as exc:
            raise self.error(("replay", "table"), str(exc)) from None

    def table_path(self) -> Path:
        """The replay table's file (the shipped one for ``builtin:embedded``)."""
        rel = self.scenario.replay.table
        return shipped_table() if rel == BUILTIN_TABLE else self.resolve(("replay", "table"), rel)

    def timing_path(self) -> Path | None:
        """The timing profile's file, if one is named (the shipped one for ``builtin:embedded``)."""
        rel = self.scenario.timing.profile
        if rel is None:
            return None
        return shipped_timing() if rel == BUILTIN_TIMING else self.resolve(("timing", "profile"), rel)

    def table(self):
        """The benchmark table (replay mode)."""
        return self._table

    def timing_profile(self) -> dict | None:
        """The JSON timing profile, if one is named."""
        path = self.timing_path()
        if path is None:
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise self.error(("timing", "profile"), f"cannot read {path}: {exc}") from None


def line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    node, line = root, None
    for depth, key in enumerate(loc):
        if node is None:
            break
        if depth:  # the document's own line says nothing
            line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if str(k.value) == str(key):
                    line = k.start_mark.line + 1
                    nxt = v
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (``5`` -> int, ``true`` -> bool, ``[1, 2]`` -> list)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> tuple:
    """Apply ``a.b.0.c=value`` to ``data`` in place; returns the path as a tuple."""
    if "=" not in assignment:
        raise ScenarioError(f"--set {assignment}: expected key=value")
    key, text = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ScenarioError(f"--set {assignment}: empty key")
    node: Any = data
    loc: list = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or not int(part) < len(node):  # no Python negative indices
                raise ScenarioError(f"--set {key}: '{part}' is not an index of "
                                    f"{'.'.join(map(str, loc)) or 'the list'} ({len(node)} items)")
            idx = int(part)
            loc.append(idx)
            if last:
                node[idx] = parse_value(text)
            else:
                node = node[idx]
        elif isinstance(node, dict):
            loc.append(part)
            if last:
                node[part] = parse_value(text)
            else:
                node = node.setdefault(part, {})
        else:
            raise ScenarioError(f"--set {key}: {'.'.join(map(str, loc))} is not a mapping or list")
    return tuple(loc)


def _yaml_error(name: str, exc: yaml.YAMLError) -> ScenarioError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return ScenarioError(f"{name}: malformed YAML{where}: {problem}")


def load_scenario(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    data: dict | None = None,
    check: bool = True,
) -> LoadedScenario:
    """Read, override, validate and (``check``) cross-check a scenario."""
    root = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ScenarioError(f"scenario file not found: {path}")
        text = path.read_text()
        try:
            data = yaml.safe_load(text)
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            raise _yaml_error(path.name, exc) from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path.name if path else 'scenario'}: expected a mapping at the top level")
    overridden = {apply_override(data, o) for o in overrides}
    loaded = LoadedScenario(None, path, root, overridden)  # type: ignore[arg-type]
    try:
        loaded.scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(loaded, exc) from None
    if check:
        check_scenario(loaded)
    return loaded


def _validation_error(loaded: LoadedScenario, exc: ValidationError) -> ScenarioError:
    parts = []
    for err in exc.errors()[:3]:
        # Union members add their type name to the path; keep only real keys.
        loc = tuple(p for p in err["loc"]
                    if not (isinstance(p, str) and ("[" in p or p in ("str", "SyntheticTraceSpec"))))
        parts.append(f"{loaded.where(loc)}: {err['msg']}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    name = loaded.path.name if loaded.path else "scenario"
    return ScenarioError(f"{name}: " + "; ".join(parts) + more)


def check_scenario(loaded: LoadedScenario) -> None:
    """Cross-field checks that need files and registries (all before a run)."""
    s = loaded.scenario
    for i, group in enumerate(s.nodes):
        if group.link not in s.links:
            raise loaded.error(("nodes", i, "link"), f"unknown link '{group.link}' (defined: {', '.join(s.links)})")
    for name, link in s.links.items():
        loaded.trace(name)
        for j, outage in enumerate(link.outages):
            if outage.start_s >= s.duration_s:
                raise loaded.error(("links", name, "outages", j, "start_s"), "outage starts after the scenario ends")
    if s.timing.profile:
        loaded.timing_profile()
    if s.mode == "replay":
        table = loaded.table()
        for i, group in enumerate(s.nodes):
            if group.task not in table.pairs:
                raise loaded.error(("nodes", i, "task"), f"the benchmark table has no rows for task '{group.task}'")
            if group.codec not in table.pairs[group.task]:
                have = ", ".join(table.pairs[group.task])
                raise loaded.error(("nodes", i, "codec"),
                                   f"unknown codec '{group.codec}' for task {group.task} (table has: {have})")
            try:
                table.codec(group.task, group.codec)
            except ScenarioError as exc:
                raise loaded.error(("nodes", i, "codec"), str(exc)) from None
            if group.images.ids is not None:
                known = {str(x) for x in table.images(group.task)[0]}
                bad = [x for x in group.images.ids if str(x) not in known]
                if bad:
                    raise loaded.error(("nodes", i, "images", "ids"), f"image id {bad[0]!r} is not in the table")
    else:
        if s.live is None:
            raise loaded.error(("live",), "live mode needs a 'live:' section")
        from cfqa_core.codecs import base as codec_base

        names = codec_base.registered_names()
        for i, group in enumerate(s.nodes):
            if names and group.codec not in names:
                raise loaded.error(("nodes", i, "codec"), f"unknown codec '{group.codec}' (known: {', '.join(names)})")
    labels = [("policy",), ("baseline_policy",)]
    for loc in labels:
        label = getattr(s, loc[0])
        if label is not None:
            check_policy(loaded, label, loc)
    for i, label in enumerate(s.compare or ()):
        check_policy(loaded, label, ("compare", i))
    for label in s.policies:
        check_policy(loaded, label, ("policies", label))


def check_policy(loaded: LoadedScenario, label: str, loc: tuple = ("policy",)) -> None:
    """Raise ScenarioError if ``label`` does not build a policy (``cfqa_edge.policies`` registry, with the oracle)."""
    import cfqa_sim.ratecontrol.oracle  # noqa: F401  (registers the offline-only oracle policy)
    from cfqa_edge.policies import get_policy

    spec = loaded.scenario.policy_spec(label)
    try:
        get_policy(spec.name, **spec.params)
    except CfqaError as exc:
        raise loaded.error(loc, str(exc)) from None
