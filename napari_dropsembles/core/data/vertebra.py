"""Procedural lumbar vertebra: an analytic SDF made of smoothly unioned primitives.

World axes: x = left-right, y = antero-posterior (posterior = +y), z = cranio-caudal (up = +z),
millimetres. The template is built in a *body frame* (vertebral body centred at the origin, its
posterior wall towards +y) and then placed in the world by ``world = R @ (body - centre)``, where
``centre`` is the centre of the template's bounding box and ``R`` the small random rotation, so the
shape sits near the world origin.

Parts: vertebral body (elliptic cylinder with concave sides, rounded rims, slightly concave
endplates and a flattened, centrally concave posterior wall -> kidney-shaped section; optional
anterior wedging and rim osteophytes), two pedicles, the lamina closing the vertebral canal
posteriorly, a hatchet-shaped spinous process pointing back and down, two transverse processes,
two superior and two inferior articular processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..config.errors import InputError
from .shapes import (
    capsule_xyz,
    ellipse_xy,
    ellipsoid_xyz,
    round_cone_xyz,
    rounded_box_xyz,
    smooth_intersection,
)


@dataclass(frozen=True)
class VertebraParams:
    """Every proportion of one vertebra (mm and radians). Defaults are the mean template (about L3).

    "Side" s = +1 is the +x half, s = -1 the -x half.
    """

    # vertebral body
    body_width: float = 44.0  # left-right extent of the body (mm)
    body_depth: float = 30.8  # antero-posterior extent of the body (mm)
    body_height: float = 27.0  # cranio-caudal height of the body at its posterior wall (mm)
    body_waist: float = 0.1  # fractional inset of the body outline at mid-height (concave sides)
    body_posterior_flat: float = 0.85  # posterior wall at this fraction of the AP semi-axis (flattening)
    body_posterior_concavity: float = 1.5  # mm the middle of the posterior wall is pushed anteriorly
    body_edge_radius: float = 2.0  # rounding radius of the body rims (mm)
    endplate_concavity: float = 1.0  # depth of the central dip of each endplate (mm)
    wedge: float = 0.0  # fraction of the anterior body height lost (0 = none .. 0.3 = wedged)
    # vertebral canal and pedicles
    canal_width: float = 23.0  # interpedicular distance (mm)
    canal_depth: float = 17.0  # AP depth of the canal, posterior body wall to lamina (mm)
    pedicle_width: float = 9.0  # left-right thickness of a pedicle (mm)
    pedicle_height: float = 15.0  # cranio-caudal height of a pedicle (mm)
    pedicle_length: float = 11.0  # posterior reach of a pedicle behind the body wall (mm)
    pedicle_z: float = 4.5  # height of the pedicle axis above the body's mid-height (mm)
    pedicle_convergence: float = 0.12  # medial tilt of the pedicle axis towards the front (rad)
    # lamina
    lamina_thickness: float = 6.5  # mm
    lamina_height: float = 20.0  # cranio-caudal extent (mm)
    lamina_z: float = -1.0  # height of the lamina centre above the body's mid-height (mm)
    lamina_slope: float = 0.3  # backward lean of the lamina's lower edge (rad)
    # spinous process
    spinous_length: float = 30.0  # mm from the laminar junction to the tip
    spinous_height: float = 17.0  # cranio-caudal extent (mm)
    spinous_thickness: float = 6.5  # left-right thickness (mm)
    spinous_angle: float = 0.2  # downward inclination (rad)
    spinous_deviation: float = 0.0  # left-right offset of the tip (mm)
    # transverse processes
    transverse_length: float = 22.0  # root to tip centre (mm)
    transverse_radius: float = 4.5  # radius at the root (mm)
    transverse_tip_radius: float = 3.0  # radius at the tip (mm)
    transverse_sweep: float = 0.25  # backward angle of the process (rad)
    transverse_tilt: float = 0.05  # upward angle of the process (rad)
    # articular processes
    sap_rise: float = 8.0  # superior articular process tip above the upper endplate (mm)
    sap_thickness: float = 6.0  # mm
    sap_depth: float = 12.0  # mm
    iap_drop: float = 6.0  # inferior articular process tip below the lower endplate (mm)
    iap_thickness: float = 6.0  # mm
    iap_depth: float = 11.0  # mm
    facet_angle: float = 0.6  # angle of the facet plates from the sagittal plane (rad)
    # variation
    asymmetry: float = 0.0  # lateral parts of side +x scale by (1 + a), side -x by (1 - a)
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # about x, then y, then z (rad)
    osteophytes: tuple[tuple[float, float, float, float, float, float], ...] = field(default=())
    # each osteophyte: (x, y, z, rx, ry, rz), an ellipsoid in the body frame (mm)
    smooth_k: float = 2.5  # blend width of the smooth union (mm)

    def to_dict(self) -> dict:
        return asdict(self)


def _affine_cols(pts: np.ndarray, rot: np.ndarray, centre: np.ndarray, dtype=np.float32):
    """Columns of ``pts @ rot + centre`` without BLAS (BLAS threads crawl on a busy machine)."""
    cols = []
    for j in range(3):
        c = pts[:, 0] * float(rot[0, j]) + pts[:, 1] * float(rot[1, j]) + pts[:, 2] * float(rot[2, j])
        c += float(centre[j])
        cols.append(c.astype(dtype, copy=False))
    return cols


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def _frame(u, hint) -> np.ndarray:
    """Orthonormal axes (columns u, w, v): u along ``u``, v as close to ``hint`` as possible."""
    u = np.asarray(u, float) / np.linalg.norm(u)
    v = np.asarray(hint, float) - (np.asarray(hint, float) @ u) * u
    v /= np.linalg.norm(v)
    w = np.cross(v, u)
    return np.stack([u, w, v], axis=1)


class _Part:
    """One primitive: an SDF on coordinate arrays and a conservative bounding box (body frame)."""

    def __init__(self, name, fn, lo, hi, cull_scale=1.0):
        self.name = name
        self.fn = fn
        self.lo = np.asarray(lo, float)
        self.hi = np.asarray(hi, float)
        self.cull_scale = cull_scale  # > 1 where fn underestimates the distance (ellipsoid bound)


def _box_part(name, centre, axes, half, radius):
    centre = np.asarray(centre, float)
    ext = np.abs(axes) @ np.asarray(half, float)
    return _Part(name, lambda x, y, z: rounded_box_xyz(x, y, z, centre, half, radius, axes), centre - ext, centre + ext)


def _segment_box(name, a, b, hint, width, height, radius, extend=0.0):
    """Rounded box from a to b (grown by ``extend`` at both ends); ``height`` along ``hint``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    axes = _frame(b - a, hint)
    half = (np.linalg.norm(b - a) / 2 + extend, width / 2, height / 2)
    return _box_part(name, (a + b) / 2, axes, half, min(radius, 0.49 * min(width, height)))


