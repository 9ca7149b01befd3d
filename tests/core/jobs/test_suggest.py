"""Annotate where it matters: the sparse annotation axis, slice suggestions, the expected error, refine."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ModelConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import ConfigError, InputError
from napari_dropsembles.core.fitting.case import make_case
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.jobs.refine import refine
from napari_dropsembles.core.jobs.suggest import (
    ExpectedError,
    SliceSuggestion,
    error_probability,
    expected_band_error,
    suggest_slices,
)
from napari_dropsembles.core.networks.checkpoint import load_prior
from napari_dropsembles.core.results.members import WarmStart
from napari_dropsembles.core.scoring.metrics import dice
from napari_dropsembles.core.slices.baselines import interpolate_observation
from napari_dropsembles.core.slices.slice_field import SliceDistanceField, detect_annotation_axis, read_slices
from tests.conftest import sphere_volume

ISO = (1.5, 1.5, 1.5)
FAST = ReconstructionConfig(members=2, finetune=FinetuneConfig(steps=8), device="cpu", slice_check=False)


def _keep(volume, slices, axis=2):
    """The dense mask with only ``slices`` along ``axis`` drawn (the rest left empty: not annotated)."""
    data = np.asarray(volume.data)
    kept = np.zeros_like(data)
    index = [slice(None)] * 3
    index[axis] = list(slices)
    kept[tuple(index)] = data[tuple(index)]
    return volume.with_data(kept)


def _truth_grid(truth):
    return (truth.affine, truth.shape)


@pytest.fixture(scope="module")
def truth():
    return sphere_volume(radius_mm=11, spacing_mm=ISO, size_mm=36)


def test_every_fourth_slice_on_an_isotropic_grid_is_read_as_a_sparse_annotation(truth):
    sparse = _keep(truth, range(2, truth.shape[2], 4))
    mask = sparse.data > 0
    assert detect_annotation_axis(mask) == 2
    assert detect_annotation_axis(truth.data > 0) is None  # a dense mask has no annotation axis
    reading = read_slices(mask, sparse.spacing)
    labelled = np.flatnonzero(mask.any((0, 1)))
    assert reading.axis == 2 and reading.sparse and reading.step == 4
    inner = [s for s in range(labelled[0], labelled[-1]) if s not in labelled]
    assert set(inner) <= set(reading.gaps.tolist())
    beyond = [s for s in reading.gaps if s < labelled[0] or s > labelled[-1]]
    assert beyond and all(0 < abs(s - labelled[0]) < 4 or 0 < abs(s - labelled[-1]) < 4 for s in beyond)
    # an empty slice annotated as empty is background, not a gap
    assert inner[0] not in read_slices(mask, sparse.spacing, annotated_empty=[inner[0]]).gaps
    # the case: no labels in the gaps, and the interpolated distance stays inside across them
    case = make_case(sparse, ModelConfig(grid_size=16))
    background = make_case(sparse, ModelConfig(grid_size=16), empty_slices="background")
    assert case.unobserved_slices == tuple(reading.gaps.tolist())
    assert len(case.labels) < len(background.labels) and case.labels.sum() == background.labels.sum()
    # every baseline reads the gaps as not annotated (and is better for it than reading them as background)
    gt = truth.data > 0
    for method in ("nearest", "linear", "shape_based"):
        ours = interpolate_observation(sparse, *_truth_grid(truth), method) >= 0.5
        other = interpolate_observation(sparse, *_truth_grid(truth), method, empty_slices="background") >= 0.5
        assert dice(ours, gt) > dice(other, gt) + 0.2, method


def test_annotation_axis_given_explicitly_and_checked(truth):
    sparse = _keep(truth, range(1, truth.shape[0], 3), axis=0)
    assert read_slices(sparse.data > 0, sparse.spacing, annotation_axis=0).axis == 0
    thick = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0))
    with pytest.raises(InputError, match="thick-slice axis 2"):
        read_slices(thick.data > 0, thick.spacing, annotation_axis=0)
    assert read_slices(thick.data > 0, thick.spacing).axis == 2  # thick input: as before
    with pytest.raises(ConfigError, match="annotation_axis"):
        ReconstructionConfig(annotation_axis=3)
    assert ReconstructionConfig(annotated_empty=[5, 2, 5]).annotated_empty == (2, 5)


@pytest.fixture(scope="module")
def gap_result(truth):
    """Annotated every 2nd slice, except a wide gap in the middle; the bundled prior (a trained one)."""
    slices = [s for s in range(1, truth.shape[2], 2) if not 8 <= s <= 16]
    observation = _keep(truth, slices)
    return reconstruct(observation, load_prior(None), FAST, target=_truth_grid(truth)), observation


def test_suggestions_point_into_the_widest_gap_and_never_at_an_annotated_slice(gap_result):
    result, observation = gap_result
    suggestions = suggest_slices(result, 3)
    assert len(suggestions) == 3 and all(isinstance(s, SliceSuggestion) for s in suggestions)
    annotated = np.flatnonzero(observation.data.any((0, 1)))
    assert all(s.axis == 2 and s.kind == "annotate" and s.index not in annotated for s in suggestions)
    assert 9 <= suggestions[0].index <= 15  # inside the wide gap (slices 8..16 not annotated)
    assert suggestions[0].score >= suggestions[1].score >= suggestions[2].score > 0
    centre = observation.index_to_world(np.array([[0.0, 0.0, suggestions[0].index]]))[0, 2]
    assert suggestions[0].world_mm == pytest.approx(centre)
    for score in ("variance", "mutual_information", "surface"):
        assert suggest_slices(result, 1, score=score)[0].axis == 2
    crossing = suggest_slices(result, 2, axis=0)
    assert all(s.axis == 0 and s.kind == "check" for s in crossing)
    with pytest.raises(InputError):
        suggest_slices(result, 0)


def test_a_fully_annotated_thick_acquisition_gets_crossing_slices_to_check(ellipsoid_prior):
    thick = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 3.0))
    result = reconstruct(thick, ellipsoid_prior, FAST)
    suggestions = suggest_slices(result, 4)
    assert suggestions and all(s.axis in (0, 1) and s.kind == "check" for s in suggestions)
    assert all(0 <= s.index < thick.shape[s.axis] for s in suggestions)


def test_expected_error_fields(gap_result, truth):
    result, _ = gap_result
    expected = expected_band_error(result)
    assert isinstance(expected, ExpectedError)
    assert expected.voxels > 0 and expected.surface_voxels > 0 and expected.band_voxels > expected.surface_voxels
    assert "mislabelled" in expected.text and f"{expected.voxels:.0f}" in expected.text
    assert expected.volume_ml == pytest.approx(expected.voxels * np.prod(ISO) / 1000)
    probs = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(error_probability(probs), [0.1, 0.5, 0.1], atol=1e-6)


def test_refine_with_a_true_slice_improves_dice_and_leaves_the_input_alone(gap_result, truth):
    result, observation = gap_result
    before = dice(result.maps.mean.data >= 0.5, truth.data > 0)
    index = suggest_slices(result, 1)[0].index
    data = np.array(observation.data, copy=True)
    data[:, :, index] = truth.data[:, :, index]
    updated = observation.with_data(data)
    kept = updated.data.copy()
    steps = []
    refined = refine(result, updated, steps=6, on_progress=steps.append)
    np.testing.assert_array_equal(updated.data, kept)  # the user's mask is never written to
    assert refined.rounds == 1 and refined.maps.mean.shape == result.maps.mean.shape
    assert index not in refined.unobserved_slices
    assert dice(refined.maps.mean.data >= 0.5, truth.data > 0) > before
    assert {p.phase for p in steps} >= {"finetune", "mesh"}
    assert refined.fitted is not result.fitted and refined.prior is result.prior
    # warm start: the refined members start from the fitted ones, not from the prior
    start = WarmStart.from_result(result)
    assert all(
        np.allclose(v.numpy(), result.fitted.decoder.parameter_dict()[k].detach().numpy())
        for k, v in start.decoder.items()
    )
    with pytest.raises(InputError, match="keep the method"):
        refine(result, updated, ReconstructionConfig(method="single", device="cpu"))


def test_a_sparse_annotation_ends_halfway_to_the_next_slice(truth):
    """Beyond the last labelled slice the object is taken to end about halfway to the empty slice one step on."""
    sparse = _keep(truth, range(2, truth.shape[2], 4))
    reading = read_slices(sparse.data > 0, sparse.spacing)
    labelled = np.flatnonzero(sparse.data.any((0, 1)))
    last = int(labelled[-1])
    beyond = last + 1
    while beyond in set(reading.gaps.tolist()):
        beyond += 1
    field = SliceDistanceField(sparse, reading=reading)
    centre = np.array(np.unravel_index(np.argmax(sparse.data[:, :, last]), sparse.shape[:2]), float)
    along = np.linspace(last, beyond, 41)
    index = np.stack([np.full_like(along, centre[0]), np.full_like(along, centre[1]), along])
    d = field.at_index(index)
    assert d[0] < 0 < d[-1]
    crossing = along[np.argmax(d > 0)]
    assert 0.3 < (crossing - last) / (beyond - last) < 0.7


def test_refine_can_be_cancelled(gap_result):
    from napari_dropsembles.core.config.errors import Cancelled
    from napari_dropsembles.core.config.progress import CancelToken

    result, observation = gap_result
    token = CancelToken()
    token.set()
    with pytest.raises(Cancelled):
        refine(result, observation, cancel=token)
