"""The main job end to end on an analytic sphere with a tiny prior: every method, frames, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import Cancelled, ConfigError, InputError
from napari_dropsembles.core.config.progress import CancelToken
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.scoring.metrics import dice
from tests.conftest import make_tiny_prior, sphere_volume

FAST = dict(device="cpu", resolution_mm=1.5)
FAST_TUNE = dict(steps=40, lr=3e-3, points_per_step=1024)


def _quick(steps: int, **kwargs) -> ReconstructionConfig:
    """A CPU config with ``steps`` fine-tuning steps on a 2 mm grid."""
    options = {"finetune": FinetuneConfig(steps=steps), "device": "cpu", "resolution_mm": 2, **kwargs}
    return ReconstructionConfig(**options)


@pytest.mark.parametrize("method", ["dropsembles", "mc_dropout", "deep_ensemble", "single"])
@pytest.mark.parametrize("ewc", [0.0, 0.1])
def test_every_method_gives_valid_maps_in_world_mm(method, ewc, ellipsoid_prior):
    sphere = sphere_volume(radius_mm=10, centre_mm=(5.0, -3.0, 20.0))
    prior = ellipsoid_prior
    tune = FinetuneConfig(ewc_lambda=ewc, **FAST_TUNE)
    config = ReconstructionConfig(method=method, members=2, finetune=tune, **FAST)
    result = reconstruct(sphere, prior, config)
    mean, var = result.maps.mean.data, result.maps.variance.data
    assert mean.min() >= 0 and mean.max() <= 1
    assert var.min() >= 0 and var.max() <= 0.25 + 1e-6
    assert result.maps.mutual_information.data.min() >= 0
    assert (result.maps.entropy.data <= np.log(2) + 1e-6).all()
    members = 1 if method == "single" else 2
    assert result.fitted.members == members
    if members > 1:
        assert var.max() > 0  # members disagree somewhere
    else:
        assert var.max() == 0
    # The reconstruction sits where the sphere is, in world mm.
    centres = result.maps.mean.voxel_centres_mm(mean > 0.5)
    assert np.linalg.norm(centres.mean(0) - np.array([5.0, -3.0, 20.0])) < 2.0
    truth = np.linalg.norm(result.maps.mean.voxel_centres_mm() - np.array([5.0, -3.0, 20.0]), axis=1) <= 10
    assert dice(mean.reshape(-1) > 0.5, truth) > 0.8
    assert not result.mesh.is_empty
    radii = np.linalg.norm(result.mesh.vertices_mm - np.array([5.0, -3.0, 20.0]), axis=1)
    assert abs(np.median(radii) - 10.0) < 1.5  # within one output voxel


def test_same_seed_same_result_and_other_seed_differs():
    sphere = sphere_volume()
    prior = make_tiny_prior()
    a = reconstruct(sphere, prior, _quick(10, seed=3))
    b = reconstruct(sphere, prior, _quick(10, seed=3))
    c = reconstruct(sphere, prior, _quick(10, seed=4))
    assert np.array_equal(a.maps.mean.data, b.maps.mean.data)
    assert not np.array_equal(a.maps.variance.data, c.maps.variance.data)


def test_target_grid_is_used_as_given():
    sphere = sphere_volume()
    prior = make_tiny_prior()
    target = sphere_volume(spacing_mm=(0.7, 0.7, 0.7))
    result = reconstruct(
        sphere, prior, _quick(2, resolution_mm=None), target=(target.affine, target.shape)
    )
    assert result.maps.mean.shape == target.shape
    np.testing.assert_allclose(result.maps.mean.affine, target.affine)


def test_cancel_raises_and_returns_nothing():
    cancel = CancelToken()
    seen = []

    def on_progress(progress):
        seen.append(progress)
        if progress.step == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        reconstruct(
            sphere_volume(),
            make_tiny_prior(),
            ReconstructionConfig(finetune=FinetuneConfig(steps=50), device="cpu"),
            on_progress=on_progress,
            cancel=cancel,
        )
    assert seen[-1].step == 3 and seen[-1].phase == "finetune"


def test_live_preview_is_a_coarse_mean_in_the_same_frame():
    previews = []
    config = _quick(4, preview_interval_s=1e-9)
    result = reconstruct(sphere_volume(), make_tiny_prior(), config, on_progress=lambda p: previews.append(p.preview))
    coarse = [p for p in previews if p is not None]
    assert len(coarse) == 4
    assert coarse[0].shape == (32, 32, 32)
    assert np.allclose(coarse[0].voxel_centres_mm().mean(0), result.maps.mean.voxel_centres_mm().mean(0), atol=1.5)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(members=0), "members"),
        (dict(threshold=1.5), "threshold"),
        (dict(method="bagging"), "method"),
    ],
)
def test_bad_parameters_are_config_errors_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field) as info:
        ReconstructionConfig(device="cpu", **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("kwargs, field", [(dict(steps=-1), "steps"), (dict(ewc_lambda=-1.0), "ewc_lambda")])
def test_bad_finetune_parameters_are_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        FinetuneConfig(**kwargs)


def test_a_deep_ensemble_needs_as_many_pretrained_models_as_members():
    config = ReconstructionConfig(method="deep_ensemble", members=4, device="cpu")
    with pytest.raises(InputError, match="independently pretrained"):
        reconstruct(sphere_volume(), make_tiny_prior(), config)


def test_empty_observation_is_an_input_error():
    empty = sphere_volume().with_data(np.zeros(sphere_volume().shape, dtype=np.uint8))
    with pytest.raises(InputError, match="empty"):
        reconstruct(empty, make_tiny_prior(), ReconstructionConfig(device="cpu"))
