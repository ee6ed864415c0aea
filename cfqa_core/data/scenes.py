# Over 450 lines: one renderer (solids, scene description, ray casting, shading) sharing private geometry.
"""Procedural indoor scenes, ray-cast analytically with numpy.

A pinhole camera looks into a room (floor, back wall, optional side walls and
ceiling) holding one large "main" object near the image centre and up to
three smaller distractors. Every object is one of ``NUM_CLASSES`` convex
solids. The same geometry yields the RGB image, a per-pixel class mask and
metric z-depth, so classification, segmentation and depth share one ground
truth.

Rays are cast with camera-space directions ``(x, y, 1)``: the ray parameter
``t`` is then the camera z-depth itself (no conversion from ray length).
Each object is intersected in its own unit frame (rays transformed by
``S^-1 R^T``), only over the pixels of its projected bounding box.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cfqa_core.errors import DataError

NUM_CLASSES: int = 10
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "sphere",
    "cube",
    "cylinder",
    "cone",
    "pyramid",
    "octahedron",
    "hex_prism",
    "tri_prism",
    "tetrahedron",
    "egg",
)

_F32 = np.float32
_EPS = 1e-3          # metres (in unit-frame t, which equals camera z): self-hit guard
_MIN_MAIN_FRACTION = 0.08
_MAX_ATTEMPTS = 40   # scene re-samples before the fallback kicks in


@dataclass(frozen=True)
class Scene:
    """One rendered scene with its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray   # (H, W) uint8, class id per pixel, 0 = background
    depth: np.ndarray  # (H, W) float32, camera z-depth in metres
    label: int         # 1..NUM_CLASSES, class with the most visible pixels
    seed: int


# --------------------------------------------------------------------------
# Shapes: unit solids in a local frame (y up, inside [-1, 1]^3)
# --------------------------------------------------------------------------

Intersector = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Shape:
    """A unit solid: ray intersector, local normals, floor contact, outline and proportions."""

    intersect: Intersector                         # (ox,oy,oz,dx,dy,dz) -> (t, face)
    normal: Callable[..., tuple[np.ndarray, ...]]  # (px,py,pz,face) -> local normal
    min_y: Callable[[np.ndarray], float]           # linear map M -> min world y over M @ solid
    outline: np.ndarray | None                     # (K, 3) hull points; None = ellipsoid
    aspect: Callable[[np.random.Generator], tuple[float, float, float]]
    # Yaw offset window (min, max |rad|) of the long local x axis from "across
    # the view"; None = any yaw. Keeps elongated shapes from being seen end-on.
    yaw_window: tuple[float, float] | None = None


def _quiet(fn: Intersector) -> Intersector:
    """Rays parallel to a plane or cap divide by zero; the inf/nan results are rejected."""
    @functools.wraps(fn)
    def wrapped(*args):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return fn(*args)
    return wrapped


def _roots(a, b, c):
    """Both roots of a t^2 + b t + c (nan-free where the discriminant is negative)."""
    disc = b * b - 4.0 * a * c
    ok = disc >= 0.0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    inv = 0.5 / a
    return (-b - sq) * inv, (-b + sq) * inv, ok


class _Polyhedron:
    """Convex polyhedron {p : N p <= h}, intersected by clipping the ray against planes."""

    def __init__(self, normals: Sequence[Sequence[float]], offsets: Sequence[float]):
        n = np.asarray(normals, dtype=np.float64)
        norm = np.linalg.norm(n, axis=1)
        self.n = n / norm[:, None]
        self.h = np.asarray(offsets, dtype=np.float64) / norm
        self.vertices = self._vertices()
        self._n32 = self.n.astype(_F32)

    def _vertices(self) -> np.ndarray:
        verts = []
        for idx in itertools.combinations(range(len(self.h)), 3):
            a = self.n[list(idx)]
            if abs(np.linalg.det(a)) < 1e-9:
                continue
            v = np.linalg.solve(a, self.h[list(idx)])
            if np.all(self.n @ v <= self.h + 1e-9):
                verts.append(v)
        return np.unique(np.round(np.array(verts), 9), axis=0)

    @_quiet
    def intersect(self, ox, oy, oz, dx, dy, dz):
        shape = np.broadcast_shapes(np.shape(ox), np.shape(dx))
        enter = np.full(shape, -np.inf, _F32)
        leave = np.full(shape, np.inf, _F32)
        face = np.zeros(shape, np.int8)
        for k in range(len(self.h)):
            n0, n1, n2 = (float(v) for v in self.n[k])
            nd = n0 * dx + n1 * dy + n2 * dz
            t = (float(self.h[k]) - (n0 * ox + n1 * oy + n2 * oz)) / nd
            front = nd < 0.0
            upd = front & (t > enter)
            enter = np.where(upd, t, enter)
            face[upd] = k
            leave = np.where(~front & (t < leave), t, leave)
        hit = (enter <= leave) & (enter > _EPS)
        return np.where(hit, enter, np.inf).astype(_F32, copy=False), face

    def normal(self, px, py, pz, face):
        n = self._n32[face]
        return n[:, 0], n[:, 1], n[:, 2]

    def min_y(self, m: np.ndarray) -> float:
        return float(np.min(self.vertices @ m[1]))


@_quiet
def _sphere_intersect(ox, oy, oz, dx, dy, dz):
    a = dx * dx + dy * dy + dz * dz
    b = 2.0 * (ox * dx + oy * dy + oz * dz)
    c = ox * ox + oy * oy + oz * oz - 1.0
    t0, _, ok = _roots(a, b, c)
    hit = ok & (t0 > _EPS)
    t = np.where(hit, t0, np.inf).astype(_F32, copy=False)
    return t, np.zeros(t.shape, np.int8)


