"""Which structure each mesh vertex belongs to (colouring a multi-structure mesh by structure)."""

from __future__ import annotations

import numpy as np

from ..volumes.volume import Volume


def vertex_labels(owner: np.ndarray, grid: Volume, vertices_mm: np.ndarray) -> np.ndarray:
    """The label of the most probable structure at the voxel of ``grid`` nearest to each vertex.

    ``owner`` holds that label per voxel of ``grid`` (a :class:`~.structures.StructureSet`'s merged grid).
    """
    vertices = np.asarray(vertices_mm, dtype=float).reshape(-1, 3)
    if not len(vertices):
        return np.zeros(0, dtype=np.asarray(owner).dtype)
    index = np.rint(grid.world_to_index(vertices)).astype(np.int64)
    index = np.clip(index, 0, np.asarray(owner.shape) - 1)
    return np.asarray(owner)[index[:, 0], index[:, 1], index[:, 2]]


def label_vertex_colours(
    labels: np.ndarray, colours: dict[int, tuple], highlight: int | None = None, dim: float = 0.3
) -> np.ndarray:
    """RGBA per vertex from a label -> colour table; with ``highlight``, the other structures dimmed."""
    out = np.full((len(labels), 4), (0.7, 0.7, 0.7, 1.0), dtype=np.float32)
    for label, colour in colours.items():
        out[labels == label] = colour
    if highlight is not None:
        others = labels != highlight
        out[others, :3] *= dim
    return out
