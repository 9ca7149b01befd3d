"""Where to annotate next, and when to stop: slice suggestions and the expected error of a result.

:func:`suggest_slices` ranks the slices nobody annotated by how many mislabelled voxels annotating
each is expected to remove. From the result's maps, each slice ``j`` of the observation's grid
carries an expected error ``e_j`` (by default the calibrated error probability of the mean,
``min(p, 1 - p)`` about the threshold, summed over the slice; ``score=`` chooses the member variance,
the mutual information, or the variance weighted towards the surface). Annotating slice ``i`` removes
its own error and part of its neighbours': between the annotated slices ``a < i < b`` the positional
uncertainty of the surface grows like ``(j - a)(b - j) / (b - a)`` (core/slice_uncertainty), and a
new annotated slice at ``i`` shrinks it to the same form on ``(a, i)`` and ``(i, b)``; the score is
``sum_j e_j (1 - new_j / old_j)``, in voxels. ``bench/annotate_next.py`` compares the scores.

Which slices can be suggested: those of the slice axis read as not annotated (empty slices between
labelled ones of the thick axis, or of the annotation axis of a sparsely annotated fine grid, and,
on the latter, up to one step beyond the first and last labelled slice). A thick-slice acquisition
whose slices are all annotated has no image between them: its suggestions are slices along the two
other axes, which cross the annotated ones (``kind="check"``: look at the labels there and correct
them), never a slice that cannot be drawn. A requested ``axis`` other than the slice axis gives
``"check"`` suggestions too: on a sparsely annotated grid, drawing a whole crossing slice would put
labels into slices read as not annotated.

:func:`expected_band_error` is the stopping signal: the number of mislabelled voxels expected near
the predicted surface if the mean is calibrated, ``sum min(p, 1 - p)`` over the voxels within
:data:`BAND_VOXELS` voxels of the surface.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..config.errors import InputError
from ..results.reconstruction import Reconstruction
from ..slices.slice_field import SliceReading
from ..volumes.volume import Volume

SCORES = ("error", "variance", "mutual_information", "surface")
DEFAULT_SCORE = "error"  # its unit is voxels; the scores tie within noise in bench/annotate_next.py (docs/ANNOTATE.md)
BAND_VOXELS = 3  # the expected error counts voxels within this many voxels of the predicted surface
CHECK_SPACING = 3  # crossing slices to check are at least this many slices apart (not a stack of neighbours)


@dataclass(frozen=True)
class SliceSuggestion:
    """One slice to annotate (or check), best first.

    ``index``: voxel index on the observation's grid along ``axis``. ``world_mm``: where the slice's
    plane lies along that axis, in world mm: any point of the plane dotted with the axis's unit vector
    (for an axis-aligned scan, the slice centre's world coordinate on that axis). ``score``: expected
    mislabelled voxels removed by annotating it (the unit of the chosen score for the others).
    ``kind``: ``"annotate"`` a slice nobody annotated; ``"check"`` a slice crossing annotated ones.
    """

    axis: int
    index: int
    world_mm: float
    score: float
    kind: str = "annotate"


@dataclass(frozen=True)
class ExpectedError:
    """The expected error of a result near its surface (the stopping signal)."""

    voxels: float  # about this many mislabelled voxels expected near the surface
    surface_voxels: int  # voxels on the predicted surface
    band_voxels: int  # voxels the expectation runs over (within BAND_VOXELS of the surface)
    volume_ml: float  # ``voxels`` as a volume
    text: str  # one line saying what it means

    @property
    def share(self) -> float:
        """Expected mislabelled voxels per surface voxel."""
        return self.voxels / max(self.surface_voxels, 1)

    @classmethod
    def of(cls, voxels: float, surface_voxels: int, band_voxels: int, volume_ml: float, structures: int = 1):
        """The expected error with its one line, near the surface of one structure or of several."""
        near, its = ("the surface", "its") if structures == 1 else (f"the surfaces of {structures} structures", "their")
        text = (
            f"about {voxels:.0f} mislabelled voxels expected near {near} ({volume_ml:.2f} ml; "
            f"{voxels / max(surface_voxels, 1):.0%} of {its} {surface_voxels} surface voxels)"
        )
        return cls(voxels, surface_voxels, band_voxels, volume_ml, text)

    @classmethod
    def total(cls, parts: list[ExpectedError]) -> ExpectedError:
        """The summed expected error of several structures (of one: that one)."""
        return cls.of(
            sum(p.voxels for p in parts),
            sum(p.surface_voxels for p in parts),
            sum(p.band_voxels for p in parts),
            sum(p.volume_ml for p in parts),
            len(parts),
        )


def error_probability(mean: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probability that thresholding the mean at ``threshold`` mislabels each voxel (calibrated mean)."""
    mean = np.asarray(mean, dtype=np.float32)
    return np.where(mean >= threshold, 1.0 - mean, mean).astype(np.float32)


def _uncertainty(result: Reconstruction, score: str) -> np.ndarray:
    maps = result.maps
    if score == "error":
        return error_probability(maps.mean.data, result.config.threshold)
    if score == "variance":
        return np.asarray(maps.variance.data, dtype=np.float32)
    if score == "mutual_information":
        return np.asarray(maps.mutual_information.data, dtype=np.float32)
    if score == "surface":
        mean = np.asarray(maps.mean.data, dtype=np.float32)
        return np.asarray(maps.variance.data, dtype=np.float32) * 4 * mean * (1 - mean)
    raise InputError(f"unknown suggestion score {score!r}; choose one of {', '.join(SCORES)}")


def _plane_sums(values: Volume, observation: Volume, axis: int, indices: np.ndarray) -> np.ndarray:
    """Sum of ``values`` (nearest voxel of its grid) over each plane ``indices`` of the observation along ``axis``.

    The two other axes are sampled at the observation's finest spacing (a thick in-plane axis is
    refined), so a crossing plane of a thick acquisition counts the voxels between its slices too.
    """
    spacing = observation.spacing
    steps = np.maximum(1, np.rint(spacing / spacing.min())).astype(int)
    others = [a for a in range(3) if a != axis]
    axes = [np.arange(observation.shape[a] * steps[a]) / steps[a] - (steps[a] - 1) / (2 * steps[a]) for a in others]
    grid_a, grid_b = np.meshgrid(*axes, indexing="ij")
    to_values = np.linalg.inv(values.affine) @ observation.affine
    data = np.asarray(values.data)
    shape = np.array(data.shape)
    weight = 1.0 / (steps[others[0]] * steps[others[1]])  # in voxels of the observation's plane
    sums = np.zeros(len(indices))
    for n, i in enumerate(indices):
        index = np.empty((3, grid_a.size))
        index[axis], index[others[0]], index[others[1]] = i, grid_a.ravel(), grid_b.ravel()
        near = np.rint(to_values[:3, :3] @ index + to_values[:3, 3:4]).astype(np.int64)
        inside = np.all((near >= 0) & (near < shape[:, None]), axis=0)
        sums[n] = float(data[tuple(near[:, inside])].sum()) * weight
    return sums


def _reduction(count: int, known: np.ndarray, i: int) -> np.ndarray:
    """Share of each slice's between-slice uncertainty removed by annotating slice ``i`` (1 at ``i``)."""
    out = np.zeros(count)
    below, above = known[known < i], known[known > i]
    a = int(below.max()) if len(below) else -1
    b = int(above.min()) if len(above) else count
    j = np.arange(a + 1, b)
    old = (j - a) * (b - j) / (b - a)
    new = np.where(j < i, (j - a) * (i - j) / max(i - a, 1), (j - i) * (b - j) / max(b - i, 1))
    out[a + 1 : b] = 1.0 - new / old
    return out


def slice_world_mm(observation: Volume, axis: int, index: int) -> float:
    """Where slice ``index`` of ``axis`` lies along that axis, in world mm (see :class:`SliceSuggestion`)."""
    direction = observation.affine[:3, axis] / observation.spacing[axis]
    centre = (np.array(observation.shape, dtype=float) - 1) / 2
    centre[axis] = index
    return float(observation.index_to_world(centre[None])[0] @ direction)


@dataclass
class SliceErrors:
    """What a plan needs of one result along its slice axis: each slice's expected error, the slices
    read as annotated, and those that can be suggested (read as not annotated)."""

    errors: np.ndarray
    known: np.ndarray
    gaps: set[int]

    @classmethod
    def of(cls, result: Reconstruction, score: str = DEFAULT_SCORE) -> SliceErrors:
        reading = result.reading
        if reading is None or reading.axis is None:
            raise InputError("this result has no slice axis to plan slices along")
        observation, axis = result.observation, int(reading.axis)
        count = observation.shape[axis]
        values = result.maps.mean.with_data(_uncertainty(result, score))
        errors = _plane_sums(values, observation, axis, np.arange(count))
        return cls(errors, reading.annotated(count), {int(i) for i in reading.gaps})


def plan_slices(parts: Mapping[Hashable, SliceErrors], n: int) -> list[tuple[int, dict[Hashable, float]]]:
    """The best slice, then the best given that one is annotated, and so on (the errors it would remove
    are taken off first), so that the next few are not neighbours of the first.

    ``parts``: one :class:`SliceErrors` per structure on one slice grid (one for a single result); a
    slice's score is the sum over the parts it is a gap of. Returns ``(index, {part: score})``, best first.
    """
    parts = {k: SliceErrors(p.errors.copy(), np.asarray(p.known), set(p.gaps)) for k, p in parts.items()}
    count = len(next(iter(parts.values())).errors)
    left = sorted(set().union(*(p.gaps for p in parts.values())))
    out: list[tuple[int, dict[Hashable, float]]] = []
    while left and len(out) < n:
        reductions = {i: _reduction_by_part(parts, count, i) for i in left}
        totals = {i: sum(float(parts[k].errors @ r) for k, r in reductions[i].items()) for i in left}
        best = max(left, key=lambda i: (totals[i], -i))
        out.append((best, {k: float(parts[k].errors @ r) for k, r in reductions[best].items()}))
        for k, r in reductions[best].items():
            part = parts[k]
            part.errors = part.errors * (1.0 - r)
            part.known = np.union1d(part.known, [best])
            part.gaps.discard(best)
        left.remove(best)
    return out


def _reduction_by_part(parts: Mapping[Hashable, SliceErrors], count: int, i: int) -> dict[Hashable, np.ndarray]:
    return {k: _reduction(count, p.known, i) for k, p in parts.items() if i in p.gaps}


def _foreground_range(result: Reconstruction, axis: int) -> np.ndarray:
    """Indices along ``axis`` of the observation whose planes meet the predicted object (plus one)."""
    observation = result.observation
    count = observation.shape[axis]
    sums = _plane_sums(
        result.maps.mean.with_data(result.maps.mean.data >= result.config.threshold),
        observation,
        axis,
        np.arange(count),
    )
    hit = np.flatnonzero(sums > 0)
    if not len(hit):
        return np.zeros(0, dtype=int)
    return np.arange(max(0, hit[0] - 1), min(count, hit[-1] + 2))


def _annotate(result: Reconstruction, reading: SliceReading, score: str, n: int) -> list[SliceSuggestion]:
    """The plan of :func:`plan_slices` for one result."""
    observation, axis = result.observation, int(reading.axis)  # type: ignore[arg-type]
    return [
        SliceSuggestion(axis, index, slice_world_mm(observation, axis, index), scores[0])
        for index, scores in plan_slices({0: SliceErrors.of(result, score)}, n)
    ]


def _check(result: Reconstruction, axes: list[int], values: Volume, n: int) -> list[SliceSuggestion]:
    """Crossing slices with the most expected error, at least :data:`CHECK_SPACING` slices apart on an axis."""
    found = []
    for axis in axes:
        indices = _foreground_range(result, axis)
        sums = _plane_sums(values, result.observation, axis, indices)
        found += [
            SliceSuggestion(axis, int(i), slice_world_mm(result.observation, axis, int(i)), float(s), "check")
            for i, s in zip(indices, sums, strict=True)
        ]
    found.sort(key=lambda s: (-s.score, s.axis, s.index))
    out: list[SliceSuggestion] = []
    for s in found:
        if all(s.axis != o.axis or abs(s.index - o.index) >= CHECK_SPACING for o in out):
            out.append(s)
        if len(out) == n:
            break
    return out


def check_suggestion_request(n: object, axis: object, score: object) -> None:
    """A one-line InputError unless ``n`` is a positive integer, ``axis`` None or 0-2 and ``score`` one of SCORES."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise InputError(f"the number of suggestions must be a positive integer, got {n!r}")
    if axis is not None and axis not in (0, 1, 2):
        raise InputError(f"the suggestion axis must be 0, 1 or 2, got {axis!r}")
    if score not in SCORES:
        raise InputError(f"unknown suggestion score {score!r}; choose one of {', '.join(SCORES)}")


def suggest_slices(
    result: Reconstruction, n: int = 5, *, axis: int | None = None, score: str = DEFAULT_SCORE
) -> list[SliceSuggestion]:
    """The ``n`` slices whose annotation is expected to remove the most error, best first.

    The first is the best alone; each next one is the best once those before it are annotated (its
    score is what it adds), so the list is a plan, not a stack of neighbours. ``axis`` None: the slice
    axis of the result (the thick axis, or the annotation axis of a sparsely annotated fine grid);
    slices nobody annotated along it, else (all annotated) crossing slices to check. Another ``axis``:
    crossing slices along it to check. ``score``: one of :data:`SCORES`.
    """
    check_suggestion_request(n, axis, score)
    reading = result.reading if result.reading is not None else SliceReading(None)
    if reading.axis is None and axis is None:
        raise InputError(
            "the observation has no slice axis (no thick axis, and no empty slices between labelled ones along "
            "one axis); give the annotation axis ({{annotation_axis}}) or a suggestion axis"
        )
    n = int(n)
    if (axis is None or axis == reading.axis) and len(reading.gaps):
        return _annotate(result, reading, score, n)
    values = result.maps.mean.with_data(_uncertainty(result, score))
    if axis is None or axis == reading.axis:
        slice_axis = int(reading.axis if axis is None else axis)  # type: ignore[arg-type]
        if reading.sparse:
            return _check(result, [slice_axis], values, n)
        return _check(result, [a for a in range(3) if a != slice_axis], values, n)
    return _check(result, [axis], values, n)


def _surface_band(mask: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """(voxels within ``width`` voxels of the mask's surface, count of surface voxels)."""
    surface = mask & ~ndimage.binary_erosion(mask, border_value=0)
    if not surface.any():
        return np.zeros_like(mask), 0
    band = ndimage.binary_dilation(surface, iterations=width) | (ndimage.binary_dilation(mask) & ~mask)
    return band, int(surface.sum())


def expected_band_error(result: Reconstruction) -> ExpectedError:
    """About how many voxels near the predicted surface are mislabelled, if the mean is calibrated."""
    mean = np.asarray(result.maps.mean.data, dtype=np.float32)
    threshold = result.config.threshold
    mask = mean >= threshold
    band, surface = _surface_band(mask, BAND_VOXELS)
    if not surface:
        band = mean > 0.01  # no surface at the threshold: whatever probability mass there is
    voxels = float(error_probability(mean, threshold)[band].sum())
    volume_ml = voxels * float(np.prod(result.maps.mean.spacing)) / 1000.0
    return ExpectedError.of(voxels, surface, int(band.sum()), volume_ml)
