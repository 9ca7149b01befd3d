"""Slicer segmentations (.seg.nrrd): segment names and colours in, out, and as structure names in napari."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest

from napari_dropsembles._reader import get_reader
from napari_dropsembles._writer import write_labels
from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.formats import find_segment, read_segments
from napari_dropsembles.core.io.lps import LPS_TO_RAS
from napari_dropsembles.core.io.nrrd import write_seg_nrrd
from napari_dropsembles.core.io.segments import Segment
from napari_dropsembles.core.io.volumes import read_volume
from napari_dropsembles.core.volumes.masks import structure_masks
from napari_dropsembles.core.volumes.volume import Volume
from tests.formats_support import (
    CENTRE_LPS,
    GEOMETRIES,
    SPACING,
    assert_centre_within_half_voxel,
    lps_grid,
    ras,
    sphere_on,
)

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


# ----------------------------------------------------------------- what 3D Slicer needs of a .seg.nrrd
# Slicer itself is not run here. Its reader is vtkMRMLSegmentationStorageNode::ReadBinaryLabelmapRepresentation
# (Slicer/Slicer, Libs/MRML/Core/vtkMRMLSegmentationStorageNode.cxx): ITK's NRRD reader gives it the image
# and the key:=value dictionary; segments are counted while Segment{N}_ID exists; each segment's binary
# labelmap is the voxels equal to its LabelValue in component Layer, cropped to its Extent (+ the
# Segmentation_ReferenceImageExtentOffset); a Segmentation_Extent key marks a legacy file it reads otherwise.
# _slicer_reads transcribes those rules, with SimpleITK (the same ITK NRRD reader) reading the dictionary.

SLICER_SEGMENT_KEYS = {
    "ID",
    "Name",
    "Color",
    "ColorAutoGenerated",
    "NameAutoGenerated",
    "Extent",
    "Tags",
    "LabelValue",
    "Layer",
}  # what WriteBinaryLabelmapRepresentation writes per segment
SLICER_SEGMENTATION_KEYS = {
    "MasterRepresentation",
    "ContainedRepresentationNames",
    "ReferenceImageExtentOffset",
    "ConversionParameters",
}  # ConversionParameters: read only when present


def _ints(text: str, n: int) -> list[int]:
    values = [int(v) for v in text.split()]
    assert len(values) == n, text
    return values


def _slicer_reads(path) -> dict:
    """The segmentation Slicer's reader builds from ``path``:
    name -> (colour, label value, layer, voxel count, LPS centroid or None)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    keys = set(image.GetMetaDataKeys())
    meta = {k: image.GetMetaData(k) for k in keys}
    assert "Segmentation_Extent" not in keys  # else Slicer takes the legacy path
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    names = meta["Segmentation_ContainedRepresentationNames"]
    assert names.endswith("|") and "Binary labelmap" in names.split("|")  # Slicer only reads names followed by '|'
    offset = _ints(meta["Segmentation_ReferenceImageExtentOffset"], 3)
    frames = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayFromImage(image)  # (k, j, i[, component])
    array = array.reshape(*array.shape[:3], frames).transpose(2, 1, 0, 3)  # (i, j, k, component)
    size = array.shape[:3]
    count = 0
    while f"Segment{count}_ID" in keys:
        count += 1
    assert count and not any(k.startswith(f"Segment{count}_") for k in keys)  # numbered 0..N-1 without a gap
    segments = {}
    ids = set()
    for n in range(count):
        own = {k.split("_", 1)[1] for k in keys if k.startswith(f"Segment{n}_")}
        assert own == SLICER_SEGMENT_KEYS, own ^ SLICER_SEGMENT_KEYS
        ids.add(meta[f"Segment{n}_ID"])
        color = tuple(float(v) for v in meta[f"Segment{n}_Color"].split())
        assert len(color) == 3 and all(0.0 <= c <= 1.0 for c in color)
        assert meta[f"Segment{n}_NameAutoGenerated"] in ("0", "1")
        assert meta[f"Segment{n}_ColorAutoGenerated"] in ("0", "1")
        tags = [t for t in meta[f"Segment{n}_Tags"].split("|") if t]
        assert all(":" in t for t in tags)  # key:value|...; an empty list is '|' or ''
        layer, label = int(meta[f"Segment{n}_Layer"]), int(meta[f"Segment{n}_LabelValue"])
        assert 0 <= layer < frames
        extent = np.array(_ints(meta[f"Segment{n}_Extent"], 6)).reshape(3, 2) + np.array(offset)[:, None]
        inside = array[..., layer] == label
        if inside.any():
            assert np.all(extent[:, 0] >= 0) and np.all(extent[:, 1] < size), (extent, size)
            found = np.argwhere(inside)  # every voxel of the segment inside its extent: nothing cropped away
            assert np.all(found.min(axis=0) >= extent[:, 0]) and np.all(found.max(axis=0) <= extent[:, 1])
        else:
            assert np.any(extent[:, 0] > extent[:, 1])  # an empty segment has an empty extent
        lps = None
        if inside.any():
            centroid = [float(c) for c in np.argwhere(inside).mean(axis=0)]
            lps = np.asarray(image.TransformContinuousIndexToPhysicalPoint(centroid))
        segments[meta[f"Segment{n}_Name"]] = (color, label, layer, int(inside.sum()), lps)
    assert len(ids) == count  # segment IDs are unique
    extra = {k.split("_", 1)[1] for k in keys if k.startswith("Segmentation_")} - SLICER_SEGMENTATION_KEYS
    assert not extra, extra
    return segments


