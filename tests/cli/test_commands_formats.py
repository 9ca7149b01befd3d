"""``reconstruct`` reads the clinical formats and writes its outputs by ``--format`` or the input's family."""

from __future__ import annotations

import json

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import vtk
from vtkmodules.util import numpy_support

from napari_dropsembles.cli import main
from napari_dropsembles.core.io.formats import read_segments
from napari_dropsembles.core.io.lps import LPS_TO_RAS
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.networks.checkpoint import save_prior
from napari_dropsembles.core.results.folder import read_reconstruction
from napari_dropsembles.core.volumes.volume import Volume
from tests.formats_support import CENTRE_LPS, GEOMETRIES, lps_grid, sphere_on, write_ct_series

FAST = ["--steps", "5", "--resolution", "2", "--device", "cpu", "--quiet", "--members", "2"]
NEAR_MM = 3.0  # a reconstruction from a tiny prior, but a mirrored axis would be off by 2 x 12-25 mm


@pytest.fixture
def prior_path(tmp_path, ellipsoid_prior):
    return save_prior(ellipsoid_prior, tmp_path / "prior.safetensors")


def _lps_centroid(image: sitk.Image, level: float) -> np.ndarray:
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    index = np.argwhere(array >= level).mean(axis=0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in index)))


def test_slicer_segmentation_in_named_label_out_as_nrrd_seg_and_lps_vtk(tmp_path, prior_path):
    affine, shape = lps_grid(GEOMETRIES["oblique"])
    labels = sphere_on(affine, shape, radius=8.0) * 3
    header = {
        "space": "left-posterior-superior",
        "space directions": affine[:3, :3].T,
        "space origin": affine[:3, 3],
        "kinds": ["domain"] * 3,
        "Segment0_ID": "Segment_1",
        "Segment0_Name": "L1 vertebra",
        "Segment0_Color": "0.9 0.1 0.1",
        "Segment0_LabelValue": "3",
        "Segment0_Layer": "0",
    }
    source = tmp_path / "case.seg.nrrd"
    nrrd.write(str(source), labels.astype(np.uint8), header)
    out = tmp_path / "out"
    code = main(
        ["reconstruct", str(source), "--label", "L1 vertebra", "--out", str(out), "--prior", str(prior_path), *FAST]
    )
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "entropy.nrrd",
        "mean.nrrd",
        "mesh.vtk",
        "mutual_information.nrrd",
        "report.json",
        "segmentation.seg.nrrd",
        "variance.nrrd",
    } <= names
    assert not any(n.endswith((".nii.gz", ".ply")) for n in names)  # nothing in the NIfTI family
    mean = sitk.ReadImage(str(out / "mean.nrrd"))  # ITK reads it as Slicer does: LPS
    assert np.linalg.norm(_lps_centroid(mean, 0.5) - CENTRE_LPS) < NEAR_MM
    segmented = read_segments(out / "segmentation.seg.nrrd")
    assert segmented.names == {1: "L1 vertebra"} and segmented.colors()[1] == (0.9, 0.1, 0.1)
    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(out / "mesh.vtk"))
    reader.Update()
    assert "SPACE=LPS" in reader.GetHeader()
    points = numpy_support.vtk_to_numpy(reader.GetOutput().GetPoints().GetData())
    assert np.linalg.norm(points.mean(axis=0) - CENTRE_LPS) < NEAR_MM
    assert reader.GetOutput().GetPointData().GetArray("variance") is not None
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["mesh_space"] == "LPS" and report["outputs"]["maps"] == ".nrrd"
    saved = read_reconstruction(out)  # what evaluate and the viewer read: back in the RAS world
    assert np.linalg.norm(saved.mesh.vertices_mm.mean(axis=0) - CENTRE_LPS * [-1, -1, 1]) < NEAR_MM
    assert saved.mean.shape == read_volume(out / "mean.nrrd").shape


def test_nifti_in_with_format_list_out(tmp_path, prior_path):
    affine, shape = lps_grid(GEOMETRIES["anisotropic"])
    observation = write_volume(
        tmp_path / "obs.nii.gz", Volume(sphere_on(affine, shape, radius=8.0), LPS_TO_RAS @ affine)
    )
    out = tmp_path / "out"
    args = ["reconstruct", str(observation), "--out", str(out), "--prior", str(prior_path), *FAST]
    assert main([*args, "--format", "mha,seg.nrrd,.vtp"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"mean.mha", "variance.mha", "segmentation.seg.nrrd", "mesh.vtp", "report.json"} <= names
    assert np.linalg.norm(_lps_centroid(sitk.ReadImage(str(out / "mean.mha")), 0.5) - CENTRE_LPS) < NEAR_MM
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(out / "mesh.vtp"))
    reader.Update()
    points = numpy_support.vtk_to_numpy(reader.GetOutput().GetPoints().GetData())
    assert np.linalg.norm(points.mean(axis=0) - CENTRE_LPS) < NEAR_MM


