"""Signed distance primitives, the :class:`Shape` protocol, point sampling and voxelisation.

Conventions: points are ``(N, 3)`` arrays in world millimetres; an SDF is negative inside, in mm.
Primitives are vectorised numpy and work on any float dtype. The ``_xyz`` variants take the three
coordinate columns separately (contiguous 1D arrays are much faster than strided ``(N, 3)`` columns)
and are what composite shapes use internally.
"""

from __future__ import annotations

import contextlib
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from ..config.errors import InputError
from ..volumes.volume import Volume, affine_from_spacing

# --------------------------------------------------------------------------------------------------
# primitives on separate coordinate arrays


def _f3(v):
    """Three Python floats (keeps float32 inputs float32 under numpy's promotion rules)."""
    return tuple(float(c) for c in np.asarray(v, dtype=float).reshape(3))


def _norm3(x, y, z):
    return np.sqrt(x * x + y * y + z * z)


def sphere_xyz(x, y, z, centre, radius):
    cx, cy, cz = _f3(centre)
    return _norm3(x - cx, y - cy, z - cz) - float(radius)


def ellipsoid_xyz(x, y, z, centre, radii):
    """Ellipsoid bound: ``(|p / r| - 1) * min(r)``; exact zero set and sign, slope <= 1, equal to the
    distance for a sphere and an underestimate of it for elongated ellipsoids."""
    cx, cy, cz = _f3(centre)
    rx, ry, rz = _f3(radii)
    k0 = _norm3((x - cx) * (1.0 / rx), (y - cy) * (1.0 / ry), (z - cz) * (1.0 / rz))
    return (k0 - 1.0) * min(rx, ry, rz)


def ellipse_xy(x, y, a, b):
    """Approximate 2D ellipse distance (semi-axes a, b, centred at 0): exact zero set and sign."""
    a, b = float(a), float(b)
    k0 = np.sqrt((x * (1.0 / a)) ** 2 + (y * (1.0 / b)) ** 2)
    k1 = np.sqrt((x * (1.0 / (a * a))) ** 2 + (y * (1.0 / (b * b))) ** 2)
    return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -min(a, b))


def capsule_xyz(x, y, z, a, b, radius):
    ax, ay, az = _f3(a)
    bx, by, bz = _f3(b)
    bax, bay, baz = bx - ax, by - ay, bz - az
    inv = 1.0 / max(bax * bax + bay * bay + baz * baz, 1e-12)
    px, py, pz = x - ax, y - ay, z - az
    h = np.clip((px * bax + py * bay + pz * baz) * inv, 0.0, 1.0)
    return _norm3(px - bax * h, py - bay * h, pz - baz * h) - float(radius)


def round_cone_xyz(x, y, z, a, b, r1, r2):
    """Exact distance to the convex hull of a sphere (a, r1) and a sphere (b, r2) (Quilez)."""
    ax, ay, az = _f3(a)
    bx, by, bz = _f3(b)
    r1, r2 = float(r1), float(r2)
    bax, bay, baz = bx - ax, by - ay, bz - az
    l2 = bax * bax + bay * bay + baz * baz
    rr = r1 - r2
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    px, py, pz = x - ax, y - ay, z - az
    yy = px * bax + py * bay + pz * baz
    zz = yy - l2
    qx, qy, qz = px * l2 - bax * yy, py * l2 - bay * yy, pz * l2 - baz * yy
    x2 = qx * qx + qy * qy + qz * qz
    y2 = yy * yy * l2
    z2 = zz * zz * l2
    k = float(np.sign(rr)) * rr * rr * x2
    d_b = np.sqrt(x2 + z2) * il2 - r2
    d_a = np.sqrt(x2 + y2) * il2 - r1
    d_side = (np.sqrt(x2 * (a2 * il2)) + yy * rr) * il2 - r1
    return np.where(np.sign(zz) * a2 * z2 > k, d_b, np.where(np.sign(yy) * a2 * y2 < k, d_a, d_side))