def _sphere_normal(px, py, pz, face):
    return px, py, pz


def _caps(t, face, ox, oy, oz, dx, dy, dz, caps):
    """Close a lateral surface with unit-radius discs at the given heights."""
    for y_cap, fid in caps:
        tc = (y_cap - oy) / dy
        xc = ox + tc * dx
        zc = oz + tc * dz
        ok = (tc > _EPS) & (xc * xc + zc * zc <= 1.0) & (tc < t)
        t = np.where(ok, tc, t)
        face = np.where(ok, np.int8(fid), face)
    return t.astype(_F32, copy=False), face


@_quiet
def _cylinder_intersect(ox, oy, oz, dx, dy, dz):
    a = dx * dx + dz * dz
    b = 2.0 * (ox * dx + oz * dz)
    c = ox * ox + oz * oz - 1.0
    t0, _, ok = _roots(a, b, c)
    y0 = oy + t0 * dy
    side = ok & (t0 > _EPS) & (np.abs(y0) <= 1.0)
    t = np.where(side, t0, np.inf)
    face = np.zeros(np.shape(t), np.int8)
    return _caps(t, face, ox, oy, oz, dx, dy, dz, ((-1.0, 1), (1.0, 2)))


def _cylinder_normal(px, py, pz, face):
    side = face == 0
    return (np.where(side, px, 0.0), np.where(side, 0.0, np.where(face == 2, 1.0, -1.0)),
            np.where(side, pz, 0.0))


_CONE_K2 = 0.25  # radius (1 - y) / 2: apex at y = 1, unit base disc at y = -1


@_quiet
def _cone_intersect(ox, oy, oz, dx, dy, dz):
    w = 1.0 - oy
    a = dx * dx + dz * dz - _CONE_K2 * dy * dy
    b = 2.0 * (ox * dx + oz * dz + _CONE_K2 * w * dy)
    c = ox * ox + oz * oz - _CONE_K2 * w * w
    t0, t1, ok = _roots(a, b, c)
    t = np.full(np.broadcast_shapes(np.shape(t0), np.shape(ox)), np.inf, _F32)
    for tr in (t0, t1):
        y = oy + tr * dy
        good = ok & (tr > _EPS) & (y >= -1.0) & (y <= 1.0) & (tr < t)
        t = np.where(good, tr, t)
    face = np.zeros(t.shape, np.int8)
    return _caps(t, face, ox, oy, oz, dx, dy, dz, ((-1.0, 1),))


def _cone_normal(px, py, pz, face):
    side = face == 0
    return (np.where(side, px, 0.0), np.where(side, _CONE_K2 * (1.0 - py), -1.0),
            np.where(side, pz, 0.0))


def _ellipsoid_min_y(m: np.ndarray) -> float:
    return -float(np.linalg.norm(m[1]))


def _cylinder_min_y(m: np.ndarray) -> float:
    return -math.hypot(m[1, 0], m[1, 2]) - abs(m[1, 1])


def _cone_min_y(m: np.ndarray) -> float:
    return min(-math.hypot(m[1, 0], m[1, 2]) - m[1, 1], m[1, 1])


def _prism_planes(sides: int):
    """Side planes of an upright regular prism with unit circumradius plus caps."""
    ang = np.arange(sides) * 2 * np.pi / sides
    apothem = math.cos(math.pi / sides)
    normals = [[math.cos(a), 0.0, math.sin(a)] for a in ang] + [[0, 1, 0], [0, -1, 0]]
    return normals, [apothem] * sides + [1.0, 1.0]


def _tetra_planes():
    """Regular tetrahedron (circumradius 1) resting on a face: face normals, inradius 1/3."""
    r = math.sqrt(8.0) / 3.0
    normals = [[0.0, -1.0, 0.0]]
    for k in range(3):
        a = 2 * math.pi * k / 3
        normals.append([-r * math.cos(a), 1.0 / 3.0, -r * math.sin(a)])
    return normals, [1.0 / 3.0] * 4


def _normalised(x: float, y: float, z: float) -> tuple[float, float, float]:
    m = max(x, y, z)
    return x / m, y / m, z / m


def _make_shapes() -> dict[int, _Shape]:
    cube = _Polyhedron([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                       [1] * 6)
    pyramid = _Polyhedron([[0, -1, 0], [2, 1, 0], [-2, 1, 0], [0, 1, 2], [0, 1, -2]], [1] * 5)
    octa = _Polyhedron([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)],
                       [1] * 8)
    hexp = _Polyhedron(*_prism_planes(6))
    trip = _Polyhedron([[0, -1, 0], [0, 1, 2], [0, 1, -2], [1, 0, 0], [-1, 0, 0]], [1] * 5)
    tetra = _Polyhedron(*_tetra_planes())

    def poly(p: _Polyhedron, aspect, window=None) -> _Shape:
        return _Shape(p.intersect, p.normal, p.min_y, p.vertices, aspect, window)

    def cyl_aspect(rng):  # radius : half-height
        return _normalised(1.0, float(rng.uniform(0.8, 1.6)), 1.0)

    def cone_aspect(rng):
        return _normalised(1.0, float(rng.uniform(0.9, 1.5)), 1.0)

    def pyr_aspect(rng):
        return _normalised(1.0, float(rng.uniform(0.8, 1.2)), 1.0)

    def hex_aspect(rng):
        return _normalised(1.0, float(rng.uniform(0.6, 1.3)), 1.0)

    def tri_aspect(rng):  # long along x, equilateral-ish cross-section in (z, y)
        half_w = float(rng.uniform(0.45, 0.6))
        return 1.0, half_w * float(rng.uniform(0.8, 1.0)), half_w

    def egg_aspect(rng):
        e = float(rng.uniform(0.45, 0.55))
        return 1.0, e, e

    def octa_aspect(rng):
        return _normalised(1.0, float(rng.uniform(1.0, 1.3)), 1.0)

    def same(rng):
        return 1.0, 1.0, 1.0

    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    rim = np.stack([np.cos(ang), np.zeros_like(ang), np.sin(ang)], axis=1)
    cyl_pts = np.vstack([rim - [0, 1, 0], rim + [0, 1, 0]])
    cone_pts = np.vstack([rim - [0, 1, 0], [[0, 1, 0]]])
    return {
        1: _Shape(_sphere_intersect, _sphere_normal, _ellipsoid_min_y, None, same),
        2: poly(cube, same),
        3: _Shape(_cylinder_intersect, _cylinder_normal, _cylinder_min_y, cyl_pts, cyl_aspect),
        4: _Shape(_cone_intersect, _cone_normal, _cone_min_y, cone_pts, cone_aspect),
        5: poly(pyramid, pyr_aspect),
        6: poly(octa, octa_aspect),
        7: poly(hexp, hex_aspect),
        8: poly(trip, tri_aspect, (0.35, 1.0)),
        9: poly(tetra, same),
        10: _Shape(_sphere_intersect, _sphere_normal, _ellipsoid_min_y, None, egg_aspect,
                   (0.0, 0.8)),
    }