@pytest.mark.parametrize(
    ("choice", "words"),
    [("png", "not an output format"), ("dcm", "needs a DICOM series")],
)
def test_bad_format_exits_2_with_one_line(tmp_path, prior_path, capsys, choice, words):
    affine, shape = lps_grid(GEOMETRIES["anisotropic"])
    observation = write_volume(tmp_path / "obs.nii.gz", Volume(sphere_on(affine, shape), LPS_TO_RAS @ affine))
    out = tmp_path / "out"
    code = main(
        ["reconstruct", str(observation), "--out", str(out), "--prior", str(prior_path), "--format", choice, *FAST]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_dicom_series_in_dicom_seg_out_on_the_source_grid(tmp_path, prior_path):
    affine, shape = lps_grid(GEOMETRIES["oblique"])
    ct = tmp_path / "ct"
    write_ct_series(ct, affine, sphere_on(affine, shape, radius=8.0).astype(np.int32) * 1000)
    out = tmp_path / "out"
    code = main(["reconstruct", str(ct), "--threshold", "-500", "--out", str(out), "--prior", str(prior_path), *FAST])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"mean.nrrd", "segmentation.seg.nrrd", "segmentation.dcm", "probability.dcm", "mesh.vtk"} <= names
    seg = hd.seg.segread(str(out / "segmentation.dcm"))
    source_uid = pydicom.dcmread(next(ct.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
    volume = seg.get_volume(combine_segments=True)
    centre = volume.affine @ np.append(np.argwhere(volume.array > 0).mean(axis=0), 1.0)
    assert np.linalg.norm(centre[:3] - CENTRE_LPS) < NEAR_MM
    fractional = hd.seg.segread(str(out / "probability.dcm"))
    assert fractional.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL


def test_segment_names_in_label_errors(tmp_path, prior_path, capsys):
    affine, shape = lps_grid(GEOMETRIES["anisotropic"])
    two = sphere_on(affine, shape, radius=4.0) + 2 * sphere_on(affine, shape, centre_lps=CENTRE_LPS + 9.0, radius=3.0)
    header = {"space": "left-posterior-superior", "space directions": affine[:3, :3].T, "space origin": affine[:3, 3]}
    for n, name in enumerate(("L1", "L2")):
        header.update({f"Segment{n}_ID": name, f"Segment{n}_Name": name, f"Segment{n}_LabelValue": str(n + 1)})
    source = tmp_path / "two.seg.nrrd"
    nrrd.write(str(source), two.astype(np.uint8), header)
    nifti = write_volume(tmp_path / "obs.nii.gz", Volume(two, LPS_TO_RAS @ affine), dtype=np.uint8)
    for path, label, words in [
        (source, None, "several segments ('L1', 'L2'); choose one with --label NAME"),
        (source, "L3", "no segment named 'L3'; segments: 'L1', 'L2'"),
        (nifti, "L1", "holds no named segments"),
    ]:
        extra = ["--label", label] if label else []
        args = ["reconstruct", str(path), "--out", str(tmp_path / "out"), "--prior", str(prior_path), *extra, *FAST]
        assert main(args) == 2
        assert words in capsys.readouterr().err


def test_nifti_default_keeps_the_ras_mesh_ply_and_states_its_space(tmp_path, prior_path):
    """A NIfTI input's world is RAS: mesh.ply stays RAS (as before), and both report.json and the
    PLY header say so; the historical reader (quality = variance) still reads it in place."""
    from napari_dropsembles.core.io.meshes import read_mesh

    affine, shape = lps_grid(GEOMETRIES["anisotropic"])
    observation = write_volume(
        tmp_path / "obs.nii.gz", Volume(sphere_on(affine, shape, radius=8.0), LPS_TO_RAS @ affine)
    )
    out = tmp_path / "out"
    assert main(["reconstruct", str(observation), "--out", str(out), "--prior", str(prior_path), *FAST]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"mean.nii.gz", "variance.nii.gz", "mesh.ply", "report.json"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["mesh_space"] == "RAS" and report["outputs"]["maps"] == ".nii.gz"
    header = (out / "mesh.ply").read_bytes().split(b"end_header")[0].decode()
    assert "comment SPACE=RAS" in header.splitlines()
    mesh = read_mesh(out / "mesh.ply")
    assert mesh.vertex_values is not None
    assert np.linalg.norm(mesh.vertices_mm.mean(axis=0) - CENTRE_LPS * [-1, -1, 1]) < NEAR_MM  # RAS numbers
    saved = read_reconstruction(out)
    assert np.allclose(saved.mesh.vertices_mm, mesh.vertices_mm)
