"""Shared fixtures: tiny models and analytic volumes that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_dropsembles.core.config.configs import ModelConfig
from napari_dropsembles.core.networks.checkpoint import PretrainedModel, Prior
from napari_dropsembles.core.networks.ensemble import EnsembleDecoder
from napari_dropsembles.core.networks.model import VoxelEncoder
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

# Tiny tensors gain nothing from a second thread, and OpenMP threads that spin-wait on a busy
# machine made one pretraining step 20x slower: tests run torch on one thread.
torch.set_num_threads(1)
os.environ.setdefault("DROPSEMBLES_THREADS", "1")  # ... also inside the command line's runs (core/networks/threads)

TINY = ModelConfig(grid_size=16, encoder_channels=(4, 8, 8), feature_channels=8, hidden=16, blocks=2, dropout=0.2)


def make_tiny_prior(models: int = 1, seed: int = 0, config: ModelConfig = TINY) -> Prior:
    """An untrained prior (random weights, Fisher of ones): enough to exercise every code path."""
    trained = []
    for i in range(models):
        torch.manual_seed(seed + i)
        encoder = VoxelEncoder(config).eval()
        decoder = EnsembleDecoder(config, 1, torch.Generator().manual_seed(seed + i))
        state = {name: p.detach().clone() for name, p in decoder.parameter_dict().items()}
        fisher = {name: torch.ones_like(p) for name, p in state.items()}
        trained.append(PretrainedModel(encoder=encoder, decoder=state, fisher=fisher))
    return Prior(config=config, models=trained, training={"data": "none (test)"})


def sphere_volume(
    radius_mm: float = 10.0,
    centre_mm=(0.0, 0.0, 0.0),
    spacing_mm=(1.0, 1.0, 3.0),
    size_mm: float = 36.0,
) -> Volume:
    """A binary sphere sampled at voxel centres on an anisotropic grid centred near ``centre_mm``."""
    spacing = np.asarray(spacing_mm, dtype=float)
    shape = np.ceil(size_mm / spacing).astype(int)
    origin = np.asarray(centre_mm) - (shape - 1) / 2 * spacing + 0.37 * spacing  # not symmetric on purpose
    affine = affine_from_spacing(spacing, origin)
    volume = Volume(np.zeros(tuple(shape), dtype=np.uint8), affine)
    points = volume.voxel_centres_mm()
    inside = np.linalg.norm(points - np.asarray(centre_mm), axis=1) <= radius_mm
    return volume.with_data(inside.reshape(volume.shape).astype(np.uint8))


@pytest.fixture
def tiny_prior() -> Prior:
    return make_tiny_prior()


@pytest.fixture
def sphere() -> Volume:
    return sphere_volume()


class Ellipsoid:
    """An analytic ellipsoid (the ``Shape`` protocol): exact occupancy, approximate SDF."""

    def __init__(self, centre_mm, radii_mm) -> None:
        self.centre = np.asarray(centre_mm, dtype=float)
        self.radii = np.asarray(radii_mm, dtype=float)

    def sdf(self, points_mm: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(points_mm) - self.centre) / self.radii
        return (np.linalg.norm(scaled, axis=1) - 1.0) * self.radii.min()

    def occupancy(self, points_mm: np.ndarray) -> np.ndarray:
        return self.sdf(points_mm) < 0

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - self.radii, self.centre + self.radii


def random_ellipsoids(count: int, seed: int = 0) -> list[Ellipsoid]:
    rng = np.random.default_rng(seed)
    return [Ellipsoid(rng.normal(0, 3, 3), rng.uniform(7, 14, 3)) for _ in range(count)]


@pytest.fixture(scope="session")
def ellipsoid_prior() -> Prior:
    """A tiny prior pretrained for a few seconds on ellipsoids (sliced like real data)."""
    from napari_dropsembles.core.config.configs import PretrainConfig
    from napari_dropsembles.core.fitting.pretrain import pretrain_steps
    from napari_dropsembles.core.querying.dense import run_to_end

    config = PretrainConfig(steps=50, batch_size=4, points_per_sample=1024, lr=3e-3, samples=32, fisher_samples=8)
    return run_to_end(pretrain_steps(TINY, config, models=2, shapes=random_ellipsoids(16)))
