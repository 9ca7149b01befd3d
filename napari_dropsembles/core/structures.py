"""Several structures at once (e.g. vertebrae L1-L5 as labels 1-5): one reconstruction per label.

``reconstruct_structures_steps`` runs :func:`reconstruct_steps` for each label in turn (one
worker, one progress stream) and returns a :class:`StructureSet`: the per-label results, their
maps merged on one grid for display, and a per-structure confidence table
(:func:`structure_table`). A single reconstruction is a set of one structure.

The annotate-next loop on a set (issue 13): :func:`refine_structures_steps` refines each structure
from its own members with its own mask of the updated label volume (core/refine), in one progress
stream, and merges the results again as a first run does. A structure whose mask and reading
settings (slices annotated as empty, empty-slice reading) did not change is kept as it is: refining
it only gives its members a few more steps on the same data. Measured on the real L1-L5 masks (3 mm,
every 3rd axial slice, bundled prior, one CPU thread), one round with the top suggested slice drawn
(it crosses L4 and L5): 3.1 s keeping L1-L3, 7.7 s refining all five, with the same mean Dice (0.906
vs 0.905; the unchanged three moved by -0.006 to +0.001). So a round costs only what changed; when
nothing changed, every structure is refined (Refine pressed again).
The labels must stay the same: a label new in the updated volume, or one gone from it, is an
:class:`InputError` saying to reconstruct again.
:func:`suggest_structure_slices` ranks the slices of the shared volume across structures (a slice's
score is the sum of what annotating it removes from each structure), and
:func:`structures_expected_error` sums the stopping signal over them.

A set's result folder (:func:`save_structures`): one complete result folder per structure
(``label<k>/``: maps, mesh, report.json and the members for ``reconstruct --resume``), beside the
merged ``mean``/``variance`` maps, ``segmentation.nii.gz`` (each voxel's structure at the surface
level), ``mesh.ply`` (all structures) and ``structures.json`` (labels, folders, table, rounds);
:func:`read_structure_starts` reads the members back, each checked against the prior.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import __version__
from .annotate import (
    DEFAULT_SCORE,
    ExpectedError,
    SliceErrors,
    SliceSuggestion,
    check_suggestion_request,
    expected_band_error,
    plan_slices,
    slice_world_mm,
    suggest_slices,
)
from .config import ReconstructionConfig
from .errors import CheckpointError, InputError
from .io import (
    atomic_write_bytes,
    binary_mask_from_volume,
    check_binary_mask,
    ensure_writable_dir,
    list_labels,
    one_line,
    write_volume,
)
from .mesh import Mesh, write_mesh
from .pipeline import reconstruct_steps
from .progress import CancelFlag, Progress, check_cancel, relay
from .refine import MEMBERS, WarmStart, mask_digest, read_warm_start, refine_steps
from .result import Reconstruction
from .volume import Volume

STRUCTURES = "structures.json"  # the index of a set's result folder
STRUCTURES_FORMAT = "napari-dropsembles-structures"
STRUCTURES_FORMAT_VERSION = 1

FLAG_RATIO = 1.5  # band variance this many times the median of the structures -> flagged
FLAG_CV = 0.10  # member volumes spread (std / mean) above this -> flagged
BAND_VOXELS = 2  # the surface band of the table: within 2 voxels of the mean's surface


@dataclass(frozen=True)
class StructureRow:
    """Confidence of one reconstructed structure (volumes in mL, centre in world mm)."""

    label: int
    volume_ml: float  # mean over members of the volume inside the member's surface
    volume_ml_std: float  # spread of that volume across members
    band_variance: float  # mean member variance within 2 voxels of the mean's surface (either side)
    centre_mm: tuple[float, float, float]
    flagged: bool = False
    reason: str = ""


def structure_masks(volume: Volume, labels: list[int] | None = None) -> dict[int, Volume]:
    """One binary mask per label of a label volume (all its non-zero labels when ``labels`` is None)."""
    labels = list_labels(volume) if labels is None else [int(v) for v in labels]
    if not labels:
        raise InputError("the volume holds no label (all voxels are 0)")
    return {label: binary_mask_from_volume(volume, label=label) for label in labels}


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a (2r+1)^3 cube, separable, by array shifts (fast, and numpy releases the GIL)."""
    out = mask.copy()
    for axis in range(mask.ndim):
        grown = out.copy()
        for shift in range(1, radius + 1):
            ahead = [slice(None)] * mask.ndim
            behind = [slice(None)] * mask.ndim
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(behind)] |= out[tuple(ahead)]
            grown[tuple(ahead)] |= out[tuple(behind)]
        out = grown
    return out


