"""What every job reads: the observation as masks, the prior (each file loaded once), the target grid and
the ground truth. Front ends hand these over as paths or as volumes they already hold."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config.errors import InputError, setting
from ..config.paths import bundled_prior_path
from ..io.formats import can_read, find_segment, read_segments
from ..io.volumes import read_volume
from ..networks.checkpoint import Prior, load_prior
from ..volumes.masks import binary_mask_from_volume, list_labels, structure_masks
from ..volumes.volume import Volume

EACH = "each"  # label choice: every label of a label map reconstructed separately (a set of one per label)
ALL = "all"  # label choice: every label merged into one object
WHOLE_LABEL = 1  # the key of one object read whole

PathLike = str | os.PathLike
PriorSource = Prior | PathLike | Sequence[PathLike] | None
Grid = tuple[np.ndarray, tuple[int, int, int]]


# -- priors: one cache for every front end -----------------------------------------------------------

PRIOR_CACHE: dict[tuple, Prior] = {}  # (path, mtime, size) -> prior: a widget, a cohort worker, a script reuse it
_PRIORS_LOCK = threading.Lock()


def load_prior_file(path: PathLike | None) -> Prior:
    """A prior file (the bundled one for None), loaded once per version of the file (path, mtime, size)."""
    resolved = Path(bundled_prior_path() if path is None else path).expanduser()
    try:
        stat = resolved.resolve().stat()
    except (OSError, RuntimeError):
        return load_prior(path)  # raises the loader's one-line error (not found, not a file name)
    key = (str(resolved.resolve()), stat.st_mtime_ns, stat.st_size)
    with _PRIORS_LOCK:
        if key not in PRIOR_CACHE:
            PRIOR_CACHE[key] = load_prior(path)
        return PRIOR_CACHE[key]


def load_priors(source: PriorSource = None) -> Prior:
    """The prior of a job: a :class:`Prior` as it is, the bundled one for None, a file, or several
    single-model files combined into one prior (a deep ensemble of their models)."""
    if isinstance(source, Prior):
        return source
    paths = [] if source is None else [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not paths:
        return load_prior_file(None)
    priors = [load_prior_file(p) for p in paths]
    first = priors[0]
    for other in priors[1:]:
        if other.config != first.config:
            raise InputError(f"priors {first.name} and {other.name} have different architectures")
    if len(priors) == 1:
        return first
    models = [m for p in priors for m in p.models]
    # no calibration head nor shape reference: each was learned for one prior's own network
    return Prior(config=first.config, models=models, training=first.training, path=first.path)


# -- the observation ---------------------------------------------------------------------------------


def as_volume(source: Volume | PathLike) -> Volume:
    """A volume as it is, or read from its file."""
    return source if isinstance(source, Volume) else read_volume(source)


def observation_masks(
    source: Volume | PathLike, label: int | str | None = None, threshold: float | None = None
) -> tuple[dict[int, Volume], bool]:
    """(label -> binary mask, split): the structures to reconstruct and whether they were read per label.

    ``label``: None (a binary mask, or a segmentation of one segment), a label, a segment name (.seg.nrrd,
    DICOM-SEG), :data:`ALL` (every label merged into one object) or :data:`EACH` (one structure per
    label); ``threshold``: voxels >= it are the object (an intensity image). One object is keyed by its
    label (:data:`WHOLE_LABEL` when it has none).
    """
    if label == EACH:
        if threshold is not None:
            raise InputError(
                f"{setting('input_threshold')} makes one object of an image; several structures need a label volume"
            )
        return structure_masks(as_volume(source)), True
    volume = as_volume(source)
    path = None if isinstance(source, Volume) else Path(source)
    if path is not None and isinstance(label, str) and label != ALL:  # a segment name
        label = find_segment(path, label).label
    elif path is not None and label is None and threshold is None:
        segments = read_segments(path).segments if can_read(path) else ()
        if len(segments) > 1:
            names = ", ".join(repr(s.name) for s in segments)
            raise InputError(
                f"{path}: holds several segments ({names}); choose one with {setting('label', 'NAME')}, "
                f"e.g. {setting('label', chr(34) + segments[0].name + chr(34))}, or merge them with "
                f"{setting('label', ALL)}"
            )
    key = int(label) if isinstance(label, (int, np.integer)) else WHOLE_LABEL
    return {key: binary_mask_from_volume(volume, label=label, threshold=threshold)}, False


def target_grid(target: Volume | PathLike | Grid | None) -> Grid | None:
    """The output grid ``(affine, shape)`` of a reference volume (or its file), or as given."""
    if target is None or isinstance(target, tuple):
        return target
    reference = as_volume(target)
    return reference.affine, reference.shape


# -- the ground truth --------------------------------------------------------------------------------


def ground_truth_masks(
    truth: Volume, labels: Sequence[int], split: bool, read_at: int | None = None, name: str = "the ground truth"
) -> dict[int, Volume]:
    """label -> the ground-truth mask each structure is scored against.

    Structures read per label: each the same label of the ground truth (all must be there). One object
    read whole: the ground truth at ``read_at`` (the label the object was read at) when it holds that
    label, else every voxel >= 0.5.
    """
    held = list_labels(truth) if split or read_at is not None else []
    if split:
        missing = sorted(set(labels) - set(held))
        if missing:
            raise InputError(
                f"{name} holds no label {', '.join(map(str, missing))}: give one with the labels of the "
                "observation"
            )
        return {label: binary_mask_from_volume(truth, label=label) for label in labels}
    if read_at is not None and read_at in held:
        return {label: binary_mask_from_volume(truth, label=read_at) for label in labels}
    return {label: binary_mask_from_volume(truth, threshold=0.5) for label in labels}
