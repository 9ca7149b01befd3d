"""A set of structures, one or several: each reconstructed, refined and ranked for annotation in one stream.

One object read whole is a set of one (``split=False``); a label map read per label (vertebrae L1-L5
as labels 1-5) a set of one structure per label. :func:`reconstruct_structures_steps` and
:func:`refine_structures_steps` run the one-structure jobs (core/jobs/reconstruct, core/jobs/refine) for
each in turn and merge them (core/results/structures); :func:`suggest_structure_slices` ranks the slices
of the shared volume across the structures (a slice's score is the sum of what annotating it removes from
each), and :func:`structures_expected_error` sums the stopping signal over them.

Refining a set (issue 13) refines each structure from its own members with its own mask of the updated
volume. A structure whose mask and reading settings (slices annotated as empty, empty-slice reading)
did not change is kept as it is: refining it only gives its members a few more steps on the same data.
Measured on the real L1-L5 masks (3 mm, every 3rd axial slice, bundled prior, one CPU thread), one
round with the top suggested slice drawn (it crosses L4 and L5): 3.1 s keeping L1-L3, 7.7 s refining
all five, with the same mean Dice (0.906 vs 0.905; the unchanged three moved by -0.006 to +0.001). So a
round costs only what changed; when nothing changed, every structure is refined (Refine pressed again).
The labels must stay the same: a label new in the updated volume, or one gone from it, is an
:class:`InputError` saying to reconstruct again.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace

import numpy as np

from ..config.configs import ReconstructionConfig
from ..config.errors import InputError
from ..config.progress import CancelFlag, Progress, check_cancel, relay
from ..results.folder import SavedStructures
from ..results.members import WarmStart, mask_digest
from ..results.reconstruction import Reconstruction
from ..results.structures import StructureSet, combine_structures
from ..volumes.masks import check_binary_mask
from ..volumes.volume import Volume
from .reconstruct import reconstruct_steps
from .refine import refine_steps
from .suggest import (
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


def _tagger(label: int, index: int, count: int, split: bool):
    """Marks a structure's progress with its place in the set (one stream for the whole set); a structure
    read per label says which it is."""

    def tag(progress: Progress) -> None:
        progress.extra.update({"label": label, "structure": index, "structures": count})
        if split:
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
    split: bool = True,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, StructureSet]:
    """Reconstruct each mask in turn. ``split``: label -> mask of a label map read per label (members kept
    for the volume spread of the table); False: one object read whole (``config.keep_members`` as given)."""
    if not masks:
        raise InputError("no structure to reconstruct")
    if split:
        config = replace(config, keep_members=True)
    results: dict[int, Reconstruction] = {}
    labels = sorted(masks)
    for index, label in enumerate(labels):
        check_cancel(cancel)
        tag = _tagger(label, index, len(labels), split)
        steps = reconstruct_steps(masks[label], prior, config, target=target, cancel=cancel)
        results[label] = yield from relay(steps, tag)
    check_cancel(cancel)
    return combine_structures(results, split=split)


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
    structures: StructureSet | SavedStructures | Mapping[int, Reconstruction | WarmStart],
    masks: Mapping[int, Volume],
    config: ReconstructionConfig | None = None,
    *,
    steps: int | None = None,
    target: tuple[np.ndarray, tuple[int, int, int]] | None = None,
    keep_unchanged: bool = True,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, StructureSet]:
    """One refinement round of every structure of a set, in one progress stream.

    ``structures``: a :class:`StructureSet`, the :class:`SavedStructures` of a result folder
    (:func:`read_structure_starts`), or label -> :class:`Reconstruction` / :class:`WarmStart`.
    ``masks``: label -> the structure's mask in the user's updated volume (:func:`structure_masks`),
    the same labels (else InputError). Each structure is warm-started from its own members
    (:func:`~.refine.refine_steps`); ``config`` (one for all, e.g. with new ``annotated_empty`` slices
    or a new ``threshold``) defaults to each structure's own. With ``keep_unchanged``, a structure
    whose mask and reading did not change is kept (a :class:`Reconstruction` as it is; a
    :class:`WarmStart`, which holds no maps, with 0 fine-tuning steps: the maps are made again from
    the same members); when none changed, all are refined.
    """
    if isinstance(structures, StructureSet):
        sources, split = dict(structures.results), structures.split
    elif isinstance(structures, SavedStructures):
        sources, split = dict(structures.starts), structures.split
    else:
        sources, split = dict(structures), True
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
        tag = _tagger(label, index, len(refined), split)
        rounds = 0 if label in unchanged else steps
        work = refine_steps(sources[label], masks[label], config, steps=rounds, target=target, cancel=cancel)
        results[label] = yield from relay(work, tag)
    check_cancel(cancel)
    combined = combine_structures(results, split=split)
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
        named = tuple(k for k, v in sorted(parts.items()) if v >= SHARE_NAMED * total)
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
    return ExpectedError.total([expected_band_error(results[k]) for k in sorted(results)])