def surface_shell(inside: np.ndarray, radius: int = 2) -> np.ndarray:
    """Voxels within ``radius`` voxels (chessboard distance) of the boundary of ``inside``, both sides."""
    inside = np.asarray(inside, dtype=bool)
    if not inside.any() or inside.all():
        return np.zeros(inside.shape, bool)
    return _dilate(inside, radius) & _dilate(~inside, radius)


def structure_row(label: int, result: Reconstruction, threshold: float | None = None) -> StructureRow:
    """Volume (mean and spread across members), surface-band variance and centre of one result."""
    level = result.config.threshold if threshold is None else float(threshold)
    mean = result.maps.mean
    voxel_ml = float(np.prod(mean.spacing)) / 1000.0
    inside = np.asarray(mean.data) >= level
    if result.maps.members is not None:
        member_ml = np.array([np.count_nonzero(m >= level) * voxel_ml for m in result.maps.members])
    else:  # members not kept: the mean's volume, spread unknown
        member_ml = np.array([np.count_nonzero(inside) * voxel_ml])
    band = surface_shell(inside, BAND_VOXELS)
    band_variance = float(np.asarray(result.maps.variance.data)[band].mean()) if band.any() else math.nan
    where = inside if inside.any() else np.asarray(result.observation.data) > 0
    source = mean if inside.any() else result.observation
    centre = source.index_to_world(np.argwhere(where).mean(axis=0)[None])[0]
    return StructureRow(
        label=int(label),
        volume_ml=float(member_ml.mean()),
        volume_ml_std=float(member_ml.std()) if len(member_ml) > 1 else math.nan,
        band_variance=band_variance,
        centre_mm=tuple(float(c) for c in centre),
    )


def flag_rows(rows: list[StructureRow], ratio: float = FLAG_RATIO, max_cv: float = FLAG_CV) -> list[StructureRow]:
    """Flag the least trustworthy structures: no surface, a high band variance, or a wide volume spread."""
    variances = np.array([r.band_variance for r in rows], dtype=float)
    finite = variances[np.isfinite(variances)]
    median = float(np.median(finite)) if finite.size else math.nan
    flagged = []
    for row in rows:
        reasons = []
        if not np.isfinite(row.band_variance) or row.volume_ml == 0:
            reasons.append("no surface at this threshold")
        elif len(rows) > 1 and median > 0 and row.band_variance >= ratio * median:
            reasons.append(f"band variance {row.band_variance / median:.1f}x the median")
        if row.volume_ml > 0 and np.isfinite(row.volume_ml_std) and row.volume_ml_std / row.volume_ml > max_cv:
            reasons.append(f"volume spread {100 * row.volume_ml_std / row.volume_ml:.0f}%")
        flagged.append(replace(row, flagged=bool(reasons), reason="; ".join(reasons)))
    return flagged


def structure_table(
    results: dict[int, Reconstruction], threshold: float | None = None, *, ratio: float = FLAG_RATIO
) -> list[StructureRow]:
    """One row per label (sorted): volume mL mean and std across members, band variance, flag."""
    rows = [structure_row(label, results[label], threshold) for label in sorted(results)]
    return flag_rows(rows, ratio=ratio)


