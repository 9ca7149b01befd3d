"""Synthetic cases: a procedural vertebra, its dense ground truth and a corrupted low-res observation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config.budget import check_memory
from ..config.errors import InputError, setting
from ..io.atomic import atomic_write_bytes, ensure_writable_dir
from ..io.volumes import write_volume
from ..volumes.volume import Volume
from . import Corruption, random_vertebra, simulate_observation, voxelize


def _check_sizes(shape, corruption: Corruption, gt_spacing_mm: float) -> None:
    """Refuse grids that would not fit before sampling them (budget from the shape's bounds)."""
    lo, hi = (np.asarray(b, dtype=float) for b in shape.bounds_mm())
    extent = hi - lo + 12.0  # the margins the grids add
    for name, spacing, change, supersample in (
        ("the ground truth", np.full(3, float(gt_spacing_mm)), f"use a coarser {setting('gt_spacing_mm')}", 1),
        (
            "the observation",
            np.asarray(corruption.spacing, dtype=float),
            f"use a coarser {setting('in_plane_mm')} spacing",
            corruption.subsamples,
        ),
    ):
        if not np.all(np.isfinite(spacing) & (spacing > 0)):
            raise InputError(f"{name}'s voxel size must be a positive number of mm, got {spacing.tolist()}")
        voxels = np.prod(np.ceil(extent / spacing) + 1)
        dims = "x".join(str(int(n)) for n in np.ceil(extent / spacing) + 1)
        check_memory(f"{name} grid ({dims} voxels)", float(voxels) * (16 + 8 * np.prod(supersample)), change)


def simulate_volumes(
    seed: int = 0,
    *,
    slice_factor: float = 4.0,
    in_plane_mm: float = 1.0,
    axis: int = 2,
    erosion: int = 0,
    noise: float = 0.0,
    missing: float = 0.0,
    gt_spacing_mm: float = 0.5,
) -> tuple[Volume, Volume, dict]:
    """(observation uint8, ground truth uint8, description) for the vertebra of ``seed``."""
    rng = np.random.default_rng(seed)
    shape = random_vertebra(rng)
    corruption = Corruption(
        in_plane_mm=in_plane_mm,
        slice_factor=slice_factor,
        slice_axis=axis,
        morphology=erosion,
        label_noise=noise,
        missing_slices=missing,
    )
    _check_sizes(shape, corruption, gt_spacing_mm)
    observation = simulate_observation(shape, corruption, rng)
    truth = voxelize(shape, (gt_spacing_mm,) * 3)
    truth = Volume(np.asarray(truth.data > 0.5, dtype=np.uint8), truth.affine)
    info = {
        "seed": seed,
        "corruption": {
            "in_plane_mm": in_plane_mm,
            "slice_factor": slice_factor,
            "slice_axis": axis,
            "morphology": erosion,
            "label_noise": noise,
            "missing_slices": missing,
        },
        "observation_shape": list(observation.shape),
        "observation_spacing_mm": observation.spacing.tolist(),
        "ground_truth_shape": list(truth.shape),
        "ground_truth_spacing_mm": truth.spacing.tolist(),
        "ground_truth_volume_ml": float(truth.data.sum() * np.prod(truth.spacing) / 1000.0),
    }
    return observation, truth, info


def simulate_case(out_dir: str | Path, seed: int = 0, **kwargs) -> dict[str, Path]:
    """Write ``observation.nii.gz``, ``ground_truth.nii.gz`` and ``case.json`` into ``out_dir``."""
    folder = ensure_writable_dir(out_dir)
    observation, truth, info = simulate_volumes(seed, **kwargs)
    paths = {
        "observation": write_volume(folder / "observation.nii.gz", observation, dtype=np.uint8),
        "ground_truth": write_volume(folder / "ground_truth.nii.gz", truth, dtype=np.uint8),
    }
    atomic_write_bytes(folder / "case.json", json.dumps(info, indent=2).encode())
    paths["description"] = folder / "case.json"
    return paths