def _hull_area(pts: np.ndarray) -> float:
    """Area of the 2-D convex hull of (K, 2) points (monotone chain)."""
    p = sorted(map(tuple, pts.tolist()))

    def half(points):
        chain: list = []
        for q in points:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (q[1] - ay) - (by - ay) * (q[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(q)
        return chain[:-1]

    hull = half(p) + half(p[::-1])
    return 0.5 * abs(sum(x0 * y1 - x1 * y0
                         for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1])))


_SHAPES: dict[int, _Shape] = _make_shapes()

# The 8 corners of the local bounding cube, for screen-space bounding boxes.
_CORNERS = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))


# --------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------

def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=_F32)


@dataclass
class _Camera:
    pos: np.ndarray    # (3,) world
    rot: np.ndarray    # (3, 3) columns: right, up, forward in world
    focal: float       # pixels
    size: int

    def project(self, pts: np.ndarray) -> np.ndarray | None:
        """Pixel (col, row) of world points, or None if any lies behind the camera."""
        c = (pts - self.pos) @ self.rot
        if np.any(c[:, 2] < 0.05):
            return None
        half = self.size / 2.0
        return np.stack([half + self.focal * c[:, 0] / c[:, 2],
                         half - self.focal * c[:, 1] / c[:, 2]], axis=1)

    def bbox(self, pts: np.ndarray) -> tuple[int, int, int, int] | None:
        """(r0, r1, c0, c1) pixel window containing the points' projections, None if empty."""
        uv = self.project(pts)
        n = self.size
        if uv is None:
            return 0, n, 0, n
        c0 = max(int(math.floor(uv[:, 0].min())) - 1, 0)
        c1 = min(int(math.ceil(uv[:, 0].max())) + 1, n)
        r0 = max(int(math.floor(uv[:, 1].min())) - 1, 0)
        r1 = min(int(math.ceil(uv[:, 1].max())) + 1, n)
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1


@dataclass
class _Object:
    """Geometry of one placed solid."""

    cls: int
    shape: _Shape
    centre: np.ndarray   # (3,) world position of the local origin
    lin: np.ndarray      # (3, 3) local -> world linear part (R @ diag(s))
    inv: np.ndarray      # (3, 3) world -> local linear part
    radius: float        # horizontal bounding radius (m)

    def corners(self) -> np.ndarray:
        return self.centre + _CORNERS @ self.lin.T

    def top(self) -> float:
        return float(self.centre[1]) - self.shape.min_y(-self.lin)


@dataclass
class _Room:
    back: float              # z of the back wall
    left: float | None       # x of the left wall (negative) or None
    right: float | None
    ceiling: float | None


@dataclass
class _Spec:
    """Geometry of a scene: what the visibility check needs."""

    camera: _Camera
    room: _Room
    objects: list[_Object]   # objects[0] is the main object


@dataclass
class _Texture:
    kind: str            # plain | stripes | checker | noise
    c1: np.ndarray       # (3,) float32 base colour
    c2: np.ndarray       # (3,) float32 second colour
    freq: float          # cycles per unit length
    axis: np.ndarray     # (dims,) stripe direction
    duty: float
    table: np.ndarray | None  # value-noise lattice


@dataclass
class _Look:
    """Appearance of a scene, sampled once its geometry is accepted."""

    obj_tex: list[_Texture]
    obj_ks: list[float]        # specular strength
    obj_shine: list[int]       # log2 of the Blinn-Phong exponent
    floor_tex: _Texture
    wall_tex: _Texture
    ceil_col: np.ndarray
    skirting: tuple[float, np.ndarray] | None  # (height, colour)
    light: np.ndarray          # (3,) unit vector towards the light
    light_col: np.ndarray
    ambient: float
    diffuse: float
    shadow: float              # fraction of direct light removed in shadow
    noise_sigma: float


