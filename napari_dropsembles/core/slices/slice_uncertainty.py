"""How wrong slice interpolation is between observed slices, learned from the observation itself.

The observed slices are labels. Each interior observed slice is held out and predicted from the
nearest observed slices on either side by shape-based interpolation (one slice away on a thick
acquisition, one annotation step on a sparse annotation); the errors fit a model of
the surface's positional uncertainty between slices (a probit model, ``p = Phi(-sdf / sigma)``)::

    sigma(x)^2 = floor^2 + (t (1 - t))^2 * ((change_gain * |s1 - s0|)^2 + (gap_gain * gap)^2)

where ``t`` is the fractional position between the neighbouring slices, ``s0, s1`` their in-plane
signed distances at ``x`` (mm) and ``gap`` the slice spacing (mm). It grows with the distance from
the slices and with how much the shape changes from one slice to the next; it is zero-width
(``floor``) on the slices. The fit is per case, in milliseconds (2D distance transforms only).

:class:`MemberPerturbation` turns it into member diversity: member ``m`` reads the interpolated
signed distance shifted by ``sigma_between(x) * z_m(x)`` (``z_m`` a smooth unit-variance random
field, drawn in antithetic pairs so the members' median surface stays the interpolation's), so the
members disagree where the slices leave the surface uncertain and agree on the slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize
from scipy.special import log_ndtr

from ..volumes.frame import canonical_order
from ..volumes.volume import Volume
from .slice_field import SliceDistanceField, _slice_sdf

NEUTRAL = np.zeros(3)  # log(floor_mm / spacing), log(change_gain), log(gap_gain): the prior's centre
PRIOR_WEIGHT = 0.02  # weak pull towards NEUTRAL, so cases with few slices get a sane model
BOUNDS = [(-3.0, 2.0)] * 3
NEAR_SURFACE_SLICES = 2.0  # held-out voxels used: within this many slice gaps of the predicted surface


def _held_out_slices(observation: Volume, field: SliceDistanceField) -> np.ndarray:
    """Rows (predicted sdf, s0, s1, label, t (1 - t), gap mm) for every observed slice predicted from
    the nearest observed slices on either side (slices read as not annotated are skipped): one slice
    away on a thick acquisition, one annotation step away on a sparse annotation."""
    axis = field.axis
    mask = np.moveaxis(np.asarray(observation.data) > 0.5, axis, 0)
    sdf = np.moveaxis(_slice_sdf(np.moveaxis(mask, 0, axis), axis, observation.spacing), axis, 0)
    spacing = float(observation.spacing[axis])
    known = np.setdiff1d(np.arange(mask.shape[0]), field.gaps)
    rows = []
    for lo, i, hi in zip(known[:-2], known[1:-1], known[2:], strict=True):
        if not (mask[lo].any() or mask[i].any() or mask[hi].any()):
            continue
        t = (i - lo) / (hi - lo)
        s0, s1 = sdf[lo], sdf[hi]
        predicted = (1 - t) * s0 + t * s1
        gap = (hi - lo) * spacing
        near = np.abs(predicted) < NEAR_SURFACE_SLICES * gap
        n = int(near.sum())
        spans = np.full((n, 2), (t * (1 - t), gap))
        rows.append(np.column_stack([predicted[near], s0[near], s1[near], mask[i][near].astype(np.float64), spans]))
    return np.concatenate(rows) if rows else np.zeros((0, 6))


@dataclass(frozen=True)
class SliceUncertainty:
    """The fitted positional-uncertainty model of one observation (mm)."""

    floor_mm: float
    change_gain: float
    gap_gain: float
    held_out_voxels: int = 0
    held_out_dice: float | None = None  # shape-based interpolation on the held-out slices
    held_out_nll: float | None = None  # of the fitted model on the held-out slices
    field: SliceDistanceField | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def _sigma(params: np.ndarray, tt: np.ndarray, change: np.ndarray, gap: np.ndarray, unit: float) -> np.ndarray:
        floor, a, b = np.exp(params)
        return np.sqrt((floor * unit) ** 2 + tt**2 * ((a * change) ** 2 + (b * gap) ** 2))

    @classmethod
    def fit(cls, observation: Volume, field: SliceDistanceField | None = None) -> SliceUncertainty:
        """Fit on the observation's held-out slices (needs a thick axis; isotropic data gets the prior)."""
        field = field if field is not None else SliceDistanceField(observation)
        unit = float(np.delete(observation.spacing, field.axis).min())
        data = _held_out_slices(observation, field)
        params = NEUTRAL.copy()
        dice = nll = None
        if len(data) >= 20 and 0 < data[:, 3].sum() < len(data):
            predicted, s0, s1, label, tt, gap = data.T
            change = np.abs(s1 - s0)

            def loss(p: np.ndarray) -> float:
                z = -predicted / cls._sigma(p, tt, change, gap, unit)
                nll = -(label * log_ndtr(z) + (1 - label) * log_ndtr(-z)).mean()
                return float(nll + PRIOR_WEIGHT * np.sum((p - NEUTRAL) ** 2))

            params = optimize.minimize(loss, NEUTRAL, method="L-BFGS-B", bounds=BOUNDS).x
            inside_pred, inside_true = predicted < 0, label > 0.5
            total = inside_pred.sum() + inside_true.sum()
            dice = float(2 * (inside_pred & inside_true).sum() / total) if total else 1.0
            nll = float(loss(params) - PRIOR_WEIGHT * np.sum((params - NEUTRAL) ** 2))
        floor, a, b = np.exp(params)
        return cls(
            floor_mm=float(floor * unit),
            change_gain=float(a),
            gap_gain=float(b),
            held_out_voxels=int(len(data)),
            held_out_dice=dice,
            held_out_nll=nll,
            field=field,
        )

    def _between(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t (1 - t), |s1 - s0|, gap mm) at world points, from the nearest observed slices on either
        side: an empty slice read as not annotated is not one of them (its distances are interpolated),
        and the empty layer assumed beyond each end of the grid is."""
        assert self.field is not None
        field = self.field
        inverse = field._inverse
        index = (np.asarray(points_mm, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]).T
        axis, count = field.axis, field.observation.shape[field.axis]
        known = np.setdiff1d(np.arange(-1, count + 1), field.gaps).astype(np.float64)
        u = np.clip(index[axis], -1.0, float(count))
        upper_at = np.clip(np.searchsorted(known, u, side="right"), 1, len(known) - 1)
        lower, upper = known[upper_at - 1], known[upper_at]
        t = np.clip((u - lower) / (upper - lower), 0.0, 1.0)
        below, above = index.copy(), index.copy()
        below[axis], above[axis] = lower, upper
        change = np.abs(field.at_index(above) - field.at_index(below))
        return t * (1 - t), change, (upper - lower) * float(field.observation.spacing[axis])

    def between_sigma_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """Positional uncertainty (mm) of the interpolated surface at world points; 0 on observed slices."""
        tt, change, gap = self._between(points_mm)
        return (tt * np.sqrt((self.change_gain * change) ** 2 + (self.gap_gain * gap) ** 2)).astype(np.float32)

    def sigma_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """Total positional uncertainty (mm): the between-slice part and the in-plane floor."""
        return np.sqrt(self.floor_mm**2 + self.between_sigma_mm(points_mm) ** 2).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "floor_mm": round(self.floor_mm, 4),
            "change_gain": round(self.change_gain, 4),
            "gap_gain": round(self.gap_gain, 4),
            "held_out_voxels": self.held_out_voxels,
            "held_out_shape_based_dice": None if self.held_out_dice is None else round(self.held_out_dice, 4),
            "held_out_nll": None if self.held_out_nll is None else round(self.held_out_nll, 4),
        }


@dataclass(frozen=True, eq=False)
class MemberPerturbation:
    """Per-member shifts (mm) of the interpolated signed distance: ``between_sigma(x) * z_m(x)``.

    ``z_m`` is Gaussian noise on the observation's grid, smoothed over ``correlation_voxels``
    in-plane and one slice along the thick axis, scaled to unit variance and sampled trilinearly;
    members come in antithetic pairs (``z``, ``-z``).
    """

    uncertainty: SliceUncertainty
    noise: np.ndarray  # [ceil(M / 2), I + 4, J + 4, K + 4] unit-variance fields over the padded grid
    members: int

    @classmethod
    def draw(
        cls, uncertainty: SliceUncertainty, members: int, seed: int = 0, correlation_voxels: float = 2.0
    ) -> MemberPerturbation:
        assert uncertainty.field is not None
        observation = uncertainty.field.observation
        # Drawn in the world-aligned axis order (core/frame.canonical_order), then stored in the
        # observation's: the same geometry stored with other axis orders or flips gets the same noise.
        order, signs = canonical_order(observation.affine[:3, :3] / observation.spacing, uncertainty.field.axis)
        shape = np.array(observation.shape)[order] + 4
        rng = np.random.default_rng(seed)
        smoothing = np.full(3, float(correlation_voxels))
        smoothing[order.index(uncertainty.field.axis)] = 1.0
        fields = []
        for _ in range((members + 1) // 2):
            z = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), smoothing, mode="wrap")
            z = np.flip(z, axis=tuple(w for w in range(3) if signs[w] < 0))
            z = np.transpose(z, np.argsort(order))  # world axis order -> voxel axis order
            fields.append(np.ascontiguousarray(z / max(float(z.std()), 1e-6), dtype=np.float32))
        return cls(uncertainty=uncertainty, noise=np.stack(fields), members=members)

    def offsets_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """[M, N] float32 shifts of the signed distance at world points."""
        field = self.uncertainty.field
        assert field is not None
        inverse = field._inverse
        index = (np.asarray(points_mm, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]).T + 2.0
        scale = self.uncertainty.between_sigma_mm(points_mm)
        out = np.empty((self.members, index.shape[1]), dtype=np.float32)
        for m in range(self.members):
            z = ndimage.map_coordinates(self.noise[m // 2], index, order=1, mode="nearest")
            out[m] = scale * (z if m % 2 == 0 else -z)
        return out
