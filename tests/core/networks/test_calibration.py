"""The calibration head: features, forward, the prior file round trip, and its checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dropsembles.core.config.errors import CheckpointError
from napari_dropsembles.core.networks.calibration import (
    INTERPOLATION_FEATURES,
    LOGISTIC_FEATURES,
    NETWORK_FEATURES,
    Calibration,
    CalibrationHead,
    interpolation_features,
    logistic_features,
    member_features,
)
from napari_dropsembles.core.networks.checkpoint import load_prior, save_prior
from napari_dropsembles.core.slices.neighbours import NeighbourSlices
from tests.conftest import make_tiny_prior


def random_head(features: tuple[str, ...], hidden: int = 8, seed: int = 0, layers: int = 3) -> CalibrationHead:
    generator = torch.Generator().manual_seed(seed)
    sizes = [len(features)] + [hidden] * (layers - 1) + [1]
    return CalibrationHead(
        features,
        tuple(
            (torch.randn(a, b, generator=generator), torch.randn(b, generator=generator))
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ),
    )


def random_calibration() -> Calibration:
    return Calibration(
        random_head(NETWORK_FEATURES),
        random_head(INTERPOLATION_FEATURES, seed=1),
        random_head(LOGISTIC_FEATURES, seed=2, layers=1),
        {"subjects": ["a", "b"], "slicings": "test"},
    )


def test_interpolation_features_are_scaled_by_the_gap_and_clipped():
    slices = NeighbourSlices(
        distances_mm=np.array([[20.0, -4.0], [8.0, -2.0], [-4.0, 0.0], [-100.0, 2.0]], dtype=np.float32),
        t=np.array([0.5, 0.0], dtype=np.float32),
        gap_mm=np.array([4.0, 4.0], dtype=np.float32),
    )
    features = interpolation_features(slices, np.array([2.0, -2.0]), np.array([0.5, 1.0]))
    assert features.shape == (2, len(INTERPOLATION_FEATURES))
    row = dict(zip(INTERPOLATION_FEATURES, features[0], strict=True))
    assert row["slice_below_2"] == 3.0 and row["slice_above_2"] == -3.0  # clipped at 3 gaps
    assert row["slice_below"] == 2.0 and row["interpolated"] == 0.5
    assert row["mid_gap"] == 1.0 and row["gap_cm"] == pytest.approx(0.4) and row["linear"] == 0.5
    assert logistic_features(features).shape == (2, len(LOGISTIC_FEATURES))


def test_member_features_hold_each_members_logit_and_the_shared_spread():
    probs = torch.tensor([[0.5, 0.9], [0.5, 0.1]])
    extra = member_features(probs)
    assert extra.shape == (2, 2, 2)
    assert torch.allclose(extra[0, :, 0], torch.tensor([0.0, float(np.log(9) / 4)]), atol=1e-5)
    assert torch.allclose(extra[0, :, 1], extra[1, :, 1])  # the spread is the members' own, shared
    assert extra[0, 0, 1] == 0 and extra[0, 1, 1] > 0


def test_calibrated_member_probabilities_have_the_members_shape():
    calibration = random_calibration()
    interpolation = np.random.default_rng(0).normal(size=(50, len(INTERPOLATION_FEATURES))).astype(np.float32)
    members = torch.rand(4, 50)
    out = calibration.probabilities(interpolation, members)
    assert out.shape == (4, 50) and bool(((out >= 0) & (out <= 1)).all())
    assert calibration.without_network(interpolation, "logistic").shape == (50,)


def test_a_prior_carries_its_calibration_through_its_file(tmp_path):
    prior = make_tiny_prior()
    prior.calibration = random_calibration()
    loaded = load_prior(save_prior(prior, tmp_path / "calibrated.safetensors"))
    assert loaded.calibration is not None
    assert loaded.calibration.provenance == {"subjects": ["a", "b"], "slicings": "test"}
    x = torch.randn(7, len(NETWORK_FEATURES))
    assert torch.allclose(loaded.calibration.network(x), prior.calibration.network(x))
    assert loaded.calibration.logistic is not None and len(loaded.calibration.logistic.layers) == 1


def test_a_prior_without_calibration_loads_without_one(tmp_path):
    assert load_prior(save_prior(make_tiny_prior(), tmp_path / "plain.safetensors")).calibration is None


def test_a_damaged_calibration_is_one_checkpoint_error():
    tensors, meta = random_calibration().to_file()
    broken = dict(tensors)
    broken["calibration.network.0.weight"] = broken["calibration.network.0.weight"][:3]
    with pytest.raises(CheckpointError, match="layer 0 has shape"):
        Calibration.from_file(broken, meta, "test")
    nan = dict(tensors)
    nan["calibration.network.1.bias"] = torch.full_like(nan["calibration.network.1.bias"], float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        Calibration.from_file(nan, meta, "test")
    with pytest.raises(CheckpointError, match="expected a network head"):
        Calibration.from_file(tensors, '{"heads": ["logistic"]}', "test")