def _place(rng, cls: int, pos_xz: tuple[float, float], view_yaw: float,
           half: float | None = None, target: float | None = None,
           eye: np.ndarray | None = None, tan_half: float = 1.0) -> _Object:
    """Orient and scale a solid resting on the floor at ``pos_xz``.

    Either ``half`` (largest half-extent, m) is given, or ``target``: the
    fraction of the image the solid should cover seen from ``eye``.
    """
    shape = _SHAPES[cls]
    aspect = np.array(shape.aspect(rng))
    if shape.yaw_window is None:
        yaw = float(rng.uniform(0, 2 * math.pi))
    else:
        lo, hi = shape.yaw_window
        off = float(rng.uniform(lo, hi)) * (1.0 if rng.random() < 0.5 else -1.0)
        yaw = view_yaw + off + (math.pi if rng.random() < 0.5 else 0.0)
    tilt_axis = float(rng.uniform(0, 2 * math.pi))
    tilt = float(rng.uniform(0, math.radians(6)))
    rot = _rot_y(tilt_axis) @ _rot_x(tilt) @ _rot_y(-tilt_axis) @ _rot_y(yaw)
    unit = rot @ np.diag(aspect)
    lift = -shape.min_y(unit)      # centre height per metre of half-extent
    if half is None:
        half = _size_for_coverage(shape, unit, lift, pos_xz, eye, tan_half, target)
    lin = unit * half
    inv = np.diag(1.0 / (aspect * half)) @ rot.T
    centre = np.array([pos_xz[0], lift * half, pos_xz[1]])
    return _Object(cls, shape, centre, lin, inv, float(np.max(aspect) * half * 1.45))


def _coverage(shape: _Shape, unit: np.ndarray, centre: np.ndarray, eye: np.ndarray,
              tan_half: float) -> float:
    """Approximate image fraction of a solid (orthographic along the view ray)."""
    vx, vy, vz = (float(q) for q in centre - eye)
    dist = math.sqrt(vx * vx + vy * vy + vz * vz)
    vx, vy, vz = vx / dist, vy / dist, vz / dist
    h = math.hypot(vx, vz)
    e1 = np.array([-vz / h, 0.0, vx / h])             # v x up, normalised
    e2 = np.array([-vy * vx / h, h, -vy * vz / h])    # e1 x v
    proj = np.stack([e1 @ unit, e2 @ unit])           # (2, 3): solid -> image plane
    if shape.outline is None:  # ellipsoid: the unit ball maps to an ellipse
        area = math.pi * math.sqrt(max(np.linalg.det(proj @ proj.T), 0.0))
    else:
        area = _hull_area(shape.outline @ proj.T)
    return area / (2.0 * dist * tan_half) ** 2


def _size_for_coverage(shape, unit, lift, pos_xz, eye, tan_half, target) -> float:
    """Half-extent (m) at which the solid covers about ``target`` of the image."""
    half = 0.5
    for _ in range(3):  # the centre rises with size, which changes the view slightly
        centre = np.array([pos_xz[0], lift * half, pos_xz[1]])
        frac_unit = _coverage(shape, unit, centre, eye, tan_half)
        half = math.sqrt(target / frac_unit)
    return half


def _sample_geometry(rng: np.random.Generator, size: int, main_cls: int, attempt: int) -> _Spec:
    """Camera, room and objects of one candidate scene (``attempt`` counts re-samples)."""
    fov = math.radians(rng.uniform(50.0, 65.0))
    tan_half = math.tan(fov / 2)
    focal = (size / 2.0) / tan_half
    cam_h = float(rng.uniform(1.2, 2.2))
    eye = np.array([0.0, cam_h, 0.0])
    yaw = math.radians(rng.uniform(-10.0, 10.0))
    roll = math.radians(rng.uniform(-4.0, 4.0))

    # Main object: sized for a target image coverage; later attempts aim larger
    # so that re-sampling always converges.
    dist = float(rng.uniform(2.5, 5.0))
    target = float(rng.uniform(0.09, 0.20)) + 0.005 * max(0, attempt - 10)
    lateral = yaw + float(rng.uniform(-0.12, 0.12)) * fov / 2
    main = _place(rng, main_cls, (dist * math.sin(lateral), dist * math.cos(lateral)), yaw,
                  target=target, eye=eye, tan_half=tan_half)

    # Pitch aims the optical axis at the main object (with jitter), so it sits
    # near the image centre; a 15-35 deg pitch from <= 2.2 m alone would put the
    # image centre on the floor closer than the 2.5-5 m object distance.
    aim = math.atan2(cam_h - 0.5 * main.top(), dist) + math.radians(rng.uniform(-4.0, 4.0))
    pitch = min(max(aim, math.radians(10.0)), math.radians(35.0))
    rot = _rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll)
    camera = _Camera(eye, rot, focal, size)

    objects = [main]
    n_distract = 0 if attempt >= _MAX_ATTEMPTS // 2 else int(rng.integers(0, 4))
    main_half = float(np.linalg.norm(main.lin, axis=0).max())
    for _ in range(n_distract):
        for _try in range(8):
            cls = int(rng.integers(1, NUM_CLASSES + 1))
            # Aim at a random pixel (partly off-screen allowed) below the horizon.
            u = float(rng.uniform(-0.15, 1.15)) * size
            v = float(rng.uniform(0.3, 1.15)) * size
            d_w = rot @ np.array([(u - size / 2) / focal, -(v - size / 2) / focal, 1.0])
            if d_w[1] >= -1e-3:
                continue
            t = cam_h / -d_w[1]
            x, z = float(d_w[0] * t), float(d_w[2] * t)
            if not 1.2 < z < 11.0:
                continue
            o_half = main_half * float(rng.uniform(0.3, 0.65))
            if o_half / z > 0.6 * main_half / dist:  # keep it visibly smaller than the main one
                continue
            obj = _place(rng, cls, (x, z), yaw, half=o_half)
            if all(math.hypot(x - o.centre[0], z - o.centre[2]) > obj.radius + o.radius
                   for o in objects):
                objects.append(obj)
                break

    # Room bounds keep every object inside.
    far = max(o.centre[2] + o.radius for o in objects)
    back = max(float(rng.uniform(6.0, 12.0)), far + 0.3)
    left = right = ceiling = None
    if rng.random() < 0.6:
        left = min(-float(rng.uniform(2.5, 6.0)),
                   min(o.centre[0] - o.radius for o in objects) - 0.3)
    if rng.random() < 0.6:
        right = max(float(rng.uniform(2.5, 6.0)),
                    max(o.centre[0] + o.radius for o in objects) + 0.3)
    if rng.random() < 0.5:
        tops = max(o.top() for o in objects)
        ceiling = max(float(rng.uniform(2.6, 3.5)), cam_h + 0.4, tops + 0.2)
    return _Spec(camera, _Room(back, left, right, ceiling), objects)


