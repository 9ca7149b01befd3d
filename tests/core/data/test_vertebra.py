"""Procedural vertebra, shapes, sampling and voxelisation (core/data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.data import (
    MaskShape,
    Shape,
    Vertebra,
    VertebraParams,
    lattice_occupancy,
    near_surface_points,
    random_vertebra,
    sample_vertebra_params,
    smooth_union,
    smooth_union_local,
    uniform_points,
    voxelize,
)
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

SEEDS = list(range(10))


class Sphere:
    """Exact analytic sphere, a minimal Shape."""

    def __init__(self, centre=(1.3, -2.1, 0.7), radius=9.0):
        self.centre = np.asarray(centre, float)
        self.radius = float(radius)

    def sdf(self, points_mm):
        return np.linalg.norm(np.asarray(points_mm, float) - self.centre, axis=1) - self.radius

    def occupancy(self, points_mm):
        return self.sdf(points_mm) < 0

    def bounds_mm(self):
        return self.centre - self.radius, self.centre + self.radius


@pytest.fixture(scope="module")
def cases():
    """(vertebra, 1 mm voxelisation) for each seed, computed once."""
    out = []
    for seed in SEEDS:
        v = random_vertebra(seed)
        out.append((v, voxelize(v, 1.0)))
    return out


def test_shape_protocol():
    v = random_vertebra(0)
    assert isinstance(v, Shape)
    assert isinstance(Sphere(), Shape)


def test_determinism_same_seed_same_arrays():
    a, b = random_vertebra(7), random_vertebra(7)
    assert a.params == b.params
    pts = uniform_points(*a.bounds_mm(), 2000, np.random.default_rng(0))
    np.testing.assert_array_equal(a.sdf(pts), b.sdf(pts))
    np.testing.assert_array_equal(voxelize(a, 2.0).data, voxelize(b, 2.0).data)
    # a Generator works as well as an int seed
    c = random_vertebra(np.random.default_rng(7))
    assert c.params == a.params


def test_different_seeds_differ():
    a, b = random_vertebra(1), random_vertebra(2)
    assert a.params != b.params
    pts = uniform_points(*a.bounds_mm(), 2000, np.random.default_rng(0))
    assert not np.array_equal(a.occupancy(pts), b.occupancy(pts))


def test_variety_zero_is_the_mean_template():
    params = sample_vertebra_params(np.random.default_rng(123), variety=0.0)
    mean = VertebraParams()
    for field in dataclasses.fields(VertebraParams):
        got, want = getattr(params, field.name), getattr(mean, field.name)
        got, want = np.asarray(got, float), np.asarray(want, float)
        np.testing.assert_allclose(got, want, atol=1e-9, err_msg=field.name)
    with pytest.raises(InputError):
        sample_vertebra_params(np.random.default_rng(0), variety=-1.0)


def test_variety_scales_randomness():
    rng_small = [sample_vertebra_params(np.random.default_rng(s), 0.2).body_width for s in range(30)]
    rng_large = [sample_vertebra_params(np.random.default_rng(s), 1.0).body_width for s in range(30)]
    assert np.std(rng_small) < np.std(rng_large)


@pytest.mark.parametrize("i", range(len(SEEDS)))
def test_plausible_anatomy(cases, i):
    v, vol = cases[i]
    p = v.params
    assert 30.0 <= p.body_width <= 55.0
    assert 0.55 <= p.body_depth / p.body_width <= 0.85
    assert 22.0 <= p.body_height <= 32.0
    occ = vol.data.astype(bool)
    volume_ml = occ.sum() * np.prod(vol.spacing) / 1000.0
    assert 15.0 < volume_ml < 90.0
    # whole-vertebra extents (x: left-right incl. transverse processes, y: AP incl. spinous process)
    world = vol.voxel_centres_mm(occ)
    ext = world.max(axis=0) - world.min(axis=0) + 1.0
    assert 55.0 < ext[0] < 110.0 and ext[0] > p.body_width + 15.0
    assert 50.0 < ext[1] < 105.0
    assert 30.0 < ext[2] < 70.0
    # centred near the origin
    assert np.all(np.abs((world.max(axis=0) + world.min(axis=0)) / 2) < 10.0)
    # one piece
    assert ndimage.label(occ)[1] == 1
    # the canal centre is outside, behind the body (posterior = +y)
    canal = v.landmark_mm("canal_centre")
    assert not v.occupancy(canal[None])[0]
    assert v.occupancy(v.landmark_mm("body_centre")[None])[0]
    assert canal[1] > v.landmark_mm("body_centre")[1] + 10
    assert v.landmark_mm("spinous_tip")[1] > canal[1] + 15


@pytest.mark.parametrize("seed", [0, 3, 8])
def test_canal_is_a_closed_hole(seed):
    """In the plane of the pedicles the canal is a background region enclosed by bone."""
    v = random_vertebra(seed)
    cc = v._landmarks["canal_centre"]  # body frame
    u = np.arange(-60.0, 60.0, 0.5)
    gx, gy = np.meshgrid(u, u, indexing="ij")
    plane = np.stack([gx.ravel(), gy.ravel() + cc[1], np.full(gx.size, cc[2])], axis=1)
    occ = v.occupancy(v.to_world(plane)).reshape(gx.shape)
    labels, _ = ndimage.label(~occ)
    centre = labels[np.argmin(np.abs(u)), np.argmin(np.abs(u))]
    border = set(labels[0]) | set(labels[-1]) | set(labels[:, 0]) | set(labels[:, -1])
    assert centre > 0 and centre not in border


def test_sdf_sign_agrees_with_occupancy_and_is_accurate_near_surface():
    rng = np.random.default_rng(0)
    for seed in (0, 5):
        v = random_vertebra(seed)
        pts = uniform_points(*v.bounds_mm(), 20000, rng)
        d = v.sdf(pts)
        assert d.shape == (20000,) and np.issubdtype(d.dtype, np.floating)
        np.testing.assert_array_equal(d < 0, v.occupancy(pts))
        assert 0.03 < (d < 0).mean() < 0.5
        surf = near_surface_points(v, 3000, 0.0, rng)
        assert np.percentile(np.abs(v.sdf(surf)), 99) < 0.3
        # a unit step moves the sdf by at most about one mm (a distance-like field)
        step = rng.normal(size=surf.shape)
        step /= np.linalg.norm(step, axis=1, keepdims=True)
        assert np.max(np.abs(v.sdf(surf + step) - v.sdf(surf))) < 1.3


def test_culled_sdf_equals_full_union_near_the_shape():
    v = random_vertebra(4)
    rng = np.random.default_rng(1)
    lo, hi = v.bounds_mm()
    pts = uniform_points(lo - 10, hi + 10, 20000, rng)
    body = v.to_body_frame(pts).astype(np.float32)
    x, y, z = (np.ascontiguousarray(body[:, i]) for i in range(3))
    full = smooth_union_local([part.fn(x, y, z) for part in v._parts], v.params.smooth_k)
    got = v.sdf(pts)
    near = full < v.sdf_trust_mm
    np.testing.assert_allclose(got[near], full[near], atol=1e-5)
    assert np.all(got[~near] >= v.sdf_trust_mm - 1e-3)


def test_bounds_contain_the_shape():
    rng = np.random.default_rng(2)
    for seed in (1, 6):
        v = random_vertebra(seed)
        lo, hi = v.bounds_mm()
        pts = uniform_points(lo - 15, hi + 15, 40000, rng)
        inside = pts[v.occupancy(pts)]
        assert len(inside) > 0
        assert np.all(inside >= lo) and np.all(inside <= hi)


def test_smooth_union_properties():
    a = np.linspace(-3, 3, 61)
    b = np.zeros_like(a)
    u = smooth_union(a, b, 2.0)
    assert np.all(u <= np.minimum(a, b) + 1e-12)
    assert np.all(u >= np.minimum(a, b) - 0.5 - 1e-12)
    np.testing.assert_allclose(u[np.abs(a) >= 2], np.minimum(a, b)[np.abs(a) >= 2])
    np.testing.assert_allclose(smooth_union_local([a, b], 2.0), u, atol=1e-12)
    # a third part far above the minimum changes nothing (locality)
    np.testing.assert_allclose(smooth_union_local([a, b, np.minimum(a, b) + 2.0], 2.0), u, atol=1e-12)


def test_voxelize_frame_and_sphere():
    s = Sphere()
    spacing = (1.0, 1.5, 2.0)
    vol = voxelize(s, spacing, margin_mm=3.0)
    assert isinstance(vol, Volume)
    assert vol.data.dtype == np.uint8 and set(np.unique(vol.data)) <= {0, 1}
    np.testing.assert_allclose(vol.spacing, spacing)
    lo, hi = s.bounds_mm()
    np.testing.assert_allclose(vol.origin, lo - 3.0)
    # the grid covers bounds + margin
    assert np.all(vol.index_to_world(np.array(vol.shape) - 1) >= hi + 3.0 - 1e-9)
    centres = vol.voxel_centres_mm()
    dist = np.linalg.norm(centres - s.centre, axis=1).reshape(vol.shape)
    np.testing.assert_array_equal(vol.data.astype(bool), dist < s.radius)
    true_ml = 4 / 3 * np.pi * s.radius**3
    assert abs(vol.data.sum() * np.prod(spacing) - true_ml) / true_ml < 0.06


def test_voxelize_supersample_partial_volume():
    s = Sphere(radius=7.0)
    vol = voxelize(s, 2.0, supersample=4)
    assert vol.data.dtype == np.float32
    assert vol.data.min() >= 0 and vol.data.max() <= 1
    frac = vol.data[(vol.data > 0) & (vol.data < 1)]
    assert len(frac) > 50  # boundary voxels are partial
    true_ml = 4 / 3 * np.pi * s.radius**3
    assert abs(vol.data.sum() * 8.0 - true_ml) / true_ml < 0.03
    binary = voxelize(s, 2.0)
    np.testing.assert_array_equal(binary.affine, vol.affine)


def test_voxelize_origin_and_grid_shape():
    s = Sphere()
    vol = voxelize(s, 1.0, origin_mm=(-20.0, -20.0, -20.0), grid_shape=(41, 40, 39))
    assert vol.shape == (41, 40, 39)
    np.testing.assert_allclose(vol.origin, (-20.0, -20.0, -20.0))
    centred = voxelize(s, 1.0, grid_shape=(30, 30, 30))
    mid = centred.index_to_world(np.array([[14.5, 14.5, 14.5]]))[0]
    np.testing.assert_allclose(mid, s.centre, atol=1e-9)
    with pytest.raises(InputError):
        voxelize(s, 0.0)
    with pytest.raises(InputError):
        voxelize(s, 1.0, supersample=0)


@pytest.mark.parametrize("seed", [2, 9])
def test_hierarchical_voxelisation_is_exact(seed):
    v = random_vertebra(seed)
    vol = voxelize(v, (1.0, 1.0, 2.5))
    brute = v.occupancy(vol.voxel_centres_mm()).reshape(vol.shape)
    np.testing.assert_array_equal(vol.data.astype(bool), brute)
    lat = lattice_occupancy(v, vol.origin, vol.spacing, vol.shape)
    np.testing.assert_array_equal(lat, brute)


def test_mask_shape_matches_the_vertebra():
    v = random_vertebra(3)
    rng = np.random.default_rng(0)
    # a partial-volume (float) dense mask at 1 mm
    ms = MaskShape(voxelize(v, 1.0, supersample=2))
    assert isinstance(ms, Shape)
    near = near_surface_points(v, 4000, 1.5, rng)
    assert (ms.occupancy(near) == v.occupancy(near)).mean() >= 0.97
    # a binary mask at 1 mm: close to the surface it is off by up to half a voxel
    binary = MaskShape(voxelize(v, 1.0))
    box = uniform_points(*v.bounds_mm(), 4000, rng)
    assert (binary.occupancy(box) == v.occupancy(box)).mean() >= 0.98
    assert (binary.occupancy(near) == v.occupancy(near)).mean() >= 0.93
    d = ms.sdf(near)
    np.testing.assert_array_equal(d < 0, ms.occupancy(near))
    assert np.median(np.abs(d - v.sdf(near))) < 0.5
    # outside the volume: not occupied, positive and growing distance
    far = np.array([[500.0, 0.0, 0.0], [0.0, 0.0, -400.0]])
    assert not ms.occupancy(far).any()
    assert np.all(ms.sdf(far) > 300)
    lo, hi = ms.bounds_mm()
    inside = box[v.occupancy(box)]
    assert np.all(inside >= lo - 1.0) and np.all(inside <= hi + 1.0)
    # near_surface_points works on a MaskShape too
    pts = near_surface_points(ms, 500, 0.0, rng)
    assert np.percentile(np.abs(v.sdf(pts)), 90) < 1.0


def test_mask_shape_coarse_to_fine_voxelisation_is_exact():
    ms = MaskShape(voxelize(random_vertebra(6), 1.5))
    vol = voxelize(ms, (1.0, 1.0, 2.5))
    brute = ms.occupancy(vol.voxel_centres_mm()).reshape(vol.shape)
    np.testing.assert_array_equal(vol.data.astype(bool), brute)


def test_mask_shape_rejects_bad_masks():
    with pytest.raises(InputError):
        MaskShape(Volume(np.zeros((4, 4, 4), np.uint8), affine_from_spacing((1, 1, 1))))
    with pytest.raises(InputError):
        MaskShape(np.ones((4, 4, 4)))


def test_near_surface_points_distribution():
    v = random_vertebra(5)
    rng = np.random.default_rng(3)
    pts = near_surface_points(v, 4096, 1.5, rng)
    assert pts.shape == (4096, 3)
    d = v.sdf(pts)
    assert 1.0 < np.std(d) < 2.0
    assert abs(np.mean(d < 0) - 0.5) < 0.15
    # spread over the whole vertebra: both transverse processes and the spinous process get points
    body = v.to_body_frame(pts)
    x_lo, x_hi = body[:, 0].min(), body[:, 0].max()
    assert x_lo < -25 and x_hi > 25
    assert (body[:, 1] > v._landmarks["spinous_tip"][1] - 10).sum() > 20
    again = near_surface_points(v, 4096, 1.5, np.random.default_rng(3))
    np.testing.assert_array_equal(pts, again)


def test_uniform_points():
    pts = uniform_points((-1, 0, 2), (1, 5, 3), 1000, np.random.default_rng(0))
    assert pts.shape == (1000, 3)
    assert np.all(pts >= (-1, 0, 2)) and np.all(pts <= (1, 5, 3))


def test_vertebra_rejects_bad_input():
    with pytest.raises(InputError):
        Vertebra({"body_width": 40})
    with pytest.raises(InputError):
        random_vertebra(0).sdf(np.zeros((3, 2)))
