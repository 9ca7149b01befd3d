"""DICOM series in, DICOM-SEG in and out: series made with pydicom, segmentations with highdicom."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.dicom import read_series_datasets, write_dicom_seg
from napari_dropsembles.core.io.formats import can_read, is_dicom_folder, read_segments
from napari_dropsembles.core.io.segments import Segment
from napari_dropsembles.core.io.volumes import read_volume
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing
from tests.formats_support import (
    CENTRE_LPS,
    GEOMETRIES,
    assert_centre_within_half_voxel,
    centroid_index,
    lps_grid,
    ras,
    sphere_on,
    write_ct_series,
)


def _series(tmp_path, geometry: str):
    affine, shape = lps_grid(GEOMETRIES[geometry])
    data = sphere_on(affine, shape).astype(np.int32) * 1000  # stored 0 / 1000: -1024 HU outside, -24 inside
    folder = tmp_path / "ct"
    write_ct_series(folder, affine, data)
    return folder


@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
def test_dicom_series_folder_puts_the_sphere_at_its_world_position(tmp_path, geometry):
    folder = _series(tmp_path, geometry)
    assert is_dicom_folder(folder) and can_read(folder)
    volume = read_volume(folder)
    assert float(volume.data.min()) == -1024.0  # rescale slope / intercept applied
    assert_centre_within_half_voxel(volume, ras(CENTRE_LPS), mask=np.asarray(volume.data) > -500)
    one_file = read_volume(next(folder.iterdir()))  # one file of the series opens the whole series
    assert one_file.shape == volume.shape and np.allclose(one_file.affine, volume.affine)


def test_dicom_folder_without_dicom_and_single_slice_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    assert not is_dicom_folder(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown file type"):
        read_volume(tmp_path / "empty")
    affine, shape = lps_grid(np.eye(3), shape=(8, 8, 1))
    write_ct_series(tmp_path / "one", affine, np.zeros(shape, np.int32))
    with pytest.raises(InputError, match="single 2D DICOM image"):
        read_volume(tmp_path / "one")


def _two_spheres_seg(tmp_path, source_folder):
    """A DICOM-SEG made with highdicom: segments 'L1 vertebra' (red) and 'L2 vertebra' (green)."""
    datasets = read_series_datasets(source_folder)
    grid = hd.get_volume_from_series(datasets)
    labels = np.zeros(grid.spatial_shape, np.uint8)
    index = np.indices(grid.spatial_shape).reshape(3, -1).T
    lps = index @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    second = CENTRE_LPS + lps_grid(GEOMETRIES["oblique"])[0][:3, 1] * 10.7  # further along the rows, inside
    labels.ravel()[np.linalg.norm(lps - CENTRE_LPS, axis=1) <= 5.0] = 1
    labels.ravel()[np.linalg.norm(lps - second, axis=1) <= 3.0] = 2
    algorithm = hd.AlgorithmIdentificationSequence(name="test", family=codes.DCM.ArtificialIntelligence, version="1")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Vertebra,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        )
        for n, name, rgb in [(1, "L1 vertebra", (255, 0, 0)), (2, "L2 vertebra", (0, 255, 0))]
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=grid.with_array(labels),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=10,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    path = tmp_path / "seg.dcm"
    seg.save_as(str(path))
    return path, second


def test_dicom_seg_from_highdicom_keeps_segment_names_colours_and_positions(tmp_path):
    source = _series(tmp_path, "oblique")
    path, second = _two_spheres_seg(tmp_path, source)
    segmented = read_segments(path)
    assert segmented.names == {1: "L1 vertebra", 2: "L2 vertebra"}
    colors = segmented.colors()
    assert np.allclose(colors[1], (1, 0, 0), atol=0.02) and np.allclose(colors[2], (0, 1, 0), atol=0.02)
    labels = segmented.volume
    assert_centre_within_half_voxel(labels, ras(CENTRE_LPS), mask=np.asarray(labels.data) == 1)
    assert_centre_within_half_voxel(labels, ras(second), mask=np.asarray(labels.data) == 2)
    assert np.array_equal(np.unique(read_volume(path).data), [0, 1, 2])  # read_volume: the label map


@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
def test_written_dicom_seg_references_the_source_and_sits_on_the_sphere(tmp_path, geometry):
    """A reconstruction on its own isotropic RAS grid, written as DICOM-SEG on the CT's grid."""
    source = _series(tmp_path, geometry)
    centre = ras(CENTRE_LPS)
    grid = Volume(np.zeros((40, 40, 40), np.uint8), affine_from_spacing((0.7, 0.7, 0.7), centre - 0.7 * 19.5))
    inside = np.linalg.norm(grid.voxel_centres_mm() - centre, axis=1) <= 6.0
    labels = grid.with_data(inside.reshape(grid.shape).astype(np.uint8))
    path = write_dicom_seg(
        tmp_path / "out" / "segmentation.dcm", labels, source, [Segment(1, "vertebra", (0.9, 0.2, 0.1))]
    )
    seg = hd.seg.segread(str(path))
    source_uid = pydicom.dcmread(next(source.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
    assert seg.get_segment_description(1).segment_label == "vertebra"
    volume = seg.get_volume(combine_segments=True)
    expected = np.linalg.inv(volume.affine) @ np.append(CENTRE_LPS, 1.0)
    assert np.all(np.abs(centroid_index(volume.array) - expected[:3]) < 0.5)
    assert read_segments(path).names == {1: "vertebra"}


def test_probability_map_as_fractional_dicom_seg(tmp_path):
    source = _series(tmp_path, "anisotropic")
    centre = ras(CENTRE_LPS)
    grid = Volume(np.zeros((30, 30, 30), np.float32), affine_from_spacing((1.0, 1.0, 1.0), centre - 14.5))
    distance = np.linalg.norm(grid.voxel_centres_mm() - centre, axis=1).reshape(grid.shape)
    mean = grid.with_data((1.0 / (1.0 + np.exp(distance - 6.0))).astype(np.float32))
    path = write_dicom_seg(tmp_path / "probability.dcm", mean, source, fractional=True)
    seg = hd.seg.segread(str(path))
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    array = seg.get_volume(combine_segments=False).array
    assert 0.9 < float(array.max()) <= 1.0
    with pytest.raises(InputError, match="does not overlap"):
        far = Volume(np.asarray(mean.data), affine_from_spacing((1.0, 1.0, 1.0), centre + 500.0))
        write_dicom_seg(tmp_path / "far.dcm", far, source, fractional=True)


def test_napari_reader_opens_a_dicom_file_as_its_series(tmp_path):
    from napari_dropsembles._reader import get_reader

    folder = _series(tmp_path, "oblique")
    first = str(sorted(folder.iterdir())[0])
    reader = get_reader(first)
    assert reader is not None
    [(data, kwargs, kind)] = reader(first)
    assert kind == "image" and data.shape == (12, 26, 28)  # every slice of the series
    centre = np.asarray(kwargs["affine"]) @ np.append(centroid_index(data > -500), 1.0)
    assert np.linalg.norm(centre[:3] - ras(CENTRE_LPS)) < 0.4


def test_multiframe_enhanced_ct_is_read_as_one_volume(tmp_path):
    """One multi-frame file (highdicom's legacy-converted enhanced CT of the series)."""
    datasets = read_series_datasets(_series(tmp_path, "oblique"))
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets,
        series_instance_uid=hd.UID(),
        series_number=4,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(str(tmp_path / "enhanced" / "ct.dcm"))
    volume = read_volume(tmp_path / "enhanced")
    assert volume.shape == (12, 26, 28)
    assert_centre_within_half_voxel(volume, ras(CENTRE_LPS), mask=np.asarray(volume.data) > -500)


def _own_plugin_manager():
    """An npe2 PluginManager holding only this plugin's manifest (what napari indexes at start-up)."""
    from npe2 import PluginManager, PluginManifest

    from tests.gui_support import ROOT

    manager = PluginManager()
    manager.register(PluginManifest.from_file(ROOT / "napari.yaml"))
    manager.activate("napari-dropsembles")  # registers its commands, as napari does on first use
    return manager


def test_dicom_folder_opens_through_npe2_with_its_dicom_seg_and_other_folders_are_refused(tmp_path):
    """Drag-and-drop / File > Open Folder: npe2 hands a folder to readers with ``accepts_directories``;
    a folder with a CT series and a DICOM-SEG opens as an Image and a named Labels layer, both in place."""
    from npe2 import io_utils

    from napari_dropsembles._reader import get_reader

    source = _series(tmp_path, "oblique")
    seg_path, second = _two_spheres_seg(tmp_path, source)
    seg_path.rename(source / "seg.dcm")  # the segmentation beside its series
    manager = _own_plugin_manager()
    readers = list(manager.iter_compatible_readers([str(source)]))
    assert [r.command for r in readers] == ["napari-dropsembles.get_reader"] and readers[0].accepts_directories
    layers = io_utils._read([str(source)], stack=False, plugin_name="napari-dropsembles", _pm=manager)
    assert [(kind, kwargs["name"]) for _, kwargs, kind in layers] == [("image", "ct"), ("labels", "seg")]
    (image, image_kwargs, _), (labels, label_kwargs, _) = layers
    assert image.shape == (12, 26, 28) and float(image.min()) == -1024.0  # every slice, rescaled
    image_centre = np.asarray(image_kwargs["affine"]) @ np.append(centroid_index(image > -500), 1.0)
    assert np.linalg.norm(image_centre[:3] - ras(CENTRE_LPS)) < 0.4
    assert label_kwargs["metadata"]["label_names"] == {1: "L1 vertebra", 2: "L2 vertebra"}
    assert label_kwargs["features"]["name"] == ["L1 vertebra", "L2 vertebra"]
    label_affine = np.asarray(label_kwargs.get("affine", image_kwargs["affine"]))
    for label, centre in [(1, CENTRE_LPS), (2, second)]:
        found = label_affine @ np.append(centroid_index(labels == label), 1.0)
        assert np.linalg.norm(found[:3] - ras(centre)) < 0.4, label

    only_seg = tmp_path / "segs"  # a folder holding a DICOM-SEG alone: its Labels layer
    only_seg.mkdir()
    (source / "seg.dcm").rename(only_seg / "seg.dcm")
    [(_, kwargs, kind)] = get_reader(str(only_seg))(str(only_seg))
    assert kind == "labels" and kwargs["metadata"]["label_names"][2] == "L2 vertebra"

    other = tmp_path / "notes"  # any other folder: None, so that napari tries its other readers
    other.mkdir()
    (other / "a.txt").write_text("no images")
    (other / "b.nii.gz").write_bytes(b"")
    assert get_reader(str(other)) is None
    (tmp_path / "folder.zarr").mkdir()  # named like a zarr store but not one
    assert get_reader(str(tmp_path / "folder.zarr")) is None
    with pytest.raises(ValueError, match="refused"):
        io_utils._read([str(other)], stack=False, plugin_name="napari-dropsembles", _pm=manager)


def test_ome_zarr_folder_opens_through_npe2(tmp_path):
    from npe2 import io_utils

    from napari_dropsembles.core.io.volumes import write_volume
    from tests.formats_support import lps_sphere_volume

    path = write_volume(tmp_path / "obs.ome.zarr", lps_sphere_volume("anisotropic"), dtype=None)
    [(data, kwargs, kind)] = io_utils._read(
        [str(path)], stack=False, plugin_name="napari-dropsembles", _pm=_own_plugin_manager()
    )
    assert kind == "labels" and kwargs["name"] == "obs" and data.shape == (28, 26, 12)