def rounded_box_xyz(x, y, z, centre, half_extents, radius, axes=None):
    """Box with rounded edges; ``axes`` (3x3) columns are the box's local axes (identity if None).

    ``half_extents`` include the rounding (the box touches ``centre +- half_extents`` along each axis).
    """
    cx, cy, cz = _f3(centre)
    dx, dy, dz = x - cx, y - cy, z - cz
    if axes is None:
        qs = (dx, dy, dz)
    else:
        ax = np.asarray(axes, dtype=float)
        qs = tuple(dx * float(ax[0, i]) + dy * float(ax[1, i]) + dz * float(ax[2, i]) for i in range(3))
    radius = float(radius)
    e = [h - radius for h in _f3(half_extents)]
    d0, d1, d2 = (np.abs(q) - e[i] for i, q in enumerate(qs))
    outside = _norm3(np.maximum(d0, 0.0), np.maximum(d1, 0.0), np.maximum(d2, 0.0))
    inside = np.minimum(np.maximum(np.maximum(d0, d1), d2), 0.0)
    return outside + inside - radius


def rounded_cylinder_xyz(x, y, z, centre, radii_xy, half_height, edge_radius):
    """Elliptic cylinder along z with rounded rims (approximate for an elliptic section)."""
    cx, cy, cz = _f3(centre)
    r = float(edge_radius)
    d2 = ellipse_xy(x - cx, y - cy, float(radii_xy[0]) - r, float(radii_xy[1]) - r)
    dz = np.abs(z - cz) - (float(half_height) - r)
    return np.minimum(np.maximum(d2, dz), 0.0) + np.hypot(np.maximum(d2, 0.0), np.maximum(dz, 0.0)) - r


# --------------------------------------------------------------------------------------------------
# combinations


def smooth_union(a, b, k: float):
    """Polynomial smooth minimum (Quilez); ``k`` (mm) is the blend width. k <= 0 is the plain min."""
    k = float(k)
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - h * h * (k * 0.25)


def smooth_intersection(a, b, k: float):
    return -smooth_union(-a, -b, k)


def smooth_subtraction(a, b, k: float):
    """``a`` with ``b`` carved out."""
    return smooth_intersection(a, -b, k)


def smooth_union_all(ds, k: float):
    """Sequential :func:`smooth_union` (depends slightly on the order)."""
    ds = list(ds)
    out = ds[0]
    for d in ds[1:]:
        out = smooth_union(out, d, k)
    return out


def smooth_union_local(ds, k: float):
    """Order-free smooth union with strictly local blending.

    ``m - k/4 * (1 - prod_i (1 - h_i^2))`` with ``m = min_i d_i`` and ``h_i = max(k - (d_i - m), 0) / k``
    over the parts other than the nearest one. For two parts it is :func:`smooth_union`; a part
    farther than ``k`` above the minimum has no effect at all (so far parts may be skipped), the
    result is at most ``k/4`` below the plain minimum, and its slope stays at most 1 while no more
    than five parts are within ``k`` of each other.
    """
    ds = np.stack([np.asarray(d) for d in ds])
    k = float(k)
    m = ds.min(axis=0)
    if k <= 0:
        return m
    h = np.maximum(k - (ds - m), 0.0) * (1.0 / k)
    fac = 1.0 - h * h
    nearest = np.argmin(ds, axis=0)
    np.put_along_axis(fac, nearest[None], 1.0, axis=0)
    return m - (0.25 * k) * (1.0 - fac.prod(axis=0))


# --------------------------------------------------------------------------------------------------
# shapes