def _random_colour(rng, sat=(0.2, 0.9), val=(0.35, 0.95)) -> np.ndarray:
    return _hsv(float(rng.random()), float(rng.uniform(*sat)), float(rng.uniform(*val)))


def _second_colour(rng, c1: np.ndarray) -> np.ndarray:
    if rng.random() < 0.3:
        return _random_colour(rng)
    darker = c1 * _F32(rng.uniform(0.45, 0.75)) + _F32(rng.uniform(0.0, 0.1))
    return np.clip(darker, 0, 1).astype(_F32)


def _random_texture(rng, c1: np.ndarray, freq: tuple[float, float], dims: int,
                    kinds=("plain", "stripes", "checker", "noise")) -> _Texture:
    kind = str(kinds[int(rng.integers(len(kinds)))])
    axis = rng.normal(size=dims)  # stripe direction in the texture's own coordinates
    axis /= np.linalg.norm(axis)
    table = None
    if kind == "noise":  # periodic lattice with the first row/col repeated at the end
        table = np.pad(rng.random((16,) * dims).astype(_F32), [(0, 1)] * dims, mode="wrap")
    return _Texture(kind, c1, _second_colour(rng, c1), float(rng.uniform(*freq)), axis,
                    float(rng.uniform(0.3, 0.6)), table)


def _sample_look(rng: np.random.Generator, spec: _Spec) -> _Look:
    """Colours, textures, light and noise level for an accepted geometry."""
    n = len(spec.objects)
    # Object textures live in the unit frame, so frequencies are per half-extent.
    obj_tex = [_random_texture(rng, _random_colour(rng), (1.0, 3.0), 3) for _ in range(n)]
    obj_ks = [float(rng.uniform(0.0, 0.35)) for _ in range(n)]
    obj_shine = [int(rng.integers(3, 6)) for _ in range(n)]  # log2 of the exponent: 8..32
    floor_tex = _random_texture(rng, _random_colour(rng, (0.05, 0.5), (0.3, 0.8)), (0.8, 3.0), 2)
    wall_tex = _random_texture(rng, _random_colour(rng, (0.03, 0.4), (0.5, 0.95)), (0.8, 3.0), 2)
    if floor_tex.kind == "stripes":  # planks run along a room axis
        floor_tex.axis = np.array([1.0, 0.0] if rng.random() < 0.5 else [0.0, 1.0])  # (x, z)
    if wall_tex.kind == "stripes":   # wallpaper stripes are vertical
        wall_tex.axis = np.array([1.0, 0.0])  # (along the wall, height)
    skirting = None
    if rng.random() < 0.5:
        skirting = (float(rng.uniform(0.06, 0.15)), _random_colour(rng, (0.0, 0.3), (0.2, 0.95)))
    ceil_col = _random_colour(rng, (0.0, 0.15), (0.7, 0.95))

    yaw = math.atan2(spec.camera.rot[0, 2], spec.camera.rot[2, 2])
    el = math.radians(rng.uniform(35.0, 70.0))
    if rng.random() < 0.8:  # mostly from behind or beside the camera
        az = yaw + math.pi + math.radians(rng.uniform(-100.0, 100.0))
    else:
        az = float(rng.uniform(0, 2 * math.pi))
    light = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    light_col = (1.0 - 0.15 * _random_colour(rng, (0.0, 1.0), (0.0, 1.0))).astype(_F32)
    return _Look(obj_tex, obj_ks, obj_shine, floor_tex, wall_tex, ceil_col, skirting, light,
                 light_col, ambient=float(rng.uniform(0.25, 0.45)),
                 diffuse=float(rng.uniform(0.55, 0.85)), shadow=float(rng.uniform(0.5, 0.8)),
                 noise_sigma=float(rng.uniform(1.0, 3.5)))


# --------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------

# Room surface ids (``_Trace.surface``) and their inward normals.
_FLOOR, _BACK, _LEFT, _RIGHT, _CEIL = range(5)
_BG_NORMALS = np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, -1, 0]], _F32)


@dataclass
class _Trace:
    """Per-pixel geometry buffers of one scene."""

    dirs: tuple[np.ndarray, np.ndarray, np.ndarray]  # world ray directions (camera z = 1)
    t: np.ndarray        # (H, W) camera z-depth of the nearest hit
    t_bg: np.ndarray     # (H, W) depth of the room alone (behind objects)
    surface: np.ndarray  # (H, W) int8 background surface id
    obj: np.ndarray      # (H, W) int8 object index, -1 = room
    face: np.ndarray     # (H, W) int8 face index on the object
    windows: list[tuple[int, int, int, int] | None]  # per object pixel window


