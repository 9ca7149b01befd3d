"""Synthetic data: procedural vertebrae (analytic SDF), corruption simulator, point sampling."""

from .corrupt import (
    Corruption,
    apply_corruption,
    boundary_band,
    observation_frame,
    random_corruption,
    simulate_observation,
)
from .shapes import (
    AugmentedShape,
    MaskShape,
    Shape,
    lattice_occupancy,
    near_surface_points,
    partial_volume,
    partial_volume_label,
    smooth_intersection,
    smooth_subtraction,
    smooth_union,
    smooth_union_local,
    uniform_points,
    voxelize,
)
from .vertebra import Vertebra, VertebraParams, random_vertebra, sample_vertebra_params

__all__ = [
    "AugmentedShape",
    "Corruption",
    "MaskShape",
    "Shape",
    "Vertebra",
    "VertebraParams",
    "apply_corruption",
    "boundary_band",
    "lattice_occupancy",
    "near_surface_points",
    "observation_frame",
    "partial_volume",
    "partial_volume_label",
    "random_corruption",
    "random_vertebra",
    "sample_vertebra_params",
    "simulate_observation",
    "smooth_intersection",
    "smooth_subtraction",
    "smooth_union",
    "smooth_union_local",
    "uniform_points",
    "voxelize",
]
