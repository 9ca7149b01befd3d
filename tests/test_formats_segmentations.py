"""Slicer segmentations (.seg.nrrd): segment names and colours in, out, and as structure names in napari."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest

from napari_dropsembles._reader import get_reader
from napari_dropsembles._writer import write_labels
from napari_dropsembles.core.errors import InputError
from napari_dropsembles.core.formats import LPS_TO_RAS, find_segment, read_segments
from napari_dropsembles.core.formats.nrrd import write_seg_nrrd
from napari_dropsembles.core.formats.segments import Segment
from napari_dropsembles.core.io import read_volume
from napari_dropsembles.core.structures import structure_masks
from napari_dropsembles.core.volume import Volume

from .formats_support import CENTRE_LPS, GEOMETRIES, assert_centre_within_half_voxel, lps_grid, ras, sphere_on

SECOND_OFFSET_VOXELS = 10.7  # the second sphere, further along the grid's second axis


def _two_spheres(geometry: str = "oblique"):
    affine, shape = lps_grid(GEOMETRIES[geometry])
    second = CENTRE_LPS + affine[:3, 1] * SECOND_OFFSET_VOXELS
    first_mask = sphere_on(affine, shape, radius=5.0)
    second_mask = sphere_on(affine, shape, centre_lps=second, radius=3.0)
    return affine, shape, first_mask, second_mask, second


def _slicer_header(affine_lps: np.ndarray, segments: list[tuple[str, str, int, int]], layered: bool) -> dict:
    """The header Slicer 5 writes for a segmentation (fields as in its .seg.nrrd files)."""
    directions = affine_lps[:3, :3].T
    header = {
        "space": "left-posterior-superior",
        "space directions": np.vstack([np.full(3, np.nan), directions]) if layered else directions,
        "space origin": affine_lps[:3, 3],
        "kinds": (["list"] if layered else []) + ["domain"] * 3,
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|Closed surface|",
    }
    for n, (name, color, layer, value) in enumerate(segments):
        header.update(
            {
                f"Segment{n}_ID": f"Segment_{n + 1}",
                f"Segment{n}_Name": name,
                f"Segment{n}_Color": color,
                f"Segment{n}_Layer": str(layer),
                f"Segment{n}_LabelValue": str(value),
                f"Segment{n}_Extent": "0 27 0 25 0 11",
                f"Segment{n}_Tags": "Segmentation.Status:inprogress|",
            }
        )
    return header


@pytest.fixture
def slicer_seg(tmp_path):
    """A one-layer Slicer segmentation made with pynrrd: 'L1 vertebra' (value 3), 'L2 vertebra' (value 7)."""
    affine, _shape, first, second, second_centre = _two_spheres()
    labels = first * 3 + second * 7
    header = _slicer_header(affine, [("L1 vertebra", "0.9 0.1 0.1", 0, 3), ("L2 vertebra", "0.1 0.8 0.2", 0, 7)], False)
    path = tmp_path / "Segmentation.seg.nrrd"
    nrrd.write(str(path), labels.astype(np.uint8), header)
    return path, second_centre


def test_slicer_segmentation_keeps_names_colours_labels_and_positions(slicer_seg):
    path, second_centre = slicer_seg
    segmented = read_segments(path)
    assert segmented.names == {3: "L1 vertebra", 7: "L2 vertebra"}
    assert segmented.colors() == {3: (0.9, 0.1, 0.1), 7: (0.1, 0.8, 0.2)}
    labels = segmented.volume
    assert_centre_within_half_voxel(labels, ras(CENTRE_LPS), mask=np.asarray(labels.data) == 3)
    assert_centre_within_half_voxel(labels, ras(second_centre), mask=np.asarray(labels.data) == 7)
    assert sorted(structure_masks(read_volume(path))) == [3, 7]  # read_volume: the label map
    assert find_segment(path, "l2 VERTEBRA").label == 7
    with pytest.raises(InputError, match="no segment named 'L3'.*'L1 vertebra'"):
        find_segment(path, "L3")


def test_layered_slicer_segmentation_with_overlap_becomes_one_label_map(tmp_path):
    affine, shape, first, second, second_centre = _two_spheres()
    overlapping = sphere_on(affine, shape, radius=4.0)  # overlaps 'L1': Slicer stores it in a second layer
    layers = np.stack([first + 2 * second, overlapping]).astype(np.uint8)
    header = _slicer_header(
        affine,
        [("L1", "1 0 0", 0, 1), ("L2", "0 1 0", 0, 2), ("canal", "0 0 1", 1, 1)],
        layered=True,
    )
    nrrd.write(str(tmp_path / "layered.seg.nrrd"), layers, header)
    segmented = read_segments(tmp_path / "layered.seg.nrrd")
    assert segmented.names == {1: "L1", 2: "L2", 3: "canal"}  # label values clash across layers: renumbered
    data = np.asarray(segmented.volume.data)
    assert_centre_within_half_voxel(segmented.volume, ras(second_centre), mask=data == 2)
    assert np.count_nonzero(data == 3) == np.count_nonzero(overlapping)  # the later segment wins its overlap
    assert_centre_within_half_voxel(segmented.volume, ras(CENTRE_LPS), mask=(data == 1) | (data == 3))


@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
def test_written_segmentation_has_slicer_fields_and_lps_geometry(tmp_path, geometry):
    affine, _shape, first, second, second_centre = _two_spheres(geometry)
    labels = Volume((first + 2 * second).astype(np.uint8), LPS_TO_RAS @ affine)
    segments = (Segment(1, "L1 vertebra", (0.9, 0.1, 0.1)), Segment(2, "L2 vertebra"))
    path = write_seg_nrrd(tmp_path / "out.seg.nrrd", labels, segments)
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    assert np.allclose(header["space directions"], affine[:3, :3].T) and np.allclose(
        header["space origin"], affine[:3, 3]
    )
    assert header["Segment0_Name"] == "L1 vertebra" and header["Segment1_Name"] == "L2 vertebra"
    assert header["Segment0_Color"] == "0.9 0.1 0.1" and header["Segment1_LabelValue"] == "2"
    lo = np.argwhere(data == 1).min(axis=0)
    assert header["Segment0_Extent"].split()[::2] == [str(v) for v in lo]
    back = read_segments(path)
    assert back.names == {1: "L1 vertebra", 2: "L2 vertebra"}
    assert_centre_within_half_voxel(back.volume, ras(second_centre), mask=np.asarray(back.volume.data) == 2)
    with pytest.raises(InputError, match="integer labels"):
        write_seg_nrrd(tmp_path / "p.seg.nrrd", labels.with_data(np.full(labels.shape, 0.5, np.float32)))


def test_napari_reader_names_structures_and_colours_labels(slicer_seg):
    path, _ = slicer_seg
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "labels" and kwargs["name"] == "Segmentation"
    assert kwargs["metadata"]["label_names"] == {3: "L1 vertebra", 7: "L2 vertebra"}
    assert kwargs["features"] == {"index": [3, 7], "name": ["L1 vertebra", "L2 vertebra"]}
    assert kwargs["colormap"][3] == (0.9, 0.1, 0.1, 1.0)
    assert np.array_equal(np.unique(data), [0, 3, 7])


def test_structure_table_names_come_from_the_segmentation(slicer_seg):
    """The Reconstruct widget names its table rows with label_names() of the input layer."""
    from napari.layers import Labels

    from napari_dropsembles._gui.layers import label_colours, label_names

    path, _ = slicer_seg
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    layer = Labels(data, **kwargs)
    assert label_names(layer) == {3: "L1 vertebra", 7: "L2 vertebra"}
    assert np.allclose(label_colours(layer, [3])[3], (0.9, 0.1, 0.1, 1.0))


def test_labels_layer_saved_as_seg_nrrd_keeps_names_and_colours(tmp_path, slicer_seg):
    from napari.layers import Labels

    path, _ = slicer_seg
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    layer = Labels(data, **kwargs)
    [written] = write_labels(str(tmp_path / "saved.seg.nrrd"), layer.data, layer._get_state())
    back = read_segments(written)
    assert back.names == {3: "L1 vertebra", 7: "L2 vertebra"}
    assert np.allclose(back.colors()[7], (0.1, 0.8, 0.2), atol=1e-3)
    assert np.allclose(back.volume.affine, read_volume(path).affine, atol=1e-5)
