"""Real vertebra masks: between-slice uncertainty, member diversity, frame invariance, the output grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.data.slicing import crop_to_mask, keep_every_kth_slice
from napari_dropsembles.core.io.volumes import read_volume
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.networks.checkpoint import load_prior
from napari_dropsembles.core.scoring.evaluate import score_maps
from napari_dropsembles.core.scoring.metrics import dice
from napari_dropsembles.core.slices.slice_uncertainty import SliceUncertainty
from napari_dropsembles.core.volumes.volume import Volume

REAL = Path(__file__).parents[3] / "bench" / "data" / "real"
PRIOR = Path(__file__).parents[3] / "sample_data" / "lumbar_vertebra_prior.safetensors"
QUICK = ReconstructionConfig(members=4, finetune=FinetuneConfig(steps=15))


@pytest.fixture(scope="module")
def prior():
    return load_prior(PRIOR)


@pytest.fixture(scope="module")
def truth() -> Volume:
    volume = read_volume(REAL / "vertebrae_L1.nii.gz")
    return volume.with_data((np.asarray(volume.data) > 0).astype(np.uint8))


def test_keep_every_kth_slice_keeps_the_world_position_of_each_kept_slice(truth):
    observation = keep_every_kth_slice(truth, 3, axis=1, offset=2)
    assert observation.shape == (truth.shape[0], len(range(2, truth.shape[1], 3)), truth.shape[2])
    np.testing.assert_allclose(observation.spacing, truth.spacing * [1, 3, 1])
    np.testing.assert_allclose(
        observation.index_to_world(np.array([[0, 1, 0]])), truth.index_to_world(np.array([[0, 5, 0]]))
    )
    np.testing.assert_array_equal(observation.data[:, 1], truth.data[:, 5])
    cropped = crop_to_mask(truth, 1)
    assert cropped.data.sum() == truth.data.sum()


def test_between_slice_uncertainty_is_zero_on_the_slices_and_largest_midway(truth):
    observation = keep_every_kth_slice(truth, 3, axis=2, offset=1)
    model = SliceUncertainty.fit(observation)
    assert model.held_out_voxels > 100 and 0.5 < model.held_out_dice <= 1
    assert 0 < model.floor_mm < 10
    slice_points = observation.index_to_world(np.array([[12.0, 14.0, 2.0]] * 1))
    between = [observation.index_to_world(np.array([[12.0, 14.0, 2.0 + t]]))[0] for t in (0.0, 1 / 6, 0.5)]
    sigmas = model.between_sigma_mm(np.array(between))
    assert model.between_sigma_mm(slice_points)[0] == pytest.approx(0.0, abs=1e-6)
    assert sigmas[0] < sigmas[1] < sigmas[2]
    assert np.all(model.sigma_mm(np.array(between)) >= model.floor_mm - 1e-6)


@pytest.fixture(scope="module")
def every_third(prior, truth):
    """Every 3rd slice of axis 2 kept, reconstructed on the truth's grid (shared: the same inputs, seed and result)."""
    observation = keep_every_kth_slice(truth, 3, axis=2, offset=1)
    return observation, reconstruct(observation, prior, QUICK, target=(truth.affine, truth.shape))


def test_members_disagree_between_slices_and_agree_on_them(prior, truth, every_third):
    observation, result = every_third
    variance = result.maps.variance.data
    on_slices = variance[:, :, 1::3]
    midway = np.concatenate([variance[:, :, 2::3], variance[:, :, 3::3]], axis=2)
    # the calibration head pulls the members together (their variance is small, about 0.004 at most here;
    # docs/REAL.md) but they still disagree between the slices, not on them
    assert midway.max() > 1e-3
    assert on_slices.mean() < 0.5 * midway.mean()
    uncalibrated = dataclasses.replace(prior, calibration=None)
    raw = reconstruct(observation, uncalibrated, QUICK, target=(truth.affine, truth.shape))
    assert raw.maps.variance.data[:, :, 2::3].max() > 0.05  # the members themselves really disagree between slices
    flat = reconstruct(
        observation,
        prior,
        ReconstructionConfig(members=4, finetune=QUICK.finetune, member_diversity="none"),
        target=(truth.affine, truth.shape),
    )
    assert flat.maps.variance.data.mean() < 0.2 * variance.mean()
    report = result.report()
    assert report["slice_uncertainty"]["held_out_voxels"] > 0
    check = report["held_out_check"]
    assert len(check["held_out_slices"]) >= 2 and check["voxels"] > 50
    assert 0 <= check["ours_dice"] <= 1 and 0 <= check["shape_based_dice"] <= 1
    assert any("held out of the fit" in note and check["verdict"] in note for note in result.notes())


def test_held_out_slices_are_interior_spread_and_never_adjacent(truth):
    from napari_dropsembles.core.scoring.slice_check import held_out_slices

    observation = keep_every_kth_slice(truth, 2, axis=2, offset=0)
    axis, chosen = held_out_slices(observation, 0.2)
    labelled = np.flatnonzero(observation.data.any(axis=(0, 1)))
    assert axis == 2 and len(chosen) >= 2
    assert labelled[0] < chosen.min() and chosen.max() < labelled[-1]
    assert np.all(np.diff(np.sort(chosen)) > 1)
    iso = truth  # no thick axis: nothing to hold out
    assert len(held_out_slices(iso, 0.2)[1]) == 0


