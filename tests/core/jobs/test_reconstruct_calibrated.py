"""A prior that carries a calibration head and a shape reference: the head answers usual shapes, plain
interpolation with its between-slice uncertainty answers unusual ones, and the report says which."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.results.structures import structure_table
from napari_dropsembles.core.scoring.metrics import dice
from napari_dropsembles.core.slices.baselines import interpolate_observation
from napari_dropsembles.core.slices.unusual_shape import ShapeReference, shape_descriptors
from tests.conftest import make_tiny_prior, sphere_volume
from tests.core.networks.test_calibration import random_calibration
from tests.core.slices.test_unusual_shape import _vertebra_observations

CONFIG = ReconstructionConfig(finetune=FinetuneConfig(steps=5), device="cpu", resolution_mm=2.0, slice_check=False)


@pytest.fixture(scope="module")
def calibrated_prior():
    prior = make_tiny_prior()
    prior.calibration = random_calibration()
    prior.shape_reference = ShapeReference.fit([shape_descriptors(v) for v in _vertebra_observations(30)])
    return prior


def test_a_usual_shape_is_answered_by_the_calibrated_network(calibrated_prior):
    vertebra = _vertebra_observations(1, seed=5)[0]
    result = reconstruct(vertebra, calibrated_prior, CONFIG)
    report = result.report()
    assert report["unusual_shape"]["unusual"] is False
    assert report["calibration"]["answered_by"] == "calibrated network"
    assert report["calibration"]["provenance"]["subjects"] == ["a", "b"]
    assert np.isfinite(result.maps.mean.data).all()


def test_an_unusual_shape_falls_back_to_interpolation_with_its_uncertainty(calibrated_prior):
    ball = sphere_volume(radius_mm=12.0, size_mm=40.0, spacing_mm=(1.0, 1.0, 4.0))
    result = reconstruct(ball, calibrated_prior, dataclasses.replace(CONFIG, members=4))
    report = result.report()
    assert report["unusual_shape"]["unusual"] and report["unusual_shape"]["answered_by"] == "interpolation"
    assert report["calibration"]["answered_by"] == "interpolation"
    assert any("unlike the shapes the prior was trained on" in note for note in report["notes"])
    grid = (result.maps.mean.affine, result.maps.mean.shape)
    shape_based = interpolate_observation(ball, *grid, "shape_based") >= 0.5
    assert dice(result.maps.mean.data >= 0.5, shape_based) > 0.995  # the interpolation's own surface
    assert result.maps.variance.data.max() > 0  # members still disagree between slices
    (row,) = structure_table({1: result})  # the table's flag says what the note says
    assert row.flagged and "unlike the prior's training shapes" in row.reason


def test_a_prior_without_calibration_reports_none():
    result = reconstruct(sphere_volume(), make_tiny_prior(), CONFIG)
    assert result.report()["calibration"] is None and result.report()["unusual_shape"] is None

