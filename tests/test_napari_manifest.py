"""The npe2 manifest, the reader, the writers and the sample data (no display needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles._reader import get_reader
from napari_dropsembles._writer import write_image, write_surface
from napari_dropsembles.core.io.meshes import read_mesh
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

from .gui_support import ROOT

pytest.importorskip("npe2")


def test_manifest_validates_with_npe2():
    """``npe2 validate napari.yaml --imports``, run in-process (the CLI itself, through typer)."""
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", str(ROOT / "napari.yaml"), "--imports"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_manifest_declares_reader_writers_samples_widgets_and_menu():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    contributions = manifest.contributions
    patterns = set(contributions.readers[0].filename_patterns)
    assert {"*.nii", "*.nii.gz", "*.tif", "*.tiff", "*.npy"} <= patterns
    writers = {(tuple(w.layer_types), tuple(w.filename_extensions)) for w in contributions.writers}
    assert (("surface",), (".ply", ".obj", ".stl")) in writers
    assert any(types == ("image",) and ".nii.gz" in ext for types, ext in writers)
    assert [s.key for s in contributions.sample_data] == ["vertebra", "lumbar_mri"]
    assert [w.display_name for w in contributions.widgets] == [
        "Reconstruct with uncertainty", "Train a prior", "Evaluate against ground truth", "Batch (cohort)",
    ]
    menu = manifest.contributions.menus["napari/layers/segment"]
    assert menu[0].command == "napari-dropsembles.reconstruct_selected_layer"


def _read(path):
    reader = get_reader(str(path))
    assert reader is not None
    return reader(str(path))


def test_reader_opens_a_segmentation_as_labels_and_an_intensity_volume_as_image(tmp_path):
    affine = affine_from_spacing((0.8, 0.8, 3.0), (10.0, -20.0, 5.0))
    seg = np.zeros((12, 10, 6), np.uint8)
    seg[3:8, 2:7, 1:4] = 1
    seg[8:10, 2:4, 1:3] = 2
    intensity = np.random.default_rng(0).normal(100, 20, (12, 10, 6)).astype(np.float32)
    write_volume(tmp_path / "seg.nii.gz", Volume(seg, affine), dtype=np.uint8)
    write_volume(tmp_path / "ct.nii", Volume(intensity, affine))
    np.save(tmp_path / "mask.npy", seg > 0)

    [(data, kwargs, kind)] = _read(tmp_path / "seg.nii.gz")
    assert kind == "labels" and np.array_equal(data, seg)
    assert np.allclose(kwargs["scale"], (0.8, 0.8, 3.0)) and np.allclose(kwargs["translate"], (10.0, -20.0, 5.0))
    assert kwargs["name"] == "seg"
    [(data, kwargs, kind)] = _read(tmp_path / "ct.nii")
    assert kind == "image" and np.allclose(data, intensity)
    [(data, _kwargs, kind)] = _read(tmp_path / "mask.npy")
    assert kind == "labels" and data.sum() == (seg > 0).sum()
    assert get_reader(str(tmp_path / "notes.txt")) is None


def test_reader_refuses_a_2d_array_with_a_clear_message(tmp_path):
    np.save(tmp_path / "slice.npy", np.ones((5, 5)))
    with pytest.raises(ValueError, match="3D"):
        _read(tmp_path / "slice.npy")


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".stl"])
def test_surface_writer_round_trips_in_world_mm(tmp_path, suffix):
    vertices = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    values = np.array([0.0, 0.1, 0.2, 0.3], np.float32)
    meta = {"scale": (1.0, 2.0, 3.0), "translate": (5.0, 6.0, 7.0), "name": "mesh"}
    [written] = write_surface(str(tmp_path / f"mesh{suffix}"), (vertices, faces, values), meta)
    mesh = read_mesh(written)
    expected = vertices * np.array([1.0, 2.0, 3.0]) + np.array([5.0, 6.0, 7.0])
    got = mesh.vertices_mm[np.lexsort(mesh.vertices_mm.T)]
    assert np.allclose(got, expected[np.lexsort(expected.T)], atol=1e-4)
    if suffix == ".ply":
        assert np.allclose(mesh.vertex_values, values)


@pytest.mark.parametrize("kind", ["image", "labels"])
def test_image_writer_keeps_the_layer_frame(tmp_path, kind):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    if kind == "labels":
        data = (data % 3).astype(np.uint8)
    meta = {"scale": (0.5, 0.7, 2.5), "translate": (-3.0, 4.0, 12.0), "name": kind}
    [written] = write_image(str(tmp_path / f"{kind}.nii.gz"), data, meta)
    volume = read_volume(written)
    assert np.allclose(volume.data, data)
    assert np.allclose(volume.spacing, (0.5, 0.7, 2.5)) and np.allclose(volume.origin, (-3.0, 4.0, 12.0))


def test_image_writer_applies_a_layer_affine_after_scale_and_translate(tmp_path):
    meta = {"scale": (1.0, 2.0, 3.0), "translate": (1.0, 1.0, 1.0), "affine": np.diag([2.0, 1.0, 1.0, 1.0])}
    [written] = write_image(str(tmp_path / "a.nii.gz"), np.ones((2, 3, 4), np.float32), meta)
    volume = read_volume(written)
    assert np.allclose(volume.spacing, (2.0, 2.0, 3.0)) and np.allclose(volume.origin, (2.0, 1.0, 1.0))


def test_sample_data_gives_an_observation_and_its_ground_truth_offline():
    from napari_dropsembles._sample_data import sample_vertebra

    observation, truth = sample_vertebra()
    assert observation[2] == "labels" and truth[2] == "labels"
    assert observation[0].ndim == 3 and truth[0].ndim == 3
    assert max(observation[1]["scale"]) > min(truth[1]["scale"])  # the observation is the low-resolution one
    assert truth[1]["visible"] is False


def test_the_mri_sample_is_the_real_lumbar_segmentation_with_thick_sagittal_slices():
    from napari_dropsembles._sample_data import sample_lumbar_mri

    [(data, meta, kind)] = sample_lumbar_mri()
    assert kind == "labels" and data.ndim == 3
    assert set(np.unique(data)) == {0, 18, 19, 20, 21, 22, 23, 24, 26}  # T11-L5 and the sacrum (VerSe numbers)
    # stored slice-first with flipped axes; given to napari in world axis order (a permuted affine made
    # napari 0.9 abort while drawing: "Singular matrix"), so the frame is a plain scale and translation
    assert "affine" not in meta and data.shape == (17, 174, 512)
    assert np.allclose(meta["scale"], (3.3, 0.5859, 0.5859), atol=1e-3)  # thick slices: 3.3 mm against 0.59 mm