def _stored_differently(volume: Volume, order: tuple[int, int, int], flip: int | None) -> Volume:
    """The same world geometry with the voxel axes stored in another order (and one axis flipped)."""
    data = np.transpose(np.asarray(volume.data), order)
    affine = np.array(volume.affine)
    affine[:3, :3] = affine[:3, list(order)]
    if flip is not None:
        data = np.flip(data, flip)
        affine[:3, 3] = affine[:3, 3] + affine[:3, flip] * (data.shape[flip] - 1)
        affine[:3, flip] = -affine[:3, flip]
    return Volume(np.ascontiguousarray(data), affine)


def test_axis_order_and_flips_of_the_same_geometry_give_the_same_result(prior, truth, every_third):
    observation, first = every_third
    moved = _stored_differently(observation, (2, 0, 1), flip=1)
    np.testing.assert_allclose(
        moved.index_to_world(np.array([[0, 0, 0]])),
        observation.index_to_world(np.array([[observation.shape[0] - 1, 0, 0]])),
    )
    second = reconstruct(moved, prior, QUICK, target=(truth.affine, truth.shape))
    np.testing.assert_allclose(first.maps.mean.data, second.maps.mean.data, atol=2e-3)
    np.testing.assert_allclose(first.maps.variance.data, second.maps.variance.data, atol=2e-3)


def test_default_maps_lie_on_the_observation_grid_and_score_as_the_report_says(prior, truth):
    observation = keep_every_kth_slice(truth, 3, axis=2, offset=0)
    result = reconstruct(observation, prior, QUICK)
    mean = result.maps.mean
    np.testing.assert_allclose(mean.spacing, truth.spacing)  # the thick axis refined to the in-plane spacing
    shift = np.linalg.inv(truth.affine) @ mean.affine
    np.testing.assert_allclose(shift[:3, :3], np.eye(3), atol=1e-9)
    offset = shift[:3, 3]
    np.testing.assert_allclose(offset, np.rint(offset), atol=1e-6)  # voxel for voxel, no resampling
    # Every observed slice is a plane of the output grid.
    slice_index = mean.world_to_index(observation.index_to_world(np.array([[0.0, 0.0, 2.0]])))[0, 2]
    assert slice_index == pytest.approx(round(slice_index), abs=1e-6)
    # Paste the output into the truth's grid by integer offsets and score; the report's scoring
    # queries the same ensemble at the truth's voxels.
    placed = np.zeros(truth.shape, dtype=np.float32)
    lo = np.rint(offset).astype(int)
    src = [slice(max(0, -o), min(n, t - o)) for o, n, t in zip(lo, mean.shape, truth.shape, strict=True)]
    dst = [slice(s.start + o, s.stop + o) for s, o in zip(src, lo, strict=True)]
    placed[tuple(dst)] = mean.data[tuple(src)]
    on_truth = reconstruct(observation, prior, QUICK, target=(truth.affine, truth.shape))
    reported = score_maps(on_truth.maps, truth, on_truth.fitted.members)["dice"]
    assert dice(placed >= 0.5, truth.data > 0) == pytest.approx(reported, abs=0.01)


def test_the_thick_axis_becomes_the_frames_last_axis_whatever_its_voxel_axis(truth):
    from napari_dropsembles.core.volumes.frame import frame_from_observation

    for axis in (0, 1, 2):
        frame = frame_from_observation(keep_every_kth_slice(truth, 3, axis=axis))
        np.testing.assert_allclose(np.abs(frame.rotation[:, 2]), np.eye(3)[axis], atol=1e-12)
    isotropic = frame_from_observation(truth)
    np.testing.assert_allclose(isotropic.rotation, np.eye(3), atol=1e-12)  # world-aligned


def test_an_empty_slice_read_as_not_annotated_is_uncertain_not_observed(truth):
    observation = keep_every_kth_slice(truth, 2, axis=2, offset=0)
    data = np.array(observation.data)
    filled = np.flatnonzero(data.any(axis=(0, 1)))
    gap = int(filled[len(filled) // 2])
    data[:, :, gap] = 0  # nobody annotated this slice
    holed = observation.with_data(data)
    model = SliceUncertainty.fit(holed)
    assert gap in model.field.gaps.tolist()
    in_plane = np.argwhere(np.ones(holed.shape[:2], dtype=bool))
    on_gap = holed.index_to_world(np.c_[in_plane, np.full(len(in_plane), gap)])
    on_kept = holed.index_to_world(np.c_[in_plane, np.full(len(in_plane), gap + 1)])
    assert model.between_sigma_mm(on_gap).max() > 0.5  # midway between the observed neighbours
    assert model.between_sigma_mm(on_kept).max() == pytest.approx(0.0, abs=1e-6)


def test_a_sparse_annotation_learns_the_same_between_slice_model_as_the_thick_slices_it_holds(truth):
    thick = keep_every_kth_slice(truth, 3, axis=2, offset=1)
    sparse = np.zeros(truth.shape, np.uint8)
    sparse[:, :, 1::3] = np.asarray(truth.data)[:, :, 1::3]  # the same slices, drawn on the fine grid
    on_thick, on_fine = SliceUncertainty.fit(thick), SliceUncertainty.fit(truth.with_data(sparse))
    assert on_fine.held_out_voxels == on_thick.held_out_voxels > 1000  # held out one annotation step away
    assert on_fine.to_dict() == on_thick.to_dict()


def test_a_sparse_annotation_gets_the_held_out_slice_check(prior, truth):
    sparse = np.zeros(truth.shape, np.uint8)
    sparse[:, :, 1::3] = np.asarray(truth.data)[:, :, 1::3]
    result = reconstruct(truth.with_data(sparse), prior, QUICK)
    check = result.slice_check
    assert check is not None and check["axis"] == 2 and len(check["held_out_slices"]) >= 2
    assert all(s % 3 == 1 for s in check["held_out_slices"]) and 0 <= check["ours_dice"] <= 1
