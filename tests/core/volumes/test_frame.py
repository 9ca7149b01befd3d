"""The normalised frame: world mm round trips, padding of thick axes, splatting into the encoder grid."""

from __future__ import annotations

import numpy as np

from napari_dropsembles.core.config.configs import ModelConfig
from napari_dropsembles.core.fitting.case import make_case
from napari_dropsembles.core.volumes.frame import frame_from_observation, in_world_axis_order
from napari_dropsembles.core.volumes.volume import Volume
from tests.conftest import sphere_volume


def _rotated(volume: Volume, angle: float = 0.4) -> Volume:
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    affine = volume.affine.copy()
    affine[:3, :3] = rotation @ affine[:3, :3]
    return Volume(volume.data, affine)


def test_world_round_trip_under_rotated_anisotropic_affine():
    volume = _rotated(sphere_volume(spacing_mm=(0.8, 1.0, 3.0)))
    frame = frame_from_observation(volume)
    points = np.random.default_rng(0).normal(0, 20, (100, 3))
    np.testing.assert_allclose(frame.to_world(frame.to_normalised(points)), points, atol=1e-9)


def test_box_is_isotropic_padded_and_extended_by_one_slice_on_the_thick_axis():
    volume = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0))
    frame = frame_from_observation(volume, box_padding=0.1)
    index = np.argwhere(volume.data > 0)
    extent = (index.max(0) - index.min(0) + 1) * volume.spacing
    extent[2] += 2 * 3.0  # one slice spacing on each side of the thick axis
    assert frame.scale_mm == np.float64(extent.max() * 1.2)
    centres = volume.voxel_centres_mm(volume.data > 0)
    normalised = frame.to_normalised(centres)
    assert np.abs(normalised).max() < 0.5


def test_encoder_grid_marks_observed_cells_and_their_labels():
    volume = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 4.0))
    config = ModelConfig(grid_size=16)
    case = make_case(volume, config)
    occupancy, observed = case.encoder_input
    assert 0 < observed.mean() < 1  # thick slices leave unobserved planes
    assert (occupancy[observed == 0] == 0).all()
    assert occupancy.max() == 1.0
    # Labels of the observed points are the mask's, and their extra input is the slice distance sign.
    assert set(np.unique(case.labels)) == {0.0, 1.0}
    inside_feature = case.points[case.labels == 1, 3]
    outside_feature = case.points[case.labels == 0, 3]
    assert (inside_feature <= 0).all() and (outside_feature >= 0).all()


def test_a_grid_stored_in_another_axis_order_is_given_in_world_axis_order_with_the_same_geometry():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    affine = np.array([[0.0, 0.0, -3.3, 10.0], [0.6, 0.0, 0.0, -5.0], [0.0, -0.6, 0.0, 2.0], [0, 0, 0, 1.0]])
    stored = Volume(data, affine)  # a sagittal series stored slice-last, two axes flipped
    ordered = in_world_axis_order(stored)
    assert ordered.is_axis_aligned and ordered.shape == (6, 4, 5)
    index = np.argwhere(np.ones(data.shape, bool))
    back = np.round(ordered.world_to_index(stored.index_to_world(index))).astype(int)
    assert np.allclose(ordered.world_to_index(stored.index_to_world(index)), back, atol=1e-6)
    assert (ordered.data[tuple(back.T)] == data[tuple(index.T)]).all()  # every voxel where it was in the world
    aligned = Volume(data, np.diag([1.0, 2.0, 3.0, 1.0]))
    assert in_world_axis_order(aligned) is aligned
    oblique = np.eye(4)
    oblique[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    assert in_world_axis_order(Volume(data, oblique)).shape == data.shape  # a true rotation stays as it is
