"""Volume: a grid of voxels in world mm."""

from __future__ import annotations

import numpy as np

from napari_dropsembles.core.volumes.volume import Volume


def test_a_grid_stored_in_another_axis_order_is_given_in_world_axis_order_with_the_same_geometry():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    affine = np.array([[0.0, 0.0, -3.3, 10.0], [0.6, 0.0, 0.0, -5.0], [0.0, -0.6, 0.0, 2.0], [0, 0, 0, 1.0]])
    stored = Volume(data, affine)  # a sagittal series stored slice-last, two axes flipped
    ordered = stored.in_world_axis_order()
    assert ordered.is_axis_aligned and ordered.shape == (6, 4, 5)
    index = np.argwhere(np.ones(data.shape, bool))
    back = np.round(ordered.world_to_index(stored.index_to_world(index))).astype(int)
    assert np.allclose(ordered.world_to_index(stored.index_to_world(index)), back, atol=1e-6)
    assert (ordered.data[tuple(back.T)] == data[tuple(index.T)]).all()  # every voxel where it was in the world
    aligned = Volume(data, np.diag([1.0, 2.0, 3.0, 1.0]))
    assert aligned.in_world_axis_order() is aligned
    oblique = np.eye(4)
    oblique[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    assert Volume(data, oblique).in_world_axis_order().shape == data.shape  # a true rotation stays as it is