def _ray_dirs(cam: _Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World directions of the pixel rays, scaled so their camera-space z is 1."""
    n = cam.size
    g = (np.arange(n, dtype=np.float64) + 0.5 - n / 2.0) / cam.focal
    xs, ys = g[None, :], -g[:, None]
    r = cam.rot
    return tuple((r[i, 0] * xs + r[i, 1] * ys + r[i, 2]).astype(_F32) for i in range(3))


def _trace_room(room: _Room, cam: _Camera, dirs) -> tuple[np.ndarray, np.ndarray]:
    """Depth and surface id of the nearest room plane for every pixel."""
    dx, dy, dz = dirs
    cx, cy, cz = (float(v) for v in cam.pos)
    inf = _F32(np.inf)
    planes = [
        (dy, 0.0 - cy, dy < 0),
        (dz, room.back - cz, dz > 0),
        (dx, (room.left - cx) if room.left is not None else None, dx < 0),
        (dx, (room.right - cx) if room.right is not None else None, dx > 0),
        (dy, (room.ceiling - cy) if room.ceiling is not None else None, dy > 0),
    ]
    best = np.full(dx.shape, inf, _F32)
    surface = np.zeros(dx.shape, np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for sid, (comp, off, facing) in enumerate(planes):
            if off is None:
                continue
            t = np.where(facing, off / comp, inf)
            closer = t < best
            best = np.where(closer, t, best)
            surface[closer] = sid
    return best, surface


def _trace(spec: _Spec) -> _Trace:
    """Cast all pixel rays: room first, then each object inside its screen window."""
    cam = spec.camera
    dirs = _ray_dirs(cam)
    t_bg, surface = _trace_room(spec.room, cam, dirs)
    t = t_bg.copy()
    obj = np.full(t.shape, -1, np.int8)
    face = np.zeros(t.shape, np.int8)
    windows = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i, o in enumerate(spec.objects):
            win = cam.bbox(o.corners())
            windows.append(win)
            if win is None:
                continue
            r0, r1, c0, c1 = win
            dx, dy, dz = (d[r0:r1, c0:c1] for d in dirs)
            a = o.inv.astype(_F32)
            ol = (o.inv @ (cam.pos - o.centre)).astype(_F32)
            dl = [a[k, 0] * dx + a[k, 1] * dy + a[k, 2] * dz for k in range(3)]
            ti, fi = o.shape.intersect(ol[0], ol[1], ol[2], *dl)
            tw = t[r0:r1, c0:c1]
            closer = ti < tw
            tw[closer] = ti[closer]
            obj[r0:r1, c0:c1][closer] = i
            face[r0:r1, c0:c1][closer] = fi[closer]
    return _Trace(dirs, t, t_bg, surface, obj, face, windows)


def _class_counts(spec: _Spec, tr: _Trace) -> tuple[np.ndarray, np.ndarray]:
    """Visible pixels per object and per class (index 0 = background)."""
    per_obj = np.bincount(tr.obj.ravel().astype(np.int64) + 1, minlength=len(spec.objects) + 1)[1:]
    per_cls = np.zeros(NUM_CLASSES + 1, np.int64)
    per_cls[0] = tr.obj.size - per_obj.sum()
    for o, n in zip(spec.objects, per_obj):
        per_cls[o.cls] += n
    return per_obj, per_cls


def _acceptable(spec: _Spec, tr: _Trace) -> bool:
    """Main object big enough and its class strictly the most visible one."""
    per_obj, per_cls = _class_counts(spec, tr)
    main_cls = spec.objects[0].cls
    if per_obj[0] < _MIN_MAIN_FRACTION * tr.obj.size or per_obj[0] < per_obj.max():
        return False
    others = np.delete(per_cls[1:], main_cls - 1)
    return bool(per_cls[main_cls] > others.max(initial=0)) and bool(np.isfinite(tr.t).all())


# --------------------------------------------------------------------------
# Shading
# --------------------------------------------------------------------------

def _value_noise(coords: Sequence[np.ndarray], table: np.ndarray) -> np.ndarray:
    """Smooth lattice noise in [0, 1]; ``table`` is periodic with a wrapped extra row/col.

    A table of n + 1 points per axis (last = first) lets the upper neighbour be
    ``index + 1`` without wrapping it.
    """
    n = table.shape[0] - 1
    flat = table.ravel()
    base, strides, wts = 0, [], []
    stride = 1
    for c in reversed(coords):  # row-major flat index of the lower lattice corner
        fl = np.floor(c)
        f = c - fl
        base = base + (fl.astype(np.intp) & (n - 1)) * stride
        strides.append(stride)
        wts.append(f * f * (3.0 - 2.0 * f))
        stride *= n + 1
    # Multilinear blend, one axis at a time.
    corners = [flat.take(base + sum(stride_k for stride_k, bit in zip(strides, bits) if bit))
               for bits in itertools.product((0, 1), repeat=len(coords))]
    for w in wts[::-1]:  # the product order varies the last stride fastest
        corners = [a + (b - a) * w for a, b in zip(corners[0::2], corners[1::2])]
    return corners[0]


def _albedo(tex: _Texture, coords: Sequence[np.ndarray],
            footprint: np.ndarray | None = None) -> np.ndarray:
    """(3, ...) colour of a texture at points given as separate coordinate arrays.

    ``footprint`` (size of a pixel on the surface, same unit as the coords)
    fades the pattern to its mean where it would alias (Moire on far floors).
    """
    shape = np.shape(coords[0])
    c1 = tex.c1.reshape((3,) + (1,) * len(shape))
    if tex.kind == "plain":
        return np.broadcast_to(c1, (3,) + shape)
    f = tex.freq
    if tex.kind == "stripes":
        s = sum(float(a * f) * c for a, c in zip(tex.axis, coords, strict=True))
        p = ((s - np.floor(s)) < tex.duty).astype(_F32)
        mean = tex.duty
    elif tex.kind == "checker":
        k = sum(np.floor(c * f) for c in coords)
        p = (k - 2.0 * np.floor(k * 0.5)).astype(_F32)
        mean = 0.5
    else:
        p = _value_noise([c * f for c in coords], tex.table).astype(_F32)
        mean = 0.5
    if footprint is not None:
        # Full contrast below 0.15 cycles per pixel, none from 0.45 (Nyquist ~0.5).
        keep = np.clip((0.45 - footprint * f) * (1.0 / 0.3), 0.0, 1.0)
        p = (p - mean) * keep + mean
    return c1 + p * (tex.c2 - tex.c1).reshape(c1.shape)


def _shadow_mask(spec: _Spec, tr: _Trace, light: np.ndarray, lit: np.ndarray,
                 px, py, pz) -> np.ndarray:
    """(H, W) bool: a lit point seen by the pixel is hidden from the light by an object."""
    cam = spec.camera
    shadow = np.zeros(tr.t.shape, bool)
    for i, o in enumerate(spec.objects):
        corners = o.corners()
        # The shadow volume lies between the object and its projection on the floor.
        on_floor = corners - np.outer(np.maximum(corners[:, 1], 0.0) / light[1], light)
        win = cam.bbox(np.vstack([corners, on_floor]))
        if win is None:
            continue
        r0, r1, c0, c1 = win
        # Convex solids do not shadow themselves beyond n.l < 0; unlit points need no test.
        sel = (tr.obj[r0:r1, c0:c1] != i) & lit[r0:r1, c0:c1] & ~shadow[r0:r1, c0:c1]
        if not sel.any():
            continue
        a = o.inv
        d = (a @ light).astype(_F32)
        rel = [q[r0:r1, c0:c1][sel] - _F32(o.centre[k]) for k, q in enumerate((px, py, pz))]
        ol = [_F32(a[k, 0]) * rel[0] + _F32(a[k, 1]) * rel[1] + _F32(a[k, 2]) * rel[2]
              for k in range(3)]
        ts, _ = o.shape.intersect(*ol, d[0], d[1], d[2])
        shadow[r0:r1, c0:c1][sel] = ts < np.inf
    return shadow


def _row_band(mask: np.ndarray) -> slice | None:
    """Smallest row range holding every True pixel of ``mask``."""
    rows = np.flatnonzero(mask.any(axis=1))
    return slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else None


def _shade_room(spec: _Spec, look: _Look, tr: _Trace, pts, albedo, ndl) -> None:
    """Fill albedo (3, H, W) and n.l of the room surfaces.

    Works on whole row bands (floor below, walls above) rather than gathered
    pixels; object pixels are overwritten afterwards.
    """
    cam = spec.camera
    px, py, pz = pts
    dx, dy, dz = tr.dirs
    surf = tr.surface
    ndl[...] = (_BG_NORMALS @ look.light.astype(_F32)).take(surf)
    floor = surf == _FLOOR
    inv_f = _F32(1.0 / cam.focal)
    # Pixel footprint on a plane: ray length / focal, stretched by 1 / cos(incidence).
    walls = _row_band(~floor)
    if walls is not None:
        back = surf[walls] == _BACK
        dxw, dyw, dzw = dx[walls], dy[walls], dz[walls]
        cos = np.maximum(np.abs(np.where(back, dzw, dxw)), 1e-3)
        foot = np.sqrt(dxw * dxw + dyw * dyw + dzw * dzw) * tr.t[walls] * inv_f / cos
        albedo[:, walls] = _albedo(look.wall_tex, (np.where(back, px[walls], pz[walls]), py[walls]),
                                   foot)
        if look.skirting is not None:
            np.copyto(albedo[:, walls], look.skirting[1][:, None, None],
                      where=(py[walls] < look.skirting[0])[None])
        if spec.room.ceiling is not None:
            np.copyto(albedo[:, walls], look.ceil_col[:, None, None],
                      where=(surf[walls] == _CEIL)[None])
    band = _row_band(floor)
    if band is not None:
        dxf, dyf, dzf = dx[band], dy[band], dz[band]
        foot = np.sqrt(dxf * dxf + dyf * dyf + dzf * dzf) * tr.t[band] * inv_f \
            / np.maximum(np.abs(dyf), 1e-3)
        np.copyto(albedo[:, band], _albedo(look.floor_tex, (px[band], pz[band]), foot),
                  where=floor[band][None])


def _shade_objects(spec: _Spec, look: _Look, tr: _Trace, albedo, ndl, spec_term) -> None:
    """Fill albedo, n.l and the specular term of the object pixels."""
    cam = spec.camera
    light = look.light.astype(_F32)
    for i, o in enumerate(spec.objects):
        win = tr.windows[i]
        if win is None:
            continue
        r0, r1, c0, c1 = win
        sel = tr.obj[r0:r1, c0:c1] == i
        if not sel.any():
            continue
        a = o.inv.astype(_F32)
        ol = (o.inv @ (cam.pos - o.centre)).astype(_F32)
        d = [q[r0:r1, c0:c1][sel] for q in tr.dirs]
        tt = tr.t[r0:r1, c0:c1][sel]
        dl = [a[k, 0] * d[0] + a[k, 1] * d[1] + a[k, 2] * d[2] for k in range(3)]
        pl = [ol[k] + tt * dl[k] for k in range(3)]
        nl = o.shape.normal(*pl, tr.face[r0:r1, c0:c1][sel])
        # Normals transform by the inverse transpose: (S^-1 R^T)^T = R S^-1.
        nw = [a[0, k] * nl[0] + a[1, k] * nl[1] + a[2, k] * nl[2] for k in range(3)]
        inv_len = 1.0 / np.sqrt(nw[0] * nw[0] + nw[1] * nw[1] + nw[2] * nw[2])
        ndl_o = (nw[0] * light[0] + nw[1] * light[1] + nw[2] * light[2]) * inv_len
        ndl[r0:r1, c0:c1][sel] = ndl_o
        albedo[:, r0:r1, c0:c1][:, sel] = _albedo(look.obj_tex[i], pl)
        ks = look.obj_ks[i]
        if ks > 0.0:  # Blinn-Phong highlight; exponent 2^k by repeated squaring (no pow)
            vlen = 1.0 / np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
            hv = [light[k] - d[k] * vlen for k in range(3)]
            hinv = inv_len / np.sqrt(hv[0] * hv[0] + hv[1] * hv[1] + hv[2] * hv[2])
            x = np.maximum((nw[0] * hv[0] + nw[1] * hv[1] + nw[2] * hv[2]) * hinv, 0.0)
            for _ in range(look.obj_shine[i]):
                x = x * x
            # Fade out towards the terminator instead of cutting at n.l = 0.
            spec_term[r0:r1, c0:c1][sel] = _F32(ks) * x * np.clip(ndl_o * 4.0, 0.0, 1.0)


_NOISE_CACHE: dict[int, np.ndarray] = {}


def _pixel_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(3, size, size) unit gaussian noise: a random window of a fixed per-process table.

    Drawing 3 x 168^2 normals costs more than the rest of the shading; a window
    at a random offset (with random flips) of one table is as good for sensor noise.
    """
    table = _NOISE_CACHE.get(size)
    if table is None:
        table = np.random.default_rng(size).standard_normal((3, 2 * size, 2 * size), dtype=_F32)
        _NOISE_CACHE[size] = table
    r, c = (int(v) for v in rng.integers(0, size + 1, size=2))
    win = table[:, r:r + size, c:c + size]
    fy, fx = (1 if v else -1 for v in rng.integers(0, 2, size=2))
    return win[:, ::fy, ::fx]


def _shade(spec: _Spec, look: _Look, tr: _Trace, rng: np.random.Generator) -> np.ndarray:
    """Lambert + ambient + highlight with cast shadows and pixel noise -> uint8 RGB."""
    cam = spec.camera
    t = tr.t
    pts = tuple(_F32(cam.pos[k]) + t * tr.dirs[k] for k in range(3))
    h, w = t.shape
    albedo = np.empty((3, h, w), _F32)
    ndl = np.empty((h, w), _F32)
    spec_term = np.zeros((h, w), _F32)
    _shade_room(spec, look, tr, pts, albedo, ndl)
    _shade_objects(spec, look, tr, albedo, ndl, spec_term)

    lit = ndl > 0.0
    shadow = _shadow_mask(spec, tr, look.light, lit, *pts)
    direct = np.where(lit & ~shadow, ndl, ndl * _F32(1.0 - look.shadow))
    np.maximum(direct, 0.0, out=direct)
    shade = _F32(look.ambient) + _F32(look.diffuse) * direct
    spec_term[shadow] = 0.0
    img = albedo * shade
    img *= (look.light_col * _F32(255.0))[:, None, None]
    img += spec_term * _F32(255.0)
    img += _pixel_noise(rng, h) * _F32(look.noise_sigma)
    np.clip(img, 0.0, 255.0, out=img)
    return img.transpose(1, 2, 0).astype(np.uint8)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def _check_args(seed: int, size: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"scene seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise DataError(f"scene size must be an integer >= 32, got {size!r}")


def _build(seed: int, size: int) -> tuple[_Spec, _Trace, np.random.Generator]:
    """Sample scene geometry from the seed's generator until it passes the visibility rules."""
    _check_args(seed, size)
    rng = np.random.default_rng(int(seed))
    main_cls = int(rng.integers(1, NUM_CLASSES + 1))
    for attempt in range(10 * _MAX_ATTEMPTS):
        spec = _sample_geometry(rng, int(size), main_cls, attempt)
        tr = _trace(spec)
        if _acceptable(spec, tr):
            return spec, tr, rng
    raise DataError(f"scene seed {seed}: no acceptable scene after {10 * _MAX_ATTEMPTS} attempts")


def render_scene(seed: int, size: int = 168) -> Scene:
    """Render the scene of ``seed`` at ``size`` x ``size`` pixels (deterministic)."""
    spec, tr, rng = _build(seed, size)
    image = _shade(spec, _sample_look(rng, spec), tr, rng)
    cls_of = np.array([0] + [o.cls for o in spec.objects], np.uint8)
    mask = cls_of[tr.obj.astype(np.int64) + 1]
    return Scene(image=image, mask=mask, depth=tr.t, label=spec.objects[0].cls, seed=int(seed))


def _render_args(args: tuple[int, int]) -> Scene:
    return render_scene(*args)


def render_batch(seeds: Sequence[int], size: int = 168, workers: int = 1,
                 progress: bool = False) -> list[Scene]:
    """Render many scenes in seed order; ``workers > 1`` uses processes, same result."""
    from tqdm import tqdm

    seeds = list(seeds)
    for s in seeds:
        _check_args(s, size)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise DataError(f"render_batch workers must be an integer >= 1, got {workers!r}")
    seeds = [int(s) for s in seeds]
    bar = tqdm(total=len(seeds), desc="scenes", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(seeds) < 2:
            out = []
            for s in seeds:
                out.append(render_scene(s, size))
                bar.update()
            return out
        import multiprocessing as mp

        # spawn: workers must not inherit a parent's thread pools (e.g. torch).
        ctx = mp.get_context("spawn")
        chunk = max(1, min(64, len(seeds) // (4 * workers)))
        with ctx.Pool(min(int(workers), len(seeds))) as pool:
            out = []
            for scene in pool.imap(_render_args, [(s, size) for s in seeds], chunksize=chunk):
                out.append(scene)
                bar.update()
            return out
    finally:
        bar.close()
