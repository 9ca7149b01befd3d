"""Coarse-to-fine grid evaluation reproduces the dense grid with far fewer network queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import Cancelled
from napari_dropsembles.core.config.progress import CancelToken
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.querying.adaptive import coarse_step_for, lattice, mark_cells
from napari_dropsembles.core.querying.dense import run_to_end
from napari_dropsembles.core.querying.maps import MAP_NAMES
from napari_dropsembles.core.querying.predict import predict_grid_steps
from napari_dropsembles.core.scoring.metrics import dice
from napari_dropsembles.core.volumes.frame import Frame
from tests.conftest import make_tiny_prior, sphere_volume


class _Lobes:
    """A stand-in for Fitted: M members that see a lumpy shape (a ball with a thin rod) slightly differently."""

    def __init__(self, members: int = 3) -> None:
        self.members, self.device = members, torch.device("cpu")
        self.frame = Frame(centre_mm=np.zeros(3), scale_mm=1.0, rotation=np.eye(3))
        self.decoder = type("D", (), {"config": type("C", (), {"hidden": 16})()})()
        self.queried = 0
        self.seen: list[torch.Tensor] = []

    def predict_normalised(self, points: torch.Tensor) -> torch.Tensor:
        inside = (points.abs() < 0.5).all(-1)
        self.queried += int(inside.sum())
        self.seen.append(points[inside])
        p = points.double()
        ball = 0.25 - (p - torch.tensor([0.05, -0.02, 0.0], dtype=torch.float64)).norm(dim=1)
        rod = 0.04 - p[:, [0, 1]].sub(torch.tensor([-0.2, 0.2], dtype=torch.float64)).norm(dim=1)
        rod = torch.where(p[:, 2].abs() < 0.35, rod, torch.full_like(rod, -1.0))
        sdf = torch.maximum(ball, rod)
        out = [torch.sigmoid((sdf + 0.004 * m * torch.sin(9 * p[:, 0])) * 150) for m in range(self.members)]
        return (torch.stack(out).float() * inside).float()


def _grid(n: int, shape=None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Voxel centres covering the unit cube [-0.5, 0.5]^3 with n voxels per axis."""
    affine = np.eye(4)
    affine[:3, :3] *= 1.0 / n
    affine[:3, 3] = -0.5 + 0.5 / n
    return affine, shape or (n, n, n)


def _queried_voxels(fitted: _Lobes, affine: np.ndarray, shape) -> np.ndarray:
    """Boolean grid of the voxels whose centres the fake network was asked about."""
    points = torch.cat(fitted.seen).double().numpy()
    index = np.rint((points - affine[:3, 3]) / np.diag(affine)[:3]).astype(int)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(index.T)] = True
    return mask


def _both(fitted, affine, shape, **kwargs):
    dense = run_to_end(predict_grid_steps(fitted, affine, shape, chunk=20000))
    fitted.queried, fitted.seen = 0, []
    adaptive = run_to_end(
        predict_grid_steps(fitted, affine, shape, adaptive=True, coarse_step=4, chunk=20000, **kwargs)
    )
    return dense, adaptive


def test_lattice_keeps_every_step_and_the_last_voxel():
    assert lattice(10, 4).tolist() == [0, 4, 8, 9]
    assert lattice(9, 4).tolist() == [0, 4, 8]


def test_adaptive_reproduces_dense_with_far_fewer_queries():
    fitted = _Lobes()
    dense, adaptive = _both(fitted, *_grid(128))
    assert adaptive.queries == fitted.queried * fitted.members  # counts true evaluations
    assert dense.queries >= 5 * adaptive.queries
    a, d = adaptive.mean.data >= 0.5, dense.mean.data >= 0.5
    assert dice(a.reshape(-1), d.reshape(-1)) >= 0.995
    assert d[d].size > 0 and abs(int(a.sum()) - int(d.sum())) <= 0.002 * d.sum()
    # where the network was queried the maps are the dense ones; elsewhere they are far from the threshold
    queried = _queried_voxels(fitted, *_grid(128))
    assert 0.05 < queried.mean() < 0.2
    for name in MAP_NAMES:
        np.testing.assert_allclose(getattr(adaptive, name).data[queried], getattr(dense, name).data[queried], atol=1e-6)
    assert np.abs(adaptive.mean.data - 0.5)[~queried].min() >= 0.45 - 1e-6
    assert adaptive.mean.affine is not None and np.allclose(adaptive.mean.affine, dense.mean.affine)