def concatenate_meshes(meshes: list[Mesh]) -> Mesh:
    """One mesh holding all the given meshes (vertex values kept when every mesh has them)."""
    meshes = [m for m in meshes if not m.is_empty]
    if not meshes:
        return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros(0, np.float32))
    offsets = np.cumsum([0] + [len(m.vertices_mm) for m in meshes[:-1]])
    values = None
    if all(m.vertex_values is not None for m in meshes):
        values = np.concatenate([m.vertex_values for m in meshes])
    return Mesh(
        np.concatenate([m.vertices_mm for m in meshes]),
        np.concatenate([m.faces + o for m, o in zip(meshes, offsets, strict=True)]),
        values,
    )


def _overlap(target: np.ndarray, source: np.ndarray, offset: np.ndarray) -> tuple[tuple, tuple]:
    """Slices of ``target`` and ``source`` where ``source`` starting at ``offset`` overlaps ``target``."""
    t_slices, s_slices = [], []
    for size_t, size_s, o in zip(target.shape, source.shape, offset, strict=True):
        lo, hi = max(0, o), min(size_t, o + size_s)
        t_slices.append(slice(lo, hi))
        s_slices.append(slice(lo - o, hi - o))
    return tuple(t_slices), tuple(s_slices)


@dataclass(eq=False)
class StructureSet:
    """Per-label reconstructions and their maps merged on one grid (max over structures)."""

    results: dict[int, Reconstruction]
    mean: Volume  # merged mean occupancy
    variance: Volume  # merged variance (of the most probable structure's grid, max where they overlap)
    owner: np.ndarray  # label of the most probable structure per voxel of the merged grid
    threshold: float
    kept: tuple[int, ...] = ()  # labels a refinement did not fine-tune (their masks did not change)

    @property
    def labels(self) -> list[int]:
        return sorted(self.results)

    @property
    def rounds(self) -> int:
        """Refinements since the first reconstruction (every structure goes through each round)."""
        return max(result.rounds for result in self.results.values())

    @property
    def members(self) -> int:
        first = next(iter(self.results.values()))
        return len(first.maps.members) if first.maps.members is not None else first.fitted.members

    @property
    def device(self) -> str:
        return next(iter(self.results.values())).device

    def remesh(self, threshold: float, *, step_size: int = 1) -> Mesh:
        """Marching cubes of every structure's cached mean at ``threshold`` (no network query)."""
        meshes = []
        for result in self.results.values():
            if step_size == 1 and abs(float(threshold) - result.config.threshold) < 1e-9:
                meshes.append(result.mesh)  # extracted at this threshold already
            else:
                meshes.append(result.remesh(threshold, step_size=step_size))
        return concatenate_meshes(meshes)

    def member_mesh(self, member: int, threshold: float | None = None) -> Mesh:
        return concatenate_meshes([r.member_mesh(member, threshold) for r in self.results.values()])

    def label_volume(self, threshold: float) -> Volume:
        """Labels of the merged grid: each voxel's most probable structure where its mean >= threshold."""
        dtype = np.uint8 if max(self.labels) < 256 else np.int32
        inside = np.asarray(self.mean.data) >= threshold
        return self.mean.with_data(np.where(inside, self.owner, 0).astype(dtype))

    def table(self, threshold: float | None = None) -> list[StructureRow]:
        return structure_table(self.results, self.threshold if threshold is None else threshold)


