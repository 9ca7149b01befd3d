"""Empty slices between labelled ones: read as not annotated (default) or as background."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from napari_dropsembles.cli import main
from napari_dropsembles.core.config.configs import FinetuneConfig, ModelConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.fitting.case import make_case
from napari_dropsembles.core.io.volumes import write_volume
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.networks.checkpoint import save_prior
from napari_dropsembles.core.slices.baselines import interpolate_observation
from napari_dropsembles.core.slices.slice_field import SliceDistanceField, gap_slices
from napari_dropsembles.core.volumes.volume import thick_axis
from tests.conftest import sphere_volume

GAPS = (5, 7)  # blanked slices of the thick axis, inside the sphere's extent


def _with_gaps(volume, gaps=GAPS):
    data = np.asarray(volume.data).copy()
    data[:, :, list(gaps)] = 0
    return volume.with_data(data)


def test_gap_slices_are_the_empty_ones_strictly_inside_the_labelled_range():
    mask = np.zeros((4, 4, 12), bool)
    mask[1:3, 1:3, [2, 3, 6, 9]] = True
    assert gap_slices(mask, 2).tolist() == [4, 5, 7, 8]
    assert gap_slices(mask, None).tolist() == []
    assert gap_slices(mask[..., :3], 2).tolist() == []  # one labelled slice: nothing between
    assert thick_axis(np.array([1.0, 1.0, 4.0])) == 2
    assert thick_axis(np.array([1.0, 1.2, 1.0])) is None  # near-isotropic: no slice axis


def test_case_leaves_gap_voxels_out_of_labels_and_observed_cells():
    volume = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0))
    holed = _with_gaps(volume)
    config = ModelConfig(grid_size=16)
    full = make_case(volume, config)
    unobserved = make_case(holed, config)
    background = make_case(holed, config, empty_slices="background")
    assert unobserved.unobserved_slices == GAPS and background.unobserved_slices == ()
    slice_of = np.rint(holed.world_to_index(background.frame.to_world(background.points[:, :3]))[:, 2])
    in_gap = np.isin(slice_of, GAPS)
    assert in_gap.sum() > 100
    assert len(unobserved.labels) == len(background.labels) - in_gap.sum()
    assert len(full.labels) > 0
    # gap voxels neither label the fit nor count as observed background in the encoder grid
    assert unobserved.labels.sum() == holed.data.sum() == background.labels.sum()
    assert unobserved.encoder_input[1].sum() < background.encoder_input[1].sum()
    # the point feature (shape-based distance) stays inside the object across the gap
    centre = np.zeros((1, 3))
    assert unobserved.point_inputs(centre)[0, 3] < 0 < background.point_inputs(centre)[0, 3]


def test_distance_field_interpolates_across_a_gap():
    volume = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0))
    holed = _with_gaps(volume, (6,))
    field = SliceDistanceField(holed)
    index = np.indices(volume.shape)[:, :, :, 6].reshape(3, -1).astype(float)
    reference = SliceDistanceField(volume)
    expected = (reference.at_index(index - [[0], [0], [1]]) + reference.at_index(index + [[0], [0], [1]])) / 2
    np.testing.assert_allclose(field.at_index(index), expected, atol=1e-4)
    as_background = SliceDistanceField(holed, "background")
    assert as_background.at_index(index).min() > 0  # an empty slice: outside everywhere
    with pytest.raises(InputError, match="empty slices"):
        SliceDistanceField(holed, "ignored")


def test_shape_based_baseline_bridges_the_gap():
    volume = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0))
    holed = _with_gaps(volume)
    truth = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 1.0))
    grid = (truth.affine, truth.shape)
    bridged = interpolate_observation(holed, *grid, "shape_based") >= 0.5
    broken = interpolate_observation(holed, *grid, "shape_based", empty_slices="background") >= 0.5
    gt = truth.data > 0
    assert (bridged & gt).sum() > (broken & gt).sum() + 100


def test_reconstruction_reports_and_uses_the_reading(ellipsoid_prior):
    holed = _with_gaps(sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0)))
    config = ReconstructionConfig(members=2, finetune=FinetuneConfig(steps=5), device="cpu", resolution_mm=2.0)
    result = reconstruct(holed, ellipsoid_prior, config)
    assert result.unobserved_slices == GAPS
    assert result.report()["unobserved_slices"] == list(GAPS)
    assert "not annotated" in result.notes()[0] and "5, 7" in result.notes()[0]
    other = reconstruct(holed, ellipsoid_prior, dataclasses.replace(config, empty_slices="background"))
    assert other.unobserved_slices == () and not any("not annotated" in note for note in other.notes())
    with pytest.raises(InputError, match="empty_slices must be one of unobserved, background"):
        ReconstructionConfig(empty_slices="maybe")


def test_cli_flag_and_note(tmp_path, ellipsoid_prior, capsys):
    holed = _with_gaps(sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0)))
    obs = write_volume(tmp_path / "obs.nii.gz", holed, dtype=np.uint8)
    prior = save_prior(ellipsoid_prior, tmp_path / "prior.safetensors")
    common = ["--prior", str(prior), "--steps", "2", "--resolution", "2", "--device", "cpu"]
    assert main(["reconstruct", str(obs), "--out", str(tmp_path / "a"), *common]) == 0
    assert "2 empty slice(s)" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["unobserved_slices"] == list(GAPS) and report["config"]["empty_slices"] == "unobserved"
    args = ["reconstruct", str(obs), "--out", str(tmp_path / "b"), "--empty-slices", "background", *common]
    assert main(args) == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["unobserved_slices"] == []
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", str(obs), "--out", str(tmp_path / "c"), "--empty-slices", "nope", *common])
    assert exit_info.value.code == 2
