"""Scoring against a ground truth: the adaptive query gives the dense query's metrics."""

from __future__ import annotations

import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.querying.dense import run_to_end
from napari_dropsembles.core.scoring.evaluate import compare_steps
from tests.conftest import sphere_volume


@pytest.mark.slow
def test_adaptive_scoring_equals_dense_scoring(ellipsoid_prior):
    observation = sphere_volume(radius_mm=10, spacing_mm=(1.0, 1.0, 4.0))
    truth = sphere_volume(radius_mm=10, spacing_mm=(0.5, 0.5, 0.5))
    config = ReconstructionConfig(members=2, finetune=FinetuneConfig(steps=20), device="cpu", resolution_mm=2.0)
    fitted = reconstruct(observation, ellipsoid_prior, config).fitted
    dense = run_to_end(compare_steps(fitted, observation, truth, adaptive=False))
    adaptive = run_to_end(compare_steps(fitted, observation, truth))
    assert set(dense) == set(adaptive) == {"dropsembles", "nearest", "linear", "shape_based", "contour"}
    for name, value in dense["dropsembles"].items():
        assert adaptive["dropsembles"][name] == pytest.approx(value, abs=2e-4), name
    assert adaptive["shape_based"] == dense["shape_based"]