def combine_structures(results: dict[int, Reconstruction]) -> StructureSet:
    """Merge per-label maps on one grid covering all of them (same spacing and axes, trilinear resampling)."""
    if not results:
        raise InputError("no structure to combine")
    labels = sorted(results)
    first = results[labels[0]]
    threshold = first.config.threshold
    if len(labels) == 1:
        mean = first.maps.mean
        owner = np.full(mean.shape, labels[0], dtype=np.int32)
        return StructureSet(results, mean, first.maps.variance, owner, threshold)
    affine = first.maps.mean.affine
    linear = affine[:3, :3]
    for label in labels[1:]:
        other = results[label].maps.mean
        if not np.allclose(other.affine[:3, :3], linear, atol=1e-6):
            raise InputError(f"structure {label} was reconstructed on a grid with other axes or spacing")
    # corners of every grid in the first grid's (fractional) index space
    starts = np.array([first.maps.mean.world_to_index(results[k].maps.mean.origin[None])[0] for k in labels])
    stops = starts + np.array([results[k].maps.mean.shape for k in labels]) - 1
    lo = np.floor(starts.min(axis=0) + 1e-6)
    shape = tuple(int(s) for s in np.ceil(stops.max(axis=0) - 1e-6) - lo + 1)
    merged_affine = affine.copy()
    merged_affine[:3, 3] = first.maps.mean.index_to_world(lo[None])[0]
    mean = np.zeros(shape, np.float32)
    variance = np.zeros(shape, np.float32)
    owner = np.zeros(shape, np.int32)
    for label, start in zip(labels, starts, strict=True):
        maps = results[label].maps
        position = start - lo
        whole = np.floor(position + 1e-6).astype(int)
        fraction = np.clip(position - whole, 0.0, 1.0)
        # pad by one zero voxel so that the resampled grid fades to 0 at its edges
        layers = []
        for grid in (maps.mean, maps.variance):
            padded = np.pad(np.asarray(grid.data, np.float32), 1)
            layers.append(ndimage.shift(padded, fraction, order=1, mode="constant", cval=0.0, prefilter=False))
        t, s = _overlap(mean, layers[0], whole - 1)
        better = layers[0][s] > mean[t]
        mean[t] = np.where(better, layers[0][s], mean[t])
        owner[t] = np.where(better, label, owner[t])
        variance[t] = np.maximum(variance[t], layers[1][s])
    return StructureSet(results, Volume(mean, merged_affine), Volume(variance, merged_affine), owner, threshold)


def _tagger(label: int, index: int, count: int, several: bool):
    """Marks a structure's progress with its place in the set (one stream for the whole set)."""

    def tag(progress: Progress) -> None:
        progress.extra.update({"label": label, "structure": index, "structures": count})
        if several:
            progress.message = f"label {label} ({index + 1}/{count})" + (
                f": {progress.message}" if progress.message else ""
            )

    return tag


def reconstruct_structures_steps(
    masks: dict[int, Volume],
    prior,
    config: ReconstructionConfig = ReconstructionConfig(),
    *,
    target: tuple[np.ndarray, tuple[int, int, int]] | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, StructureSet]:
    """Reconstruct each labelled mask in turn (members kept for the volume spread)."""
    if not masks:
        raise InputError("no structure to reconstruct")
    config = replace(config, keep_members=True)
    results: dict[int, Reconstruction] = {}
    labels = sorted(masks)
    for index, label in enumerate(labels):
        check_cancel(cancel)
        tag = _tagger(label, index, len(labels), len(labels) > 1)
        steps = reconstruct_steps(masks[label], prior, config, target=target, cancel=cancel)
        results[label] = yield from relay(steps, tag)
    check_cancel(cancel)
    return combine_structures(results)


# -- refine a set: each structure from its own members, with its own mask ---------------------------


def check_same_labels(previous: list[int], current: list[int]) -> None:
    """A refinement keeps the result's structures: a new or a vanished label is a one-line InputError."""
    new = sorted(set(current) - set(previous))
    gone = sorted(set(previous) - set(current))
    held = ", ".join(str(k) for k in sorted(previous))
    if new:
        which = ", ".join(str(k) for k in new)
        raise InputError(
            f"label {which} {'is' if len(new) == 1 else 'are'} new in the updated annotation, and the result holds "
            f"label {held} only: a refinement keeps the structures of its result; reconstruct again to add "
            f"{'it' if len(new) == 1 else 'them'}"
        )
    if gone:
        which = ", ".join(str(k) for k in gone)
        raise InputError(
            f"label {which} of the result {'is' if len(gone) == 1 else 'are'} no longer in the updated annotation: "
            "put its slices back, or reconstruct again without it"
        )


def _reading(config: ReconstructionConfig) -> tuple:
    """The settings that decide how a mask is read (beyond the mask itself)."""
    return tuple(sorted(config.annotated_empty)), config.empty_slices


def _annotation_axis(source: Reconstruction | WarmStart) -> int | None:
    if isinstance(source, WarmStart):
        return source.annotation_axis
    reading = source.reading
    return reading.axis if reading is not None and reading.sparse else None