@runtime_checkable
class Shape(Protocol):
    """A solid in world mm."""

    def occupancy(self, points_mm: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> (N,) bool, True inside."""
        ...

    def sdf(self, points_mm: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> (N,) float mm, negative inside (may be approximate away from the surface)."""
        ...

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Conservative axis-aligned (lo, hi) box containing the whole shape."""
        ...


class MaskShape:
    """A dense mask :class:`Volume` used as a shape (e.g. to pretrain on real dense masks).

    Occupancy: trilinear interpolation of the mask (values > 0.5 are inside), False outside the
    grid. SDF: signed Euclidean distance transform in mm (voxel spacing from the affine, which must
    be axis aligned up to a rotation), shifted by half a voxel so that its zero level lies between
    inside and outside voxel centres, interpolated trilinearly; its sign always agrees with
    :meth:`occupancy`. Outside the grid the distance to the grid box is added.
    """

    sdf_certifies = True  # usable by lattice_occupancy's coarse-to-fine evaluation
    sdf_lipschitz = 1.75  # trilinear interpolation of a distance transform: slope <= sqrt(3)

    def __init__(self, mask: Volume):
        if not isinstance(mask, Volume):
            raise InputError(f"MaskShape needs a Volume, got {type(mask).__name__}")
        data = np.asarray(mask.data)
        if not np.issubdtype(data.dtype, np.number) and data.dtype != bool:
            raise InputError(f"mask must be numeric, got dtype {data.dtype}")
        values = data.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise InputError("mask contains NaN or infinite values")
        inside = values > 0.5
        if not inside.any():
            raise InputError("mask is empty: no voxel > 0.5")
        self.mask = mask
        self.name = "a dense mask"  # what error messages call it (pretrain: the file name)
        self._values = values
        self._inv = np.linalg.inv(mask.affine)
        spacing = mask.spacing
        padded = np.pad(inside, 1)
        d_out = ndimage.distance_transform_edt(~padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
        d_in = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
        half = 0.5 * float(spacing.min())
        self.sdf_slack_mm = float(spacing.max())
        self._sdf_grid = np.where(inside, -(d_in - half), d_out - half).astype(np.float32)
        idx = np.argwhere(inside)
        lo_i = idx.min(axis=0) - 1.0
        hi_i = idx.max(axis=0) + 1.0
        corners = np.array(
            [[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1]) for c in (lo_i[2], hi_i[2])]
        )
        world = mask.index_to_world(corners)
        self._bounds = (world.min(axis=0), world.max(axis=0))

    def _index(self, points_mm):
        p = np.asarray(points_mm, dtype=float)
        if p.ndim != 2 or p.shape[1] != 3:
            raise InputError(f"points must be (N, 3), got shape {p.shape}")
        inv = self._inv
        return np.stack([p[:, 0] * inv[i, 0] + p[:, 1] * inv[i, 1] + p[:, 2] * inv[i, 2] + inv[i, 3] for i in range(3)])

    def occupancy(self, points_mm: np.ndarray) -> np.ndarray:
        idx = self._index(points_mm)
        vals = ndimage.map_coordinates(self._values, idx, order=1, mode="constant", cval=0.0, prefilter=False)
        return vals > 0.5

    def sdf(self, points_mm: np.ndarray) -> np.ndarray:
        idx = self._index(points_mm)
        shape = np.asarray(self._values.shape, dtype=float)[:, None]
        clamped = np.clip(idx, 0.0, shape - 1.0)
        vals = ndimage.map_coordinates(self._sdf_grid, clamped, order=1, mode="nearest", prefilter=False)
        # distance (mm) from a point outside the grid to the grid box, along each array axis
        excess = (idx - clamped) * self.mask.spacing[:, None]
        vals = np.abs(vals.astype(float)) + np.sqrt((excess**2).sum(axis=0))
        vals = np.maximum(vals, 1e-6)
        return np.where(self.occupancy(points_mm), -vals, vals)

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        return self._bounds[0].copy(), self._bounds[1].copy()

    @property
    def observed_axis(self) -> int | None:
        """The voxel axis of a mask with thick slices (spacing over 1.5x the finest), else None: such a mask
        is itself an observation, known only on its slice planes."""
        spacing = self.mask.spacing
        axis = int(np.argmax(spacing))
        return axis if spacing[axis] > 1.5 * spacing.min() else None

    def snap_to_observed(self, points_mm: np.ndarray) -> np.ndarray:
        """Points moved along the thick axis onto the nearest slice plane of the mask (unchanged for a dense
        mask): where its labels are known. Pretraining puts its loss only there (core/fitting/pretrain)."""
        axis = self.observed_axis
        if axis is None:
            return np.asarray(points_mm, dtype=float)
        index = self.mask.world_to_index(np.asarray(points_mm, dtype=float))
        index[:, axis] = np.clip(np.round(index[:, axis]), 0, self.mask.shape[axis] - 1)
        return self.mask.index_to_world(index)


class AugmentedShape:
    """A shape mirrored left-right (world x) and scaled about its box centre: a training-shape augmentation
    that keeps anatomy plausible (vertebrae are near mirror-symmetric; sizes vary by about 10 %)."""

    def __init__(self, shape: MaskShape, mirror: bool = False, scale: float = 1.0) -> None:
        self.base, self.scale = shape, float(scale)
        self.name = getattr(shape, "name", type(shape).__name__)
        lo, hi = shape.bounds_mm()
        self.centre = (lo + hi) / 2
        self._forward = np.diag([-1.0 if mirror else 1.0, 1.0, 1.0]) * self.scale
        self._backward = np.linalg.inv(self._forward)
        self.sdf_certifies = getattr(shape, "sdf_certifies", False)
        self.sdf_lipschitz = getattr(shape, "sdf_lipschitz", 0.0)  # a mirror and a uniform scale keep the slope
        self.sdf_slack_mm = getattr(shape, "sdf_slack_mm", 0.0) * self.scale

    def _to_base(self, points_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(points_mm, dtype=float) - self.centre) @ self._backward.T + self.centre

    def _from_base(self, points_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(points_mm, dtype=float) - self.centre) @ self._forward.T + self.centre

    def occupancy(self, points_mm: np.ndarray) -> np.ndarray:
        return self.base.occupancy(self._to_base(points_mm))

    def sdf(self, points_mm: np.ndarray) -> np.ndarray:
        return self.base.sdf(self._to_base(points_mm)) * self.scale

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.base.bounds_mm()
        box = [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        corners = self._from_base(np.array(box))
        return corners.min(0), corners.max(0)

    def snap_to_observed(self, points_mm: np.ndarray) -> np.ndarray:
        return self._from_base(self.base.snap_to_observed(self._to_base(points_mm)))


# --------------------------------------------------------------------------------------------------
# sampling


def uniform_points(lo, hi, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points uniform in the box [lo, hi]."""
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    return lo + rng.random((int(n), 3)) * (hi - lo)


def _sdf_gradient(shape, points, h: float = 0.25):
    """Central-difference free tetrahedral gradient estimate of the SDF (4 evaluations per point)."""
    offs = np.array([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=float)
    n = len(points)
    vals = shape.sdf((points[None, :, :] + h * offs[:, None, :]).reshape(-1, 3)).reshape(4, n)
    return np.stack([sum(offs[i, j] * vals[i] for i in range(4)) for j in range(3)], axis=1) / (4.0 * h)


def _coarse_band(shape, cell_mm: float, reach_mm: float):
    """Centres of the cells of a coarse grid over the shape that may hold points with
    ``|sdf| < reach_mm - slope * half-diagonal``; cached on the shape (attribute
    ``_dropsembles_band``) when it allows attributes."""
    key = (cell_mm, reach_mm)
    cache = getattr(shape, "_dropsembles_band", None)
    if cache is not None and cache[0] == key:
        return cache[1]
    lo, hi = (np.asarray(b, dtype=float) for b in shape.bounds_mm())
    lo = lo - cell_mm
    hi = hi + cell_mm
    n = np.maximum(np.ceil((hi - lo) / cell_mm).astype(int), 1)
    idx = np.indices(tuple(n)).reshape(3, -1)
    grid = _lattice_points(lo + cell_mm / 2, np.full(3, cell_mm), idx)
    d = np.asarray(shape.sdf(grid))
    centres = grid[np.abs(d) <= reach_mm]
    if len(centres) == 0:  # tiny shape: the cell nearest the surface
        centres = grid[[np.argmin(np.abs(d))]]
    with contextlib.suppress(AttributeError):  # shapes with __slots__ just do not cache
        shape._dropsembles_band = (key, centres)
    return centres


def near_surface_points(shape: Shape, n: int, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points scattered about the surface: surface samples plus isotropic N(0, sigma) noise.

    Surface samples are close to uniform by area: uniform points in the thin shell
    ``|sdf| < band`` (found through a coarse grid of cells cached on the shape) projected onto
    the zero level by one Newton step along the SDF gradient (error well under 0.2 mm for the
    vertebra).
    """
    n = int(n)
    if n <= 0:
        return np.zeros((0, 3))
    lo, hi = (np.asarray(b, dtype=float) for b in shape.bounds_mm())
    cell = float(np.clip(np.min(hi - lo) / 12.0, 0.5, 4.0))
    band = 0.35 * cell
    centres = _coarse_band(shape, cell, 1.25 * cell * np.sqrt(3) / 2 + band)
    out = []
    have = 0
    rate = 0.15  # expected fraction of candidates inside the shell, updated as we go
    for _ in range(30):
        m = int(1.2 * (n - have) / rate) + 64
        cand = centres[rng.integers(0, len(centres), m)] + (rng.random((m, 3)) - 0.5) * cell
        d = np.asarray(shape.sdf(cand), dtype=float)
        keep = np.abs(d) < band
        rate = max(keep.mean(), 0.01)
        cand, d = cand[keep][: n - have], d[keep][: n - have]
        if len(cand) == 0:
            continue
        g = _sdf_gradient(shape, cand)
        g2 = np.maximum((g * g).sum(axis=1), 1e-6)
        out.append(cand - (d / g2)[:, None] * g)
        have += len(cand)
        if have >= n:
            break
    if have < n:
        raise InputError("could not find the surface of the shape (is it empty?)")
    pts = np.concatenate(out)[:n]
    if sigma_mm > 0:
        pts = pts + rng.normal(0.0, sigma_mm, pts.shape)
    return pts


# --------------------------------------------------------------------------------------------------
# voxelisation


def _grid_frame(shape, spacing, margin_mm, origin_mm, grid_shape):
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError(f"spacing must be positive, got {spacing}")
    lo, hi = (np.asarray(b, dtype=float) for b in shape.bounds_mm())
    lo = lo - margin_mm
    hi = hi + margin_mm
    if grid_shape is not None:
        gshape = np.asarray(grid_shape, dtype=int)
        if gshape.shape != (3,) or np.any(gshape < 1):
            raise InputError(f"grid_shape must be 3 positive integers, got {grid_shape}")
        centred = (lo + hi) / 2 - (gshape - 1) / 2 * spacing
        origin = centred if origin_mm is None else np.asarray(origin_mm, dtype=float)
    else:
        origin = lo if origin_mm is None else np.asarray(origin_mm, dtype=float)
        gshape = np.maximum(np.ceil((hi - origin) / spacing - 1e-9).astype(int) + 1, 1)
    return spacing, origin, tuple(int(s) for s in gshape)


def _lattice_points(origin, spacing, index_blocks):
    """World points (N, 3) of lattice indices given as three 1D arrays."""
    i, j, k = index_blocks
    pts = np.empty((len(i), 3))
    pts[:, 0] = i * spacing[0] + origin[0]
    pts[:, 1] = j * spacing[1] + origin[1]
    pts[:, 2] = k * spacing[2] + origin[2]
    return pts


def lattice_occupancy(
    shape: Shape,
    origin,
    spacing,
    grid_shape,
    *,
    lipschitz: float = 1.25,
    top_block_mm: float = 4.0,
    prune=None,
) -> np.ndarray:
    """Exact occupancy of ``shape`` at every point of a regular axis-aligned lattice, bool array.

    Lattice point ``(i, j, k)`` is at ``origin + (i, j, k) * spacing``. Coarse-to-fine: a block of
    lattice points whose centre is farther from the surface than ``lipschitz`` times the block's
    half-diagonal takes the sign of its centre; only blocks near the surface are refined, and the
    points of the finest uncertain blocks are evaluated with ``shape.occupancy``.

    Only shapes that declare ``sdf_certifies = True`` are evaluated this way (the others at every
    point): their SDF must have a slope of at most ``lipschitz`` (or ``shape.sdf_lipschitz``) where
    ``|sdf| < shape.sdf_trust_mm`` (beyond it only its sign is used), and ``occupancy`` must agree
    with it up to ``shape.sdf_slack_mm`` (the distance by which the zero level of the SDF may miss
    the occupancy boundary).

    ``prune(occ, (bi, bj, bk), size)``, if given, is called after each level with the padded
    occupancy so far and the unsure blocks (origins, common size); it returns a bool mask of the
    blocks worth refining (the others are left False). Used to stop refining voxels whose
    thresholded partial volume is already decided.
    """
    origin = np.asarray(origin, dtype=float)
    spacing = np.asarray(spacing, dtype=float)
    gshape = np.asarray(grid_shape, dtype=np.int64)
    if np.prod(gshape) <= 4096 or not getattr(shape, "sdf_certifies", False):
        idx = np.indices(tuple(gshape)).reshape(3, -1)
        return shape.occupancy(_lattice_points(origin, spacing, idx)).reshape(tuple(gshape))
    trust = float(getattr(shape, "sdf_trust_mm", np.inf))
    lipschitz = max(float(lipschitz), float(getattr(shape, "sdf_lipschitz", 0.0)))
    slack = float(getattr(shape, "sdf_slack_mm", 0.0))
    # top blocks: about top_block_mm, a power of two in lattice points along each axis
    levels = np.maximum(np.round(np.log2(np.maximum(top_block_mm / spacing, 1.0))).astype(int), 0)
    levels = np.minimum(levels, np.ceil(np.log2(np.maximum(gshape, 1))).astype(int))
    size = (2**levels).astype(np.int64)
    nblk = -(-gshape // size)
    padded = nblk * size
    occ = np.zeros(tuple(padded), dtype=bool)
    bi, bj, bk = (a.ravel() * size[n] for n, a in enumerate(np.indices(tuple(nblk), dtype=np.int64)))
    while len(bi):
        if np.all(size == 1):
            occ[bi, bj, bk] = shape.occupancy(_lattice_points(origin, spacing, (bi, bj, bk)))
            break
        c = (size - 1) / 2.0
        d = np.asarray(shape.sdf(_lattice_points(origin, spacing, (bi + c[0], bj + c[1], bk + c[2]))))
        reach = lipschitz * float(np.linalg.norm(c * spacing)) + slack
        inside = d < -reach
        unsure = ~inside & (np.minimum(d, trust) <= reach)
        if inside.any():
            view = occ.reshape(nblk[0], size[0], nblk[1], size[1], nblk[2], size[2])
            view[bi[inside] // size[0], :, bj[inside] // size[1], :, bk[inside] // size[2], :] = True
        bi, bj, bk = bi[unsure], bj[unsure], bk[unsure]
        if prune is not None and len(bi):
            keep = prune(occ, (bi, bj, bk), size)
            if keep is not None:
                bi, bj, bk = bi[keep], bj[keep], bk[keep]
        # split the unsure blocks along every axis still longer than one point
        half = np.where(size > 1, size // 2, size)
        for axis in range(3):
            if size[axis] > 1:
                b = (bi, bj, bk)
                new = [np.concatenate([a, a]) for a in b]
                new[axis][len(b[axis]) :] += half[axis]
                keep = new[axis] < gshape[axis]
                bi, bj, bk = (a[keep] for a in new)
        size = half
        nblk = padded // size
    return occ[: gshape[0], : gshape[1], : gshape[2]]


def block_sum(fine: np.ndarray, subs) -> np.ndarray:
    """Sum of consecutive ``subs[a]``-blocks along each axis (fast strided adds, integer result)."""
    subs = [int(s) for s in subs]
    dtype = np.uint8 if np.prod(subs) <= 255 else np.uint32
    out = fine.view(np.uint8) if fine.dtype == bool else fine
    out = out.astype(dtype, copy=False)
    for axis, s in enumerate(subs):
        if s == 1:
            continue
        index = [slice(None)] * 3
        index[axis] = slice(0, None, s)
        acc = out[tuple(index)].copy()
        for j in range(1, s):
            index[axis] = slice(j, None, s)
            acc += out[tuple(index)]
        out = acc
    return out


def _check_subs(subsamples):
    subs = np.asarray(subsamples, dtype=np.int64)
    if subs.shape != (3,) or np.any(subs < 1):
        raise InputError(f"subsamples must be 3 positive integers, got {subsamples}")
    return subs


def partial_volume(shape: Shape, origin, spacing, grid_shape, subsamples) -> np.ndarray:
    """Fraction (float32) of ``subsamples[a]`` per axis sub-samples inside, for each voxel of the grid.

    Sub-samples are the centres of a regular ``subsamples`` split of each voxel.
    """
    subs = _check_subs(subsamples)
    spacing = np.asarray(spacing, dtype=float)
    gshape = np.asarray(grid_shape, dtype=np.int64)
    if np.all(subs == 1):
        return lattice_occupancy(shape, origin, spacing, gshape).astype(np.float32)
    fine_spacing = spacing / subs
    fine_origin = np.asarray(origin, dtype=float) - spacing / 2 + fine_spacing / 2
    fine = lattice_occupancy(shape, fine_origin, fine_spacing, gshape * subs)
    return block_sum(fine, subs).astype(np.float32) * np.float32(1.0 / np.prod(subs))


def partial_volume_label(shape: Shape, origin, spacing, grid_shape, subsamples, threshold: float) -> np.ndarray:
    """``partial_volume(...) >= threshold`` as a bool grid, computed lazily: refinement stops in
    voxels whose label is already decided by the sub-samples known so far (same result, less work
    when ``subsamples`` are powers of two)."""
    subs = _check_subs(subsamples)
    spacing = np.asarray(spacing, dtype=float)
    gshape = np.asarray(grid_shape, dtype=np.int64)
    total = int(np.prod(subs))
    need = max(int(np.ceil(float(threshold) * total - 1e-6)), 1)  # sub-samples inside for a 1
    fine_spacing = spacing / subs
    fine_origin = np.asarray(origin, dtype=float) - spacing / 2 + fine_spacing / 2
    fine_shape = gshape * subs
    pow2 = np.all((subs & (subs - 1)) == 0)

    sub = np.indices(tuple(subs)).reshape(3, -1)  # sub-sample offsets inside a voxel

    def sub_linear(strides):
        return sub[0] * strides[0] + sub[1] * strides[1] + sub[2]

    n_vox = int(np.prod(gshape))

    def prune(occ, blocks, size):
        if not pow2 or np.prod(size) > 8 * total:
            return None
        span = np.maximum(size // subs, 1)  # voxels covered by a block, per axis
        offs = np.indices(tuple(span)).reshape(3, -1)
        flat = None
        for a in range(3):
            va = np.minimum(blocks[a][:, None] // subs[a] + offs[a][None, :], gshape[a] - 1)
            flat = va if flat is None else flat * gshape[a] + va
        count = np.bincount(flat.ravel(), minlength=n_vox)
        vox = np.flatnonzero(count)
        unsure = count[vox] * int(np.prod(np.minimum(size, subs)))
        vi, vj, vk = np.unravel_index(vox, tuple(gshape))
        strides = np.array([occ.shape[1] * occ.shape[2], occ.shape[2], 1])
        base = (vi * subs[0]) * strides[0] + (vj * subs[1]) * strides[1] + vk * subs[2]
        inside = occ.reshape(-1)[base[:, None] + sub_linear(strides)[None, :]].sum(axis=1)
        is_open = np.zeros(n_vox, dtype=bool)
        is_open[vox] = (inside < need) & (inside + unsure >= need)
        return is_open[flat].any(axis=1)

    fine = lattice_occupancy(shape, fine_origin, fine_spacing, fine_shape, prune=prune)
    return block_sum(fine, subs) >= need


def voxelize(
    shape: Shape,
    spacing_mm,
    *,
    margin_mm: float = 4.0,
    supersample: int = 1,
    origin_mm=None,
    grid_shape=None,
) -> Volume:
    """Sample ``shape`` on an axis-aligned grid (voxel-centre sampling) -> :class:`Volume`.

    The grid covers ``shape.bounds_mm()`` grown by ``margin_mm`` (voxel 0 at the low corner), unless
    ``origin_mm`` (world mm of voxel 0's centre) and/or ``grid_shape`` are given (a grid_shape without
    origin is centred on the bounds). ``supersample=1``: uint8 0/1 occupancy at voxel centres;
    ``supersample=s>1``: float32 fraction of the ``s**3`` regularly spaced sub-samples inside.
    """
    supersample = int(supersample)
    if supersample < 1:
        raise InputError(f"supersample must be >= 1, got {supersample}")
    spacing, origin, gshape = _grid_frame(shape, spacing_mm, margin_mm, origin_mm, grid_shape)
    affine = affine_from_spacing(spacing, origin)
    if supersample == 1:
        data = lattice_occupancy(shape, origin, spacing, gshape).astype(np.uint8)
    else:
        data = partial_volume(shape, origin, spacing, gshape, (supersample,) * 3)
    return Volume(data, affine)
