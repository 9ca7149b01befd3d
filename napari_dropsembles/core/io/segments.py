"""Named segments of a label map (Slicer .seg.nrrd, DICOM-SEG): label value, name, display colour."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config.errors import InputError
from ..volumes.volume import Volume

# Slicer's first generic anatomy colours (0-1 RGB), used when a segment has none
DEFAULT_COLORS = (
    (0.502, 0.682, 0.502),
    (0.945, 0.839, 0.569),
    (0.694, 0.478, 0.396),
    (0.435, 0.722, 0.824),
    (0.847, 0.396, 0.310),
    (0.867, 0.510, 0.396),
    (0.565, 0.933, 0.565),
    (0.753, 0.408, 0.345),
)


@dataclass(frozen=True)
class Segment:
    """One structure of a label map: its ``label`` value there, a ``name`` and an RGB ``color`` in [0, 1]."""

    label: int
    name: str
    color: tuple[float, float, float] | None = None

    def display_color(self) -> tuple[float, float, float]:
        if self.color is not None:
            return self.color
        return DEFAULT_COLORS[(self.label - 1) % len(DEFAULT_COLORS)]


@dataclass(frozen=True, eq=False)
class SegmentedVolume:
    """A volume and, when it is a segmentation, its segments (empty for a plain image)."""

    volume: Volume
    segments: tuple[Segment, ...] = ()

    @property
    def names(self) -> dict[int, str]:
        """label -> segment name."""
        return {s.label: s.name for s in self.segments}

    def colors(self) -> dict[int, tuple[float, float, float]]:
        """label -> RGB in [0, 1] (a default colour where the file gives none)."""
        return {s.label: s.display_color() for s in self.segments}


def default_segments(labels: Volume, names: dict[int, str] | None = None) -> tuple[Segment, ...]:
    """One segment per non-zero label of ``labels``, named from ``names`` or 'Segment_N'."""
    values = np.unique(np.asarray(labels.data))
    names = names or {}
    return tuple(Segment(int(v), names.get(int(v), f"Segment_{int(v)}")) for v in values if v != 0)


def label_map_segments(
    path: object, labels: Volume, segments: Sequence[Segment] | None, what: str = "a segmentation"
) -> tuple[np.ndarray, tuple[Segment, ...]]:
    """(integer-valued label data, its segments) for writing ``labels`` as ``what``; one-line errors
    for a map that is not whole numbers or that holds no label."""
    data = np.asarray(labels.data)
    if data.dtype.kind == "f" and not np.all(data == np.round(data)):
        raise InputError(f"{path}: {what} needs integer labels; threshold the map first")
    chosen = tuple(segments) if segments else default_segments(labels)
    if not chosen:
        raise InputError(f"{path}: the label map is empty; nothing to write as a segmentation")
    return data, chosen
