"""Procedural scene generator: determinism, ground truth consistency, balance."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cfqa_core.data import scenes
from cfqa_core.data.scenes import (
    CLASS_NAMES,
    NUM_CLASSES,
    Scene,
    render_batch,
    render_scene,
)
from cfqa_core.errors import DataError


@pytest.fixture(scope="module")
def batch() -> list[Scene]:
    """200 consecutive seeds, rendered once for the whole module."""
    return render_batch(range(200))


def test_class_names() -> None:
    assert NUM_CLASSES == 10
    assert len(CLASS_NAMES) == NUM_CLASSES + 1
    assert CLASS_NAMES[0] == "background"
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_same_seed_same_bytes_different_seed_differs() -> None:
    a, b, c = render_scene(11), render_scene(11), render_scene(12)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    assert a.depth.tobytes() == b.depth.tobytes()
    assert (a.label, a.seed) == (b.label, b.seed) == (a.label, 11)
    assert a.image.tobytes() != c.image.tobytes()
    assert a.depth.tobytes() != c.depth.tobytes()


@pytest.mark.parametrize("size", [168, 96])
def test_shapes_and_dtypes(size: int) -> None:
    s = render_scene(3, size=size)
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (size, size) and s.mask.dtype == np.uint8
    assert s.depth.shape == (size, size) and s.depth.dtype == np.float32
    assert isinstance(s.label, int) and 1 <= s.label <= NUM_CLASSES
    assert s.mask.max() <= NUM_CLASSES
    assert np.isfinite(s.depth).all() and s.depth.min() > 0.1
    # A real image, not a flat fill: room and object differ in colour.
    assert s.image.std() > 10


def test_label_is_the_dominant_class_and_main_object_is_large(batch: list[Scene]) -> None:
    n_pix = batch[0].mask.size
    for s in batch:
        counts = np.bincount(s.mask.ravel(), minlength=NUM_CLASSES + 1)[1:]
        assert counts.argmax() + 1 == s.label
        assert (np.sort(counts)[-2] < counts.max()), f"seed {s.seed}: tie"
        assert counts[s.label - 1] >= 0.08 * n_pix, f"seed {s.seed}: main object too small"
        # The main object sits near the image centre.
        rows, cols = np.nonzero(s.mask == s.label)
        h = s.mask.shape[0]
        assert abs(rows.mean() / h - 0.5) < 0.3 and abs(cols.mean() / h - 0.5) < 0.3


def test_all_classes_appear_balanced(batch: list[Scene]) -> None:
    labels = np.array([s.label for s in batch])
    counts = np.bincount(labels, minlength=NUM_CLASSES + 1)[1:]
    assert (counts > 0).all(), counts
    # 200 draws of a uniform class: expected 20 each (sd ~4.2).
    assert counts.min() >= 8 and counts.max() <= 35, counts
    # Distractors bring other classes into the masks too.
    seen = {int(c) for s in batch for c in np.unique(s.mask)}
    assert seen == set(range(NUM_CLASSES + 1))


def test_scene_fields_match_internal_trace() -> None:
    spec, tr, _ = scenes._build(21, 168)
    s = render_scene(21)
    np.testing.assert_array_equal(s.depth, tr.t)
    assert s.label == spec.objects[0].cls
    obj_cls = np.array([0] + [o.cls for o in spec.objects])[tr.obj.astype(int) + 1]
    np.testing.assert_array_equal(s.mask, obj_cls)


@pytest.mark.parametrize("seed", [0, 5, 42, 77])
def test_depth_is_camera_z_of_the_geometry(seed: int) -> None:
    spec, tr, _ = scenes._build(seed, 168)
    cam = spec.camera
    n = tr.t.shape[0]
    g = (np.arange(n) + 0.5 - n / 2) / cam.focal
    xs, ys = np.meshgrid(g, -g)
    # Back-project with z = depth: world = pos + R (x z, y z, z).
    cam_pts = np.stack([xs * tr.t, ys * tr.t, tr.t], axis=-1).astype(np.float64)
    world = cam.pos + cam_pts @ cam.rot.T
    room = tr.obj < 0
    floor = room & (tr.surface == scenes._FLOOR)
    back = room & (tr.surface == scenes._BACK)
    assert floor.sum() > 0.1 * n * n and back.sum() > 0.05 * n * n
    np.testing.assert_allclose(world[..., 1][floor], 0.0, atol=2e-3 * spec.room.back)
    np.testing.assert_allclose(world[..., 2][back], spec.room.back, rtol=1e-3)

    # Floor depth grows towards the top of the image along every column.
    both = floor[:-1] & floor[1:]
    upper, lower = tr.t[:-1][both], tr.t[1:][both]
    assert both.sum() > 100 and (upper > lower).all()

    # Objects are closer than the room behind them, and the main object stands
    # 2.5-5 m away (its pixels lie within a size-dependent margin of that).
    obj = tr.obj >= 0
    assert (tr.t[obj] < tr.t_bg[obj]).all()
    main = spec.objects[0]
    dist = math.hypot(main.centre[0], main.centre[2])
    assert 2.5 <= dist <= 5.0
    main_depth = tr.t[tr.obj == 0]
    assert main_depth.min() > 0.5 and main_depth.max() < dist + 2.0 * main.radius


def test_rejected_scenes_are_resampled_with_the_same_class(monkeypatch) -> None:
    first = render_scene(8)
    calls = []
    accept = scenes._acceptable

    def reject_first_25(spec, tr):
        calls.append(spec.objects[0].cls)
        return len(calls) > 25 and accept(spec, tr)

    monkeypatch.setattr(scenes, "_acceptable", reject_first_25)
    again = render_scene(8)
    assert len(calls) >= 26 and set(calls) == {first.label}
    assert again.label == first.label
    assert again.image.tobytes() != first.image.tobytes()  # a different candidate won
    assert (again.mask == again.label).mean() >= 0.08
    # Late attempts drop the distractors so the search always converges.
    assert set(np.unique(again.mask)) == {0, again.label}


def test_render_batch_workers_match_serial() -> None:
    seeds = [4, 9, 16, 25, 36]
    serial = render_batch(seeds)
    parallel = render_batch(seeds, workers=2)
    assert [s.seed for s in parallel] == seeds
    for a, b in zip(serial, parallel):
        assert a.label == b.label
        assert a.image.tobytes() == b.image.tobytes()
        assert a.mask.tobytes() == b.mask.tobytes()
        assert a.depth.tobytes() == b.depth.tobytes()


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": 1, "size": 8}, "size"),
])
def test_bad_arguments_raise_data_error(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        render_scene(**kwargs)


def test_render_batch_bad_arguments() -> None:
    with pytest.raises(DataError, match="seed"):
        render_batch([1, -2])
    with pytest.raises(DataError, match="workers"):
        render_batch([1], workers=0)


# --------------------------------------------------------------------------
# The unit solids and their intersectors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cls, n_vertices", [(2, 8), (5, 5), (6, 6), (7, 12), (8, 6), (9, 4)])
def test_polyhedra_from_half_spaces(cls: int, n_vertices: int) -> None:
    verts = scenes._SHAPES[cls].outline
    assert verts.shape == (n_vertices, 3)
    assert np.abs(verts).max() <= 1.0 + 1e-9  # inside the unit bounding cube


# A ray from (0, 0, 5) along -z enters each unit solid at z = its extent on the axis
# (the hexagonal prism has a vertical edge there, the tetrahedron a face).
@pytest.mark.parametrize("cls, z_entry", [
    (1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5), (5, 0.5), (6, 1.0),
    (7, 1.0), (8, 0.5), (9, 1 / math.sqrt(6)), (10, 1.0),
])
def test_axis_ray_hits_at_known_depth(cls: int, z_entry: float) -> None:
    shape = scenes._SHAPES[cls]
    o = [np.float32(0.0), np.float32(0.0), np.float32(5.0)]
    d = [np.full((2, 2), v, np.float32) for v in (0.0, 0.0, -1.0)]
    t, _ = shape.intersect(*o, *d)
    np.testing.assert_allclose(t, 5.0 - z_entry, rtol=1e-5)
    t_miss, _ = shape.intersect(*o, *[-q for q in d])  # pointing away
    assert np.isinf(t_miss).all()


def test_outward_normals() -> None:
    # Hit points on the +x side of each solid have normals with positive x.
    for cls, shape in scenes._SHAPES.items():
        o = [np.float32(5.0), np.float32(-0.1), np.float32(0.02)]
        d = [np.full(1, v, np.float32) for v in (-1.0, 0.0, 0.0)]
        t, face = shape.intersect(*o, *d)
        assert np.isfinite(t).all(), CLASS_NAMES[cls]
        p = [o[k] + t * d[k] for k in range(3)]
        n = shape.normal(*p, face)
        assert float(np.ravel(n[0])[0]) > 0.0, CLASS_NAMES[cls]


def _surface_samples(cls: int) -> np.ndarray:
    """Dense points on the surface of a unit solid (independent of its min_y)."""
    ang = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    if cls in (1, 10):
        u, v = np.meshgrid(ang, np.linspace(0, np.pi, 361))
        return np.stack([np.sin(v) * np.cos(u), np.cos(v), np.sin(v) * np.sin(u)], -1).reshape(-1, 3)
    rim = np.stack([np.cos(ang), np.zeros_like(ang), np.sin(ang)], axis=1)
    if cls == 3:
        return np.vstack([rim - [0, 1, 0], rim + [0, 1, 0]])
    if cls == 4:
        return np.vstack([rim - [0, 1, 0], [[0, 1, 0]]])
    return scenes._SHAPES[cls].outline  # polyhedra: their vertices


def test_objects_rest_on_the_floor() -> None:
    # Every object's lowest surface point touches y = 0: none floats or sinks.
    n_objects = 0
    for seed in range(40):
        spec, _, _ = scenes._build(seed, 96)
        for o in spec.objects:
            y = o.centre[1] + _surface_samples(o.cls) @ o.lin[1]
            half = float(np.abs(o.lin).max())
            assert -1e-9 < y.min() < 1e-4 * half, (seed, CLASS_NAMES[o.cls], y.min())
            n_objects += 1
    assert n_objects > 60