class Vertebra:
    """A procedural lumbar vertebra (:class:`~.shapes.Shape`), exact analytic occupancy anywhere."""

    sdf_certifies = True  # slope <= 1.25 below sdf_trust_mm: see shapes.lattice_occupancy
    CULL_MM = 10.0  # parts are evaluated (at least) within this distance of their bounding boxes
    CELL_MM = 2.0  # cell size of the table of parts to evaluate

    def __init__(self, params: VertebraParams):
        if not isinstance(params, VertebraParams):
            raise InputError(f"Vertebra needs VertebraParams, got {type(params).__name__}")
        if len(params.osteophytes) > 16:
            raise InputError(f"at most 16 osteophytes, got {len(params.osteophytes)}")
        self.params = params
        self._parts, self._landmarks = self._build(params)
        lo = np.min([p.lo for p in self._parts], axis=0)
        hi = np.max([p.hi for p in self._parts], axis=0)
        self._part_lo, self._part_hi = tuple(float(c) for c in lo), tuple(float(c) for c in hi)
        self.sdf_trust_mm = float(self.CULL_MM - 1.25 * params.smooth_k)
        self._cull_boxes = [
            (
                tuple(float(c) for c in p.lo - self.CULL_MM * p.cull_scale),
                tuple(float(c) for c in p.hi + self.CULL_MM * p.cull_scale),
            )
            for p in self._parts
        ]
        self._build_cell_table()
        self._centre = (lo + hi) / 2
        self._rot = _rotation(*params.rotation)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        world = (corners - self._centre) @ self._rot.T
        pad = params.smooth_k / 4 + 0.5
        self._bounds = (world.min(axis=0) - pad, world.max(axis=0) + pad)

    def _build_cell_table(self) -> None:
        """Bit mask of the parts to evaluate, per 2 mm cell (every cell touching a part's cull box)."""
        lo = np.min([b[0] for b in self._cull_boxes], axis=0)
        hi = np.max([b[1] for b in self._cull_boxes], axis=0)
        n = np.ceil((hi - lo) / self.CELL_MM).astype(int) + 1
        table = np.zeros(tuple(n + 2), dtype=np.uint32)  # one empty cell of padding on each side
        for pid, (blo, bhi) in enumerate(self._cull_boxes):
            i0 = np.floor((np.asarray(blo) - lo) / self.CELL_MM).astype(int) + 1
            i1 = np.floor((np.asarray(bhi) - lo) / self.CELL_MM).astype(int) + 1
            table[i0[0] : i1[0] + 1, i0[1] : i1[1] + 1, i0[2] : i1[2] + 1] |= np.uint32(1 << pid)
        self._table = table.ravel()
        self._table_lo = tuple(float(c) for c in lo)
        self._table_n = tuple(int(c) for c in n)

    def _part_masks(self, x, y, z) -> np.ndarray:
        """uint32 bit mask per point of the parts to evaluate there."""
        inv = 1.0 / self.CELL_MM
        idx = None
        for c, lo, n in zip((x, y, z), self._table_lo, self._table_n, strict=True):
            i = np.clip((c - lo) * inv + 1.0, 0.0, n + 1.0).astype(np.int32)
            idx = i if idx is None else idx * np.int32(n + 2) + i
        return self._table[idx]

    # ---------------------------------------------------------------------------------------------
    @staticmethod
    def _build(p: VertebraParams):
        a, b, hh = p.body_width / 2, p.body_depth / 2, p.body_height / 2
        r = min(p.body_edge_radius, 0.4 * min(a, b, hh))
        y_side = p.body_posterior_flat * b  # posterior wall, lateral part
        y_wall = y_side - p.body_posterior_concavity  # posterior wall at the midline
        parts = []

        # the posterior wall's steepest slope is 2c/w at |x| = w: dividing by it keeps the slope <= 1
        q_norm = 1.0 / float(np.hypot(1.0, 2.0 * p.body_posterior_concavity / (0.6 * (a - r))))

        def body(x, y, z):
            t = np.minimum(np.abs(z) / hh, 1.0)
            s = 1.0 - p.body_waist * (1.0 - t * t)
            xs, ys = x / s, y / s
            d_ell = ellipse_xy(xs, ys, a - r, b - r) * s
            w = 0.6 * (a - r)
            u = np.maximum(1.0 - (xs / w) ** 2, 0.0)
            q = (ys - (y_side - r - p.body_posterior_concavity * u)) * (s * q_norm)
            d2 = smooth_intersection(d_ell, q, 3.0)
            tw = np.clip((y_side - y) / (y_side + b), 0.0, 1.0)
            rho = np.maximum(1.0 - (x / a) ** 2 - (y / b) ** 2, 0.0)
            top = hh * (1.0 - p.wedge * tw) - p.endplate_concavity * rho
            dz = np.abs(z) - (top - r)
            return np.minimum(np.maximum(d2, dz), 0.0) + np.hypot(np.maximum(d2, 0.0), np.maximum(dz, 0.0)) - r

        parts.append(_Part("body", body, (-a, -b, -hh), (a, b, hh)))

        for i, (ox, oy, oz, rx, ry, rz) in enumerate(p.osteophytes):
            c, rad = (ox, oy, oz), (rx, ry, rz)
            parts.append(
                _Part(
                    f"osteophyte{i}",
                    lambda x, y, z, c=c, rad=rad: ellipsoid_xyz(x, y, z, c, rad),
                    np.subtract(c, rad),
                    np.add(c, rad),
                    cull_scale=max(rad) / min(rad),
                )
            )

        xb = p.canal_width / 2 + p.pedicle_width / 2  # pedicle axis at its posterior end
        zp = p.pedicle_z
        y_lam = y_wall + p.canal_depth + p.lamina_thickness / 2  # lamina centre line at the midline
        zl = p.lamina_z
        up = np.array([0.0, 0.0, 1.0])
        lam_up = np.array([0.0, -np.sin(p.lamina_slope), np.cos(p.lamina_slope)])
        for s in (1.0, -1.0):
            f = 1.0 + s * p.asymmetry
            yj = y_side + p.pedicle_length
            run = p.pedicle_length + 6.0
            ped_a = (s * (xb - run * np.tan(p.pedicle_convergence)), y_side - 6.0, zp)
            ped_b = (s * xb, yj, zp)
            parts.append(
                _segment_box(
                    f"pedicle{s:+.0f}",
                    ped_a,
                    ped_b,
                    up,
                    p.pedicle_width * f,
                    p.pedicle_height,
                    0.45 * p.pedicle_width * f,
                    extend=1.0,
                )
            )
            lam_a = np.array([s * xb, yj + 1.0, zl])
            lam_m = np.array([0.0, y_lam, zl])
            parts.append(
                _segment_box(
                    f"lamina{s:+.0f}",
                    lam_a,
                    lam_m,
                    lam_up,
                    p.lamina_thickness,
                    p.lamina_height,
                    0.45 * p.lamina_thickness,
                    extend=p.lamina_thickness / 2,
                )
            )
            # transverse process: from the pedicle-lamina junction, sideways, a little back and up
            root = np.array([s * xb, yj - 2.0, zp])
            length = p.transverse_length * f
            dirn = np.array(
                [
                    s * np.cos(p.transverse_sweep) * np.cos(p.transverse_tilt),
                    np.sin(p.transverse_sweep) * np.cos(p.transverse_tilt),
                    np.sin(p.transverse_tilt),
                ]
            )
            tip = root + length * dirn
            r1, r2 = p.transverse_radius * f, p.transverse_tip_radius * f
            parts.append(
                _Part(
                    f"transverse{s:+.0f}",
                    lambda x, y, z, a_=root, b_=tip, r1=r1, r2=r2: round_cone_xyz(x, y, z, a_, b_, r1, r2),
                    np.minimum(root - r1, tip - r2),
                    np.maximum(root + r1, tip + r2),
                )
            )
            # facet plates: thickness along the facet normal (faces medially-backwards for the SAP)
            depth_dir = np.array([s * np.sin(p.facet_angle), np.cos(p.facet_angle), 0.0])
            sap_base = np.array([s * (xb + 0.5), yj + 1.0, zp + p.pedicle_height / 2 - 3.0])
            sap_top = np.array([s * (xb + 2.0), yj + 3.0, hh + p.sap_rise])
            axes = _frame(sap_top - sap_base, depth_dir)
            half = (
                np.linalg.norm(sap_top - sap_base) / 2 + 1.0,
                p.sap_thickness * f / 2,
                p.sap_depth * f / 2,
            )
            parts.append(_box_part(f"sap{s:+.0f}", (sap_base + sap_top) / 2, axes, half, 0.45 * p.sap_thickness * f))
            t = 3.0 / max(xb, 3.5)  # along the lamina, 3 mm medial of the junction
            iap_base = lam_a + t * (lam_m - lam_a) + np.array([0.0, 1.5, -p.lamina_height / 2 + 5.0])
            iap_bot = np.array([s * (abs(iap_base[0]) - 1.0), iap_base[1] + 2.0, -hh - p.iap_drop])
            axes = _frame(iap_bot - iap_base, depth_dir)
            half = (
                np.linalg.norm(iap_bot - iap_base) / 2 + 1.0,
                p.iap_thickness * f / 2,
                p.iap_depth * f / 2,
            )
            parts.append(_box_part(f"iap{s:+.0f}", (iap_base + iap_bot) / 2, axes, half, 0.45 * p.iap_thickness * f))

        # spinous process: a tall plate going back and down, thickened at its tip
        sp_base = np.array([0.0, y_lam - 2.0, zl])
        d = np.array([0.0, np.cos(p.spinous_angle), -np.sin(p.spinous_angle)])
        sp_tip = sp_base + p.spinous_length * d + np.array([p.spinous_deviation, 0.0, 0.0])
        parts.append(
            _segment_box(
                "spinous",
                sp_base,
                sp_tip,
                up,
                p.spinous_thickness,
                p.spinous_height,
                0.45 * p.spinous_thickness,
            )
        )
        knob_c = sp_tip - 0.3 * p.spinous_thickness * (sp_tip - sp_base) / np.linalg.norm(sp_tip - sp_base)
        knob_h = np.array([0.0, 0.0, 0.33 * p.spinous_height])
        knob_r = 0.6 * p.spinous_thickness
        ka, kb = knob_c - knob_h, knob_c + knob_h
        parts.append(
            _Part(
                "spinous_tip",
                lambda x, y, z: capsule_xyz(x, y, z, ka, kb, knob_r),
                np.minimum(ka, kb) - knob_r,
                np.maximum(ka, kb) + knob_r,
            )
        )
        landmarks = {
            "body_centre": np.zeros(3),
            "canal_centre": np.array([0.0, y_wall + p.canal_depth / 2, zp]),
            "spinous_tip": sp_tip,
        }
        return parts, landmarks

    # ---------------------------------------------------------------------------------------------
    def to_body_frame(self, points_mm: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> body frame mm."""
        return np.stack(_affine_cols(np.asarray(points_mm, dtype=float), self._rot, self._centre, float), axis=1)

    def to_world(self, body_points: np.ndarray) -> np.ndarray:
        """(N, 3) body frame mm -> world mm."""
        return (np.asarray(body_points, dtype=float) - self._centre) @ self._rot.T

    def landmark_mm(self, name: str) -> np.ndarray:
        """World mm of a landmark: ``"body_centre"``, ``"canal_centre"``, ``"spinous_tip"``."""
        if name not in self._landmarks:
            raise InputError(f"unknown landmark {name!r}; known: {sorted(self._landmarks)}")
        return self.to_world(self._landmarks[name][None])[0]

    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation from the body frame to world axes."""
        return self._rot.copy()

    def sdf(self, points_mm: np.ndarray) -> np.ndarray:
        """Local smooth union of the parts (float32 mm, negative inside); see
        :func:`~.shapes.smooth_union_local`.

        A part only contributes where it is within ``smooth_k`` of the nearest part, so it is
        evaluated only within ``CULL_MM`` of its bounding box: the result equals the union of all
        parts wherever it is below ``sdf_trust_mm``; farther out it is a distance estimate that is
        at least ``sdf_trust_mm``.
        """
        pts = np.asarray(points_mm, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(f"points must be (N, 3), got shape {pts.shape}")
        x, y, z = _affine_cols(pts, self._rot, self._centre)
        n = len(x)
        k = float(self.params.smooth_k)
        m = np.full(n, np.inf, dtype=np.float32)  # nearest part's value
        arg = np.full(n, -1, dtype=np.int16)  # and which part
        evaluated = []
        masks = self._part_masks(x, y, z)
        for pid, part in enumerate(self._parts):
            idx = np.flatnonzero(masks & np.uint32(1 << pid))
            if len(idx) == 0:
                continue
            if len(idx) == n:
                idx = None
                f = part.fn(x, y, z)
                better = f < m
                m = np.where(better, f, m)
                arg[better] = pid
            else:
                f = part.fn(x[idx], y[idx], z[idx])
                mi = m[idx]
                better = f < mi
                m[idx] = np.where(better, f, mi)
                arg[idx[better]] = pid
            evaluated.append((pid, idx, f))
        keep = np.ones(n, dtype=np.float32)  # product of (1 - h_i^2) over the non-nearest parts
        for pid, idx, f in evaluated:
            mi = m if idx is None else m[idx]
            h = np.maximum(k - (f - mi), 0.0) * (1.0 / k)
            fac = 1.0 - h * h
            fac[(arg if idx is None else arg[idx]) == pid] = 1.0
            if idx is None:
                keep *= fac
            else:
                keep[idx] *= fac
        out = m - (0.25 * k) * (1.0 - keep)
        far = np.flatnonzero(masks == 0)
        if len(far):
            gap2 = np.zeros(len(far), dtype=np.float32)
            for c, lo, hi in zip((x, y, z), self._part_lo, self._part_hi, strict=True):
                g = np.maximum(np.maximum(lo - c[far], c[far] - hi), 0.0)
                gap2 += g * g
            out[far] = np.maximum(np.sqrt(gap2), self.sdf_trust_mm)
        return out

    def occupancy(self, points_mm: np.ndarray) -> np.ndarray:
        return self.sdf(points_mm) < 0

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        return self._bounds[0].copy(), self._bounds[1].copy()

    def __repr__(self) -> str:
        p = self.params
        return f"Vertebra(body {p.body_width:.1f} x {p.body_depth:.1f} x {p.body_height:.1f} mm)"


# -------------------------------------------------------------------------------------------------
# random parameters


def sample_vertebra_params(rng: np.random.Generator, variety: float = 1.0) -> VertebraParams:
    """Random proportions around the mean template; ``variety`` scales all randomness (0 = template).

    Always draws the same number of random numbers, so a seed gives the same vertebra for any
    variety > 0 up to the scaling of its deviations.
    """
    if not np.isfinite(variety) or variety < 0:
        raise InputError(f"variety must be >= 0, got {variety}")
    v = float(variety)
    z = rng.standard_normal(64)
    u = rng.random(20)
    mean = VertebraParams()
    size = 1.0 + v * 0.08 * np.clip(z[0], -2.5, 2.5)
    zi = iter(z[1:])

    def g(name, rel_sd, lo=None, hi=None, scale=True):
        val = getattr(mean, name) * (size if scale else 1.0) * (1.0 + v * rel_sd * np.clip(next(zi), -2.5, 2.5))
        return float(np.clip(val, lo if lo is not None else -np.inf, hi if hi is not None else np.inf))

    width = g("body_width", 0.07, 30.0, 55.0)
    depth = float(np.clip(width * (0.7 + v * 0.04 * np.clip(next(zi), -2.5, 2.5)), 0.55 * width, 0.85 * width))
    height = g("body_height", 0.07, 22.0, 32.0)
    thick = 1.0
    if u[0] < min(0.2 * v, 1.0):  # degenerative variant: thinner or thicker processes
        thick = 0.75 + 0.15 * u[1] if u[2] < 0.5 else 1.12 + 0.18 * u[1]
    wedge = 0.0
    if u[3] < min(0.15 * v, 1.0):
        wedge = float(min(0.3, (0.08 + 0.22 * u[4]) * min(v, 1.0)))
    params = dict(
        body_width=width,
        body_depth=depth,
        body_height=height,
        body_waist=g("body_waist", 0.3, 0.02, 0.14, scale=False),
        body_posterior_flat=g("body_posterior_flat", 0.05, 0.72, 0.95, scale=False),
        body_posterior_concavity=g("body_posterior_concavity", 0.4, 0.0, 3.5, scale=False),
        body_edge_radius=g("body_edge_radius", 0.2, 1.0, 3.0, scale=False),
        endplate_concavity=g("endplate_concavity", 0.4, 0.0, 2.0, scale=False),
        wedge=wedge,
        canal_width=g("canal_width", 0.08, 17.0, 30.0),
        canal_depth=g("canal_depth", 0.1, 12.0, 23.0),
        pedicle_width=g("pedicle_width", 0.12, 5.5, 14.0) * thick,
        pedicle_height=g("pedicle_height", 0.1, 10.0, 20.0),
        pedicle_length=g("pedicle_length", 0.12, 7.0, 15.0),
        pedicle_z=g("pedicle_z", 0.2, 1.5, 8.0),
        pedicle_convergence=g("pedicle_convergence", 0.4, 0.0, 0.3, scale=False),
        lamina_thickness=g("lamina_thickness", 0.12, 4.0, 10.0) * thick,
        lamina_height=g("lamina_height", 0.1, 14.0, 27.0),
        lamina_z=g("lamina_z", 0.8, -5.0, 3.0),
        lamina_slope=g("lamina_slope", 0.3, 0.0, 0.6, scale=False),
        spinous_length=g("spinous_length", 0.12, 18.0, 42.0),
        spinous_height=g("spinous_height", 0.12, 10.0, 25.0),
        spinous_thickness=g("spinous_thickness", 0.15, 4.0, 10.0) * thick,
        spinous_angle=g("spinous_angle", 0.5, 0.0, 0.5, scale=False),
        spinous_deviation=float(v * 1.5 * np.clip(next(zi), -2.5, 2.5)),
        transverse_length=g("transverse_length", 0.12, 14.0, 32.0),
        transverse_radius=g("transverse_radius", 0.12, 3.0, 7.0) * thick,
        transverse_tip_radius=g("transverse_tip_radius", 0.15, 2.0, 4.5) * thick,
        transverse_sweep=g("transverse_sweep", 0.4, 0.0, 0.5, scale=False),
        transverse_tilt=float(v * 0.08 * np.clip(next(zi), -2.5, 2.5) + mean.transverse_tilt),
        sap_rise=g("sap_rise", 0.2, 4.0, 13.0),
        sap_thickness=g("sap_thickness", 0.12, 4.0, 9.0) * thick,
        sap_depth=g("sap_depth", 0.12, 8.0, 16.0),
        iap_drop=g("iap_drop", 0.25, 2.0, 11.0),
        iap_thickness=g("iap_thickness", 0.12, 4.0, 9.0) * thick,
        iap_depth=g("iap_depth", 0.12, 7.0, 15.0),
        facet_angle=g("facet_angle", 0.2, 0.3, 0.9, scale=False),
        asymmetry=float(np.clip(v * 0.05 * next(zi), -0.15, 0.15)),
        rotation=tuple(float(np.clip(v * 0.06 * next(zi), -0.175, 0.175)) for _ in range(3)),
        smooth_k=float(np.clip(2.5 + v * 0.3 * next(zi), 1.5, 3.0)),
    )
    osteophytes = []
    if u[5] < min(0.2 * v, 1.0):
        a, b, hh = width / 2, depth / 2, height / 2
        y_side = params["body_posterior_flat"] * b
        orng = np.random.default_rng(rng.integers(2**63))
        for _ in range(1 + int(u[6] * 4)):
            theta = orng.uniform(-np.pi, 0.15 * np.pi) if orng.random() < 0.85 else orng.uniform(0, np.pi)
            sx, sy = np.cos(theta), np.sin(theta)
            y = min(b * sy, y_side)
            x = a * sx
            tw = np.clip((y_side - y) / (y_side + b), 0.0, 1.0)
            zt = hh * (1.0 - wedge * tw) - 0.5
            side = 1.0 if orng.random() < 0.5 else -1.0
            rad = orng.uniform([2.0, 2.0, 1.5], [4.5, 4.5, 3.0]) * min(v, 1.0)
            osteophytes.append(
                tuple(
                    float(c)
                    for c in (
                        x * 1.02,
                        y * 1.02,
                        side * zt,
                        max(rad[0], 0.5),
                        max(rad[1], 0.5),
                        max(rad[2], 0.5),
                    )
                )
            )
    else:
        rng.integers(2**63)  # keep the stream position independent of the branch
    params["osteophytes"] = tuple(osteophytes)
    return VertebraParams(**params)


def random_vertebra(seed_or_rng=None, variety: float = 1.0) -> Vertebra:
    """A random vertebra from an int seed or a ``numpy.random.Generator`` (deterministic)."""
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    return Vertebra(sample_vertebra_params(rng, variety))