def is_unchanged(source: Reconstruction | WarmStart, mask: Volume, config: ReconstructionConfig | None) -> bool:
    """True when ``mask`` is the mask ``source`` was fitted on and ``config`` reads it the same way."""
    previous = source.observation_digest if isinstance(source, WarmStart) else mask_digest(source.observation)
    if not previous or previous != mask_digest(mask):
        return False
    if config is None:
        return True
    axis, before = config.annotation_axis, source.config.annotation_axis
    if axis is not None and axis != (before if before is not None else _annotation_axis(source)):
        return False
    return _reading(config) == _reading(source.config)


def _kept(result: Reconstruction, config: ReconstructionConfig | None) -> Reconstruction:
    """An unchanged structure through a round: its maps and members as they are (surface at the round's level)."""
    threshold = result.config.threshold if config is None else config.threshold
    mesh = result.mesh if abs(threshold - result.config.threshold) < 1e-12 else result.remesh(threshold)
    return replace(
        result,
        config=replace(result.config, threshold=threshold),
        mesh=mesh,
        rounds=result.rounds + 1,
        timings=dict(result.timings),
    )


def refine_structures_steps(
    structures: StructureSet | Mapping[int, Reconstruction | WarmStart],
    masks: Mapping[int, Volume],
    config: ReconstructionConfig | None = None,
    *,
    steps: int | None = None,
    target: tuple[np.ndarray, tuple[int, int, int]] | None = None,
    keep_unchanged: bool = True,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, StructureSet]:
    """One refinement round of every structure of a set, in one progress stream.

    ``structures``: a :class:`StructureSet` (or label -> :class:`Reconstruction` / :class:`WarmStart`,
    e.g. from :func:`read_structure_starts`); ``masks``: label -> the structure's mask in the user's
    updated label volume (:func:`structure_masks`), the same labels (else InputError). Each structure
    is warm-started from its own members (:func:`~.refine.refine_steps`); ``config`` (one for all, e.g.
    with new ``annotated_empty`` slices or a new ``threshold``) defaults to each structure's own.
    With ``keep_unchanged``, a structure whose mask and reading did not change is kept (a
    :class:`Reconstruction` as it is; a :class:`WarmStart`, which holds no maps, with 0 fine-tuning
    steps: the maps are made again from the same members); when none changed, all are refined.
    """
    sources = dict(structures.results if isinstance(structures, StructureSet) else structures)
    if not sources:
        raise InputError("no structure to refine")
    check_same_labels(list(sources), list(masks))
    for mask in masks.values():
        check_binary_mask(mask)
    labels = sorted(sources)
    unchanged = {k for k in labels if keep_unchanged and is_unchanged(sources[k], masks[k], config)}
    if len(unchanged) == len(labels):  # nothing changed: Refine pressed again, every structure takes its steps
        unchanged = set()
    refined = [k for k in labels if k not in unchanged]
    several = len(labels) > 1
    results: dict[int, Reconstruction] = {}
    for label in sorted(unchanged):
        check_cancel(cancel)
        source = sources[label]
        if isinstance(source, Reconstruction):
            yield Progress(
                "prepare", 0, 1, message=f"label {label}: unchanged, kept", extra={"structure": 0, "structures": 1}
            )
            results[label] = _kept(source, config)
        else:
            refined.append(label)  # no maps in a warm start: made again from its members, without steps
    refined.sort()
    for index, label in enumerate(refined):
        check_cancel(cancel)
        tag = _tagger(label, index, len(refined), several)
        rounds = 0 if label in unchanged else steps
        work = refine_steps(sources[label], masks[label], config, steps=rounds, target=target, cancel=cancel)
        results[label] = yield from relay(work, tag)
    check_cancel(cancel)
    combined = combine_structures(results)
    combined.kept = tuple(sorted(unchanged))
    return combined


# -- annotate next on a set: suggestions across structures, the summed stopping signal ------------


@dataclass(frozen=True)
class StructureSuggestion(SliceSuggestion):
    """A slice of the shared volume to annotate, scored over the structures it helps (``labels``)."""

    labels: tuple[int, ...] = ()