def test_slicer_reader_rules_hold_for_a_file_shaped_as_slicer_writes_it(tmp_path):
    """The transcription checked on a two-layer file with Slicer's own field set (as in .seg.nrrd files
    Slicer 5 writes: 4D 'list domain domain domain', a segment per layer, label values reused)."""
    affine, shape, first, second, second_centre = _two_spheres()
    overlapping = sphere_on(affine, shape, radius=4.0)
    header = _slicer_header(affine, [("L1", "1 0 0", 0, 1), ("L2", "0 1 0", 0, 2), ("canal", "0 0 1", 1, 1)], True)
    for n in range(3):
        header[f"Segment{n}_NameAutoGenerated"] = "0"
        header[f"Segment{n}_ColorAutoGenerated"] = "1"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    path = tmp_path / "slicer_shaped.seg.nrrd"
    nrrd.write(str(path), np.stack([first + 2 * second, overlapping]).astype(np.uint8), header)
    seen = _slicer_reads(path)
    assert set(seen) == {"L1", "L2", "canal"} and seen["canal"][1:3] == (1, 1)
    assert np.linalg.norm(seen["L2"][4] - second_centre) < 0.5 * SPACING.min()


@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
def test_our_seg_nrrd_meets_every_rule_of_slicers_reader(tmp_path, geometry):
    affine, _shape, first, second, second_centre = _two_spheres(geometry)
    labels = Volume((first * 4 + second * 9).astype(np.uint8), LPS_TO_RAS @ affine)
    segments = (Segment(4, "L1 vertebra", (0.9, 0.1, 0.1)), Segment(9, "L2 vertebra"), Segment(12, "absent"))
    path = write_seg_nrrd(tmp_path / "ours.seg.nrrd", labels, segments)
    seen = _slicer_reads(path)
    assert list(seen) == ["L1 vertebra", "L2 vertebra", "absent"]
    assert seen["L1 vertebra"][:4] == ((0.9, 0.1, 0.1), 4, 0, int(first.sum()))
    assert seen["L2 vertebra"][1:4] == (9, 0, int(second.sum()))
    assert seen["absent"][3] == 0  # kept as an empty segment with an empty extent
    half_voxel = 0.5 * SPACING.min()  # the ITK (LPS) position of each segment, as Slicer places it
    assert np.linalg.norm(seen["L1 vertebra"][4] - CENTRE_LPS) < half_voxel
    assert np.linalg.norm(seen["L2 vertebra"][4] - second_centre) < half_voxel
    raw = path.read_bytes().split(b"\n\n", 1)[0].decode("latin-1")  # custom fields as NRRD key/value pairs
    assert "Segment0_Name:=L1 vertebra" in raw and "Segmentation_MasterRepresentation:=Binary labelmap" in raw
    assert "space: left-posterior-superior" in raw and "kinds: domain domain domain" in raw