def test_uneven_grid_and_kept_members_agree_with_dense():
    fitted = _Lobes(members=2)
    affine, _ = _grid(40)
    shape = (37, 41, 30)
    dense = run_to_end(predict_grid_steps(fitted, affine, shape, keep_members=True))
    adaptive = run_to_end(predict_grid_steps(fitted, affine, shape, adaptive=True, keep_members=True, coarse_step=3))
    assert adaptive.members.shape == dense.members.shape == (2, *shape)
    assert np.isfinite(adaptive.mean.data).all()
    refined = np.isclose(adaptive.variance.data, dense.variance.data, atol=1e-7) & (dense.variance.data > 1e-3)
    np.testing.assert_array_equal(refined, dense.variance.data > 1e-3)  # every uncertain voxel was queried
    np.testing.assert_allclose(adaptive.members[:, refined], dense.members[:, refined], atol=1e-3)
    a, d = adaptive.mean.data >= 0.5, dense.mean.data >= 0.5
    assert dice(a.reshape(-1), d.reshape(-1)) >= 0.995


def test_marking_straddling_and_uncertain_cells_then_dilating():
    mean = np.zeros((6, 6, 6), np.float32)
    variance = np.zeros_like(mean)
    assert not mark_cells(mean, variance, 0.5, 0.2, 1e-3).any()
    mean[0, 0, 0] = 0.9  # one corner above the band: cell (0,0,0), dilated to its neighbours
    marked = mark_cells(mean, variance, 0.5, 0.2, 1e-3)
    assert marked[:2, :2, :2].all() and marked.sum() == 8
    mean[:] = 0
    variance[5, 5, 5] = 0.01
    assert mark_cells(mean, variance, 0.5, 0.2, 1e-3)[3:, 3:, 3:].all()


def test_small_grids_fall_back_to_dense_and_cancel_stops():
    fitted = _Lobes()
    affine, shape = _grid(8)
    adaptive = run_to_end(predict_grid_steps(fitted, affine, shape, adaptive=True, coarse_step=4))
    assert adaptive.queries == 8**3 * fitted.members
    cancel = CancelToken()
    steps = predict_grid_steps(fitted, *_grid(48), adaptive=True, coarse_step=4, cancel=cancel, chunk=1000)
    next(steps)
    cancel.set()
    with pytest.raises(Cancelled):
        run_to_end(steps)


@pytest.mark.slow
def test_pipeline_adaptive_matches_dense():
    sphere = sphere_volume(radius_mm=10, centre_mm=(5.0, -3.0, 20.0))
    tune = FinetuneConfig(steps=40, lr=1e-2, ewc_lambda=0.01, points_per_step=512)
    common = dict(members=2, finetune=tune, device="cpu", resolution_mm=0.5)
    dense = reconstruct(sphere, make_tiny_prior(), ReconstructionConfig(adaptive=False, **common))
    adaptive = reconstruct(sphere, make_tiny_prior(), ReconstructionConfig(**common))
    assert ReconstructionConfig().adaptive
    a, d = adaptive.maps.mean.data >= 0.5, dense.maps.mean.data >= 0.5
    assert 0.01 < d.mean() < 0.5  # a real surface in the grid
    assert dice(a.reshape(-1), d.reshape(-1)) >= 0.995
    assert adaptive.maps.queries < dense.maps.queries  # 65^3 of a tiny untrained prior: the shell is a large share
    assert adaptive.report()["execution"]["adaptive_grid"] is True
    fitted = adaptive.fitted
    cell_mm = fitted.frame.scale_mm / fitted.feature_grids.shape[-1]
    for voxel_mm, step in [(cell_mm / 4.5, 4), (cell_mm / 2.5, 2), (cell_mm / 1.5, 1), (cell_mm / 20, 4)]:
        assert coarse_step_for(fitted, np.diag([voxel_mm, voxel_mm * 2, voxel_mm, 1.0])) == step