SHARE_NAMED = 0.05  # a suggestion names the structures that account for at least this share of its score


def suggest_structure_slices(
    structures: StructureSet | Mapping[int, Reconstruction],
    n: int = 5,
    *,
    axis: int | None = None,
    score: str = DEFAULT_SCORE,
) -> list[StructureSuggestion]:
    """The ``n`` slices of the shared label volume whose annotation is expected to remove the most error.

    Ranked across structures, since a user annotates a slice of the volume with every label on it. The
    plan of :func:`~.annotate.suggest_slices`, over all structures at once: a slice's score is the sum over
    the structures that did not annotate it of the mislabelled voxels annotating it removes from each
    (voxels, comparable across structures on one output spacing), the best first, each next one the best
    once those before it are annotated in every structure (so two structures do not put neighbouring
    slices at the top). ``labels`` names the structures that account for at least :data:`SHARE_NAMED` of a
    slice's score. Slices to check (a thick acquisition annotated on every slice, or another ``axis``)
    are each structure's, a slice in several lists scoring the sum. ``score``: as in ``suggest_slices``.
    """
    results = dict(structures.results if isinstance(structures, StructureSet) else structures)
    if len(results) == 1:
        label, result = next(iter(results.items()))
        return [
            StructureSuggestion(**asdict(s), labels=(label,)) for s in suggest_slices(result, n, axis=axis, score=score)
        ]
    check_suggestion_request(n, axis, score)
    readings = {k: r.reading for k, r in results.items() if r.reading is not None and r.reading.axis is not None}
    axes = {int(reading.axis) for reading in readings.values() if len(reading.gaps)}
    slice_axis = axis if axis is not None else (min(axes) if axes else None)
    gapped = {k: readings[k] for k in readings if readings[k].axis == slice_axis and len(readings[k].gaps)}
    if gapped:
        return _joint_plan({k: results[k] for k in gapped}, gapped, int(n), score)
    return _merged_checks(results, int(n), axis, score)


def _joint_plan(results: dict[int, Reconstruction], readings: dict, n: int, score: str) -> list[StructureSuggestion]:
    """The greedy plan of core/annotate (:func:`~.annotate.plan_slices`), each slice's score summed over
    the structures it is a gap of."""
    labels = sorted(results)
    axis = int(readings[labels[0]].axis)
    observation = results[labels[0]].observation
    out: list[StructureSuggestion] = []
    for index, parts in plan_slices({k: SliceErrors.of(results[k], score) for k in labels}, n):
        total = sum(parts.values())
        named = tuple(k for k, v in sorted(parts.items()) if total > 0 and v >= SHARE_NAMED * total)
        out.append(StructureSuggestion(axis, index, slice_world_mm(observation, axis, index), total, labels=named))
    return out


def _merged_checks(results: dict[int, Reconstruction], n: int, axis: int | None, score: str) -> list:
    """Each structure's slices to check, a slice in several lists scoring the sum (best first)."""
    merged: dict[tuple[int, int, str], list] = {}
    first_error: InputError | None = None
    for label in sorted(results):
        try:
            plan = suggest_slices(results[label], n, axis=axis, score=score)
        except InputError as error:  # e.g. no slice axis for this structure
            first_error = first_error or error
            continue
        for s in plan:
            entry = merged.setdefault((s.axis, s.index, s.kind), [s.world_mm, 0.0, []])
            entry[1] += s.score
            entry[2].append(label)
    if not merged and first_error is not None:
        raise first_error
    ranked = sorted(merged.items(), key=lambda item: (-item[1][1], item[0][0], item[0][1]))[:n]
    return [
        StructureSuggestion(axis=a, index=i, world_mm=world, score=total, kind=kind, labels=tuple(labels))
        for (a, i, kind), (world, total, labels) in ranked
    ]


