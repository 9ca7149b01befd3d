"""Structures named for a user's own label maps (issue 23): the file's own names first, then the known tables
of TotalSegmentator and VerSe when the map agrees with one, nothing otherwise; a distinct colour per label."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles._reader import read_layers
from napari_dropsembles.core.io.volumes import write_volume
from napari_dropsembles.core.volumes.label_tables import describe_labels, known_names
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

from . import gui_support
from .gui_support import requires_gui

tiny_prior_path = gui_support.tiny_prior_path  # fixture


def spine(labels_head_to_feet, spacing=(3.0, 3.0, 3.0), step_mm=30.0) -> Volume:
    """Boxes stacked along the superior axis (RAS z), the first label at the top, ``step_mm`` apart."""
    count = len(labels_head_to_feet)
    shape = (16, 16, int(round(step_mm / spacing[2])) * count + 4)
    data = np.zeros(shape, np.uint8)
    per = int(round(step_mm / spacing[2]))
    for rank, label in enumerate(labels_head_to_feet):
        top = shape[2] - 2 - rank * per
        data[4:12, 4:12, top - per + 2 : top] = label
    return Volume(data, affine_from_spacing(spacing, (0.0, 0.0, 0.0)))


def test_totalsegmentator_v1_numbers_are_named_when_stacked_its_way():
    table, names = known_names(spine([23, 22, 21, 20]))  # v1: T12, L1, L2, L3 from head to feet
    assert table == "TotalSegmentator v1" and names == {20: "L3", 21: "L2", 22: "L1", 23: "T12"}


def test_verse_numbers_are_named_when_stacked_its_way():
    table, names = known_names(spine([19, 20, 21, 22]))  # VerSe: T12, L1, L2, L3 from head to feet
    assert table == "VerSe" and names == {19: "T12", 20: "L1", 21: "L2", 22: "L3"}


def test_totalsegmentator_v2_numbers_are_named_with_their_organs():
    volume = spine([31, 30, 29])  # v2: L1, L2, L3 (v1 would read T4, T5, T6: the organs below rule it out)
    data = np.array(volume.data)
    data[0:3, 0:3, 0:3] = 5  # liver
    data[13:16, 0:3, 0:3] = 18  # small bowel and colon side by side: v1's L5 and L3 cannot be level
    data[13:16, 13:16, 0:3] = 20
    table, names = known_names(volume.with_data(data))
    assert table == "TotalSegmentator v2"
    assert names == {5: "liver", 18: "small bowel", 20: "colon", 29: "L3", 30: "L2", 31: "L1"}
    assert known_names(volume)[0] == ""  # the vertebrae alone fit v1 and v2 alike: no guess


@pytest.mark.parametrize(
    "labels",
    [
        [2, 3, 4, 5, 6, 7, 8, 26],  # an MRI instance map (discs at 102+, endplates at 202+ elsewhere): no table fits
        [22],  # one drawn structure: nothing to tell the tables apart
        [1, 2],  # two labels: too little to believe any table
        [3, 1, 2],  # stacked out of every table's order
    ],
)
def test_maps_that_agree_with_no_table_stay_unnamed(labels):
    assert known_names(spine(labels)) == ("", {})
    assert known_names(spine([20, 21, 22, 102])) == ("", {})  # a label no table has


def test_neighbours_get_colours_far_apart():
    colours = describe_labels(spine([23, 22, 21, 20])).colours
    for upper, lower in ((23, 22), (22, 21), (21, 20)):
        assert np.linalg.norm(np.subtract(colours[upper], colours[lower])) > 0.4


def test_the_reader_names_a_label_map_from_its_own_extension_first(tmp_path):
    import nibabel

    volume = spine([23, 22, 21, 20])
    path = tmp_path / "segmentation.nii.gz"
    image = nibabel.Nifti1Image(np.asarray(volume.data), volume.affine)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><CaretExtension><VolumeInformation Index="0"><LabelTable>'
        '<Label Key="22" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[first lumbar]]></Label>'
        '<Label Key="21" Red="0" Green="1" Blue="0" Alpha="1"><![CDATA[second lumbar]]></Label>'
        "</LabelTable></VolumeInformation></CaretExtension>"
    )
    image.header.extensions.append(nibabel.nifti1.Nifti1Extension(0, xml.encode()))
    nibabel.save(image, path)
    _data, kwargs, layer_type = read_layers(str(path))[0]
    assert layer_type == "labels" and kwargs["metadata"]["label_names_from"] == "file"
    assert kwargs["metadata"]["label_names"] == {22: "first lumbar", 21: "second lumbar"}
    assert kwargs["colormap"][22] == (1.0, 0.0, 0.0, 1.0)
    plain = write_volume(tmp_path / "plain.nii.gz", volume, dtype=np.uint8)  # no extension: the known table
    _data, kwargs, _type = read_layers(str(plain))[0]
    assert kwargs["metadata"]["label_names"] == {20: "L3", 21: "L2", 22: "L1", 23: "T12"}
    assert len({kwargs["colormap"][label] for label in (20, 21, 22, 23)}) == 4


@requires_gui
@pytest.mark.gui
def test_the_dock_and_its_table_name_the_structures(make_napari_viewer, tmp_path, tiny_prior_path, monkeypatch):
    monkeypatch.setenv("DROPSEMBLES_SYNC_WORKERS", "1")
    gui_support.register_plugin()
    viewer = make_napari_viewer()
    volume = spine([23, 22, 21, 20])
    data = np.array(volume.data)
    for index in np.nonzero((data == 22).any(axis=(0, 1)))[0][1::2]:  # L1 drawn on every 2nd slice: a note on it
        data[:, :, index][data[:, :, index] == 22] = 0
    path = write_volume(tmp_path / "seg.nii.gz", volume.with_data(data), dtype=np.uint8)
    [layer] = viewer.open(str(path), plugin="napari-dropsembles")
    widget = gui_support.open_widget(viewer)
    gui_support.tiny_settings(widget, tiny_prior_path)
    widget.input.value = layer
    texts = [widget.label.native.itemText(i) for i in range(widget.label.native.count())]
    assert "L1 (22)" in texts and "T12 (23)" in texts and widget.label.value == "each"
    widget.run()
    assert [widget.table.item(row, 0).text() for row in range(4)] == ["L3", "L2", "L1", "T12"]
    notes = widget.notes_info.text()
    assert "• L1: " in notes  # each structure's notes carry its name
    widget.table.item(2, 0).setText("L1 (fractured)")  # renamed: the notes and mesh layers follow
    assert any(name.endswith("mesh L1 (fractured)") for name in (layer.name for layer in viewer.layers))
    notes = widget.notes_info.text()
    assert "• L1 (fractured): " in notes and "• L1: " not in notes
