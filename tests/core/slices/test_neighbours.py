"""Where a point lies between observed slices: the calibration head's view of the slices."""

from __future__ import annotations

import numpy as np

from napari_dropsembles.core.slices.neighbours import neighbour_slices
from napari_dropsembles.core.slices.slice_field import SliceDistanceField
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing


def _slab_volume(radii=(3, 5, 7, 9, 11), spacing=(1.0, 1.0, 4.0), holes=()) -> Volume:
    """Discs growing slice by slice along the thick axis (one disc per slice, radius in voxels)."""
    data = np.zeros((30, 30, len(radii)), dtype=np.uint8)
    yy, xx = np.mgrid[:30, :30]
    for k, r in enumerate(radii):
        if k not in holes:
            data[..., k] = (yy - 15) ** 2 + (xx - 15) ** 2 <= r**2
    return Volume(data, affine_from_spacing(np.array(spacing), np.zeros(3)))


def test_a_point_on_a_slice_reads_that_slice_and_its_neighbours():
    volume = _slab_volume()
    field = SliceDistanceField(volume)
    centre = volume.index_to_world(np.array([[15.0, 15.0, 2.0]]))
    slices = neighbour_slices(field, centre)
    assert slices.t[0] == 0.0
    assert slices.gap_mm[0] == 4.0
    # second below, below (the slice itself), above, second above: discs of radius 3, 5, 7, 9 -> -5 ... -9 mm
    below_2, below, above, above_2 = slices.distances_mm[:, 0]
    assert below_2 > below > above > above_2
    assert np.isclose(below, field.at_index(np.array([[15.0], [15.0], [2.0]]))[0])


def test_between_slices_t_is_the_fraction_of_the_gap():
    volume = _slab_volume()
    field = SliceDistanceField(volume)
    points = volume.index_to_world(np.array([[15.0, 15.0, 1.25], [15.0, 15.0, 1.5], [15.0, 15.0, 1.75]]))
    slices = neighbour_slices(field, points)
    assert np.allclose(slices.t, [0.25, 0.5, 0.75])
    assert np.allclose(slices.gap_mm, 4.0)


def test_a_slice_read_as_not_annotated_is_skipped():
    volume = _slab_volume(holes=(2,))  # an empty slice between labelled ones: not annotated by default
    field = SliceDistanceField(volume)
    point = volume.index_to_world(np.array([[15.0, 15.0, 2.0]]))
    slices = neighbour_slices(field, point)
    assert np.isclose(slices.t[0], 0.5)  # halfway between slices 1 and 3
    assert np.isclose(slices.gap_mm[0], 8.0)