def structures_expected_error(structures: StructureSet | Mapping[int, Reconstruction]) -> ExpectedError:
    """The stopping signal of a set: the expected mislabelled voxels near the surfaces, summed over structures."""
    results = dict(structures.results if isinstance(structures, StructureSet) else structures)
    parts = [expected_band_error(results[k]) for k in sorted(results)]
    if len(parts) == 1:
        return parts[0]
    voxels = sum(p.voxels for p in parts)
    surface = sum(p.surface_voxels for p in parts)
    volume_ml = sum(p.volume_ml for p in parts)
    text = (
        f"about {voxels:.0f} mislabelled voxels expected near the surfaces of {len(parts)} structures "
        f"({volume_ml:.2f} ml; {voxels / max(surface, 1):.0%} of their {surface} surface voxels)"
    )
    return ExpectedError(voxels, surface, sum(p.band_voxels for p in parts), volume_ml, text)


# -- a set's result folder ------------------------------------------------------------------------


def structure_folder(label: int) -> str:
    return f"label{int(label)}"


def save_structures(
    structures: StructureSet, out_dir: str | Path, formats=None, *, member_meshes: bool = False
) -> dict[str, Path]:
    """Write a set's result folder: ``label<k>/`` per structure, the merged maps, mesh and ``structures.json``."""
    folder = ensure_writable_dir(out_dir)
    paths: dict[str, Path] = {}
    for label, result in sorted(structures.results.items()):
        sub = folder / structure_folder(label)
        written = result.save(sub, formats=formats)
        paths[structure_folder(label)] = sub
        if member_meshes and result.maps.members is not None:
            for m in range(len(result.maps.members)):
                mesh = result.member_mesh(m)
                if not mesh.is_empty:
                    written[f"member{m}"] = write_mesh(sub / f"mesh_member{m}.ply", mesh)
    threshold = structures.threshold
    paths["mean"] = write_volume(folder / "mean.nii.gz", structures.mean)
    paths["variance"] = write_volume(folder / "variance.nii.gz", structures.variance)
    segmentation = structures.label_volume(threshold)
    paths["segmentation"] = write_volume(folder / "segmentation.nii.gz", segmentation, dtype=None)
    mesh = structures.remesh(threshold)
    if not mesh.is_empty:
        paths["mesh"] = write_mesh(folder / "mesh.ply", mesh)
    first = structures.results[structures.labels[0]]
    content = {
        "format": STRUCTURES_FORMAT,
        "format_version": STRUCTURES_FORMAT_VERSION,
        "package_version": __version__,
        "labels": structures.labels,
        "folders": {str(k): structure_folder(k) for k in structures.labels},
        "threshold": threshold,
        "members": structures.members,
        "prior": first.prior_name,
        "device": structures.device,
        "refine_rounds": structures.rounds,
        "kept_unchanged": list(structures.kept),
        "table": [asdict(row) for row in structures.table(threshold)],
    }
    atomic_write_bytes(folder / STRUCTURES, json.dumps(content, indent=2, default=_plain).encode())
    paths["structures"] = folder / STRUCTURES
    return paths


def _plain(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def is_structure_folder(folder: str | Path) -> bool:
    """True for a folder written by :func:`save_structures` (several structures)."""
    return (Path(folder) / STRUCTURES).is_file()


def read_structure_starts(folder: str | Path, prior) -> dict[int, WarmStart]:
    """label -> the warm-start state of each structure of a set's result folder (each checked against ``prior``)."""
    folder = Path(folder)
    path = folder / STRUCTURES
    try:
        content = json.loads(path.read_text())
        if content.get("format") != STRUCTURES_FORMAT:
            raise ValueError("not a structures index")
        folders = {int(k): str(v) for k, v in content["folders"].items()}
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({one_line(error.strerror or error)})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is corrupt ({one_line(error, 120)}); rerun reconstruct") from None
    if not folders:
        raise CheckpointError(f"{path} lists no structure; rerun reconstruct")
    starts = {}
    for label, name in sorted(folders.items()):
        sub = folder / name
        if Path(name).name != name or not (sub / MEMBERS).is_file():
            raise InputError(f"{folder}: structure {label} has no {name}/{MEMBERS}; rerun reconstruct")
        starts[label] = read_warm_start(sub, prior)
    return starts
