"""The main job: binary observation + prior -> mean / variance / entropy / MI maps and a mesh.

``reconstruct_steps`` is a generator (progress, cancel, live previews) used by the GUI worker;
``reconstruct`` runs it to the end for scripts and the command line. The config lives in
core/config, the result and its folder in core/result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..config.configs import ReconstructionConfig
from ..config.errors import InputError
from ..config.progress import CancelFlag, Progress, drive, relay
from ..fitting.case import Case, make_case
from ..fitting.fitted import Fitted
from ..fitting.methods import check_prior, fit_steps
from ..networks.checkpoint import Prior
from ..networks.device import resolve_device
from ..querying.isosurface import IsoSurface
from ..querying.predict import output_grid, predict_grid_steps
from ..results.reconstruction import Reconstruction
from ..scoring.slice_check import slice_check_steps
from ..slices.slice_uncertainty import MemberPerturbation, SliceUncertainty
from ..volumes.frame import Frame
from ..volumes.masks import check_binary_mask
from ..volumes.volume import Volume
from .requests import check_reconstruction_request

__all__ = [
    "Reconstruction",
    "ReconstructionConfig",
    "case_for",
    "check_shape",
    "diversify_members",
    "finish_steps",
    "reconstruct",
    "reconstruct_steps",
]


PREVIEW_GRID = 32


def _preview(fitted: Fitted) -> Volume:
    """Coarse mean occupancy of the members as they are now."""
    affine, shape = fitted.frame.box_affine(fitted.frame.scale_mm / PREVIEW_GRID)
    with torch.no_grad():
        return drive(predict_grid_steps(fitted, affine, shape)).mean


def _as_check(progress: Progress) -> None:
    progress.phase, progress.message = "check", "predicting held-out slices"


def diversify_members(fitted: Fitted, observation: Volume, config: ReconstructionConfig) -> SliceUncertainty | None:
    """Fit the between-slice uncertainty on held-out slices; with ``member_diversity="slices"`` and
    M >= 2, make the members read distances shifted by it (core/slice_uncertainty). None without a slice axis
    (thick or annotation axis)."""
    field = fitted.point_inputs.field
    if field is None or field.reading.axis is None:
        return None
    model = SliceUncertainty.fit(observation, field)
    if config.member_diversity == "slices" and fitted.members >= 2:
        perturbation = MemberPerturbation.draw(model, fitted.members, seed=config.seed)
        fitted.point_inputs = dataclasses.replace(fitted.point_inputs, perturbation=perturbation)
    return model


def check_shape(
    fitted: Fitted, observation: Volume, prior: Prior, slice_model: SliceUncertainty | None
) -> dict | None:
    """How unlike the prior's training shapes the observation is (core/slices/unusual_shape). An unusual
    one is answered by shape-based interpolation with its between-slice uncertainty instead of the network:
    measured on organs and other bones, the network and its head were below plain interpolation there
    (docs/REAL.md). None when the prior carries no shape reference."""
    if prior.shape_reference is None:
        return None
    assessment = prior.shape_reference.assess(observation)
    fallback = assessment["unusual"] and slice_model is not None
    fitted.fallback = slice_model if fallback else None
    return {**assessment, "answered_by": fitted.answered_by()}


def case_for(observation: Volume, prior: Prior, config: ReconstructionConfig, frame: Frame | None = None) -> Case:
    """The case of an observation as ``config`` reads it (empty slices, annotation axis); ``frame`` to reuse one."""
    case = make_case(
        observation,
        prior.config,
        empty_slices=config.empty_slices,
        annotation_axis=config.annotation_axis,
        annotated_empty=config.annotated_empty,
        frame=frame,
    )
    if case.labels.sum() == 0:
        raise InputError("no foreground voxel of the mask falls in the reconstruction box")
    return case


def finish_steps(
    fitted: Fitted,
    observation: Volume,
    case: Case,
    config: ReconstructionConfig,
    *,
    prior: Prior,
    grid: tuple[np.ndarray, tuple[int, int, int]],
    timings: dict[str, float],
    started: float,
    device: torch.device,
    slice_model: SliceUncertainty | None = None,
    check: dict | None = None,
    shape_check: dict | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, Reconstruction]:
    """Maps on ``grid`` (affine, shape), the mesh, and the :class:`Reconstruction` (shared by
    :func:`reconstruct_steps` and core/refine); ``timings`` gets ``predict``, ``mesh`` and ``total``."""
    tick = time.perf_counter()
    affine, shape = grid
    maps = yield from predict_grid_steps(
        fitted,
        affine,
        shape,
        adaptive=config.adaptive,
        threshold=config.threshold,
        chunk=config.chunk,
        keep_members=config.keep_members,
        precision=config.precision,
        cancel=cancel,
    )
    timings["predict"] = time.perf_counter() - tick
    tick = time.perf_counter()
    surface = IsoSurface(maps.mean, maps.variance)
    mesh = surface.extract(config.threshold)
    timings["mesh"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    yield Progress("mesh", 1, 1, message="done")
    result = Reconstruction(
        maps=maps,
        mesh=mesh,
        fitted=fitted,
        config=config,
        observation=observation,
        prior_name=prior.name,
        device=str(device),
        timings=timings,
        unobserved_slices=case.unobserved_slices,
        slice_uncertainty=slice_model,
        slice_check=check,
        reading=case.reading,
        prior=prior,
        unusual_shape=shape_check,
    )
    result._surface = surface  # the threshold slider starts from the prepared grid
    return result


def reconstruct_steps(
    observation: Volume,
    prior: Prior,
    config: ReconstructionConfig = ReconstructionConfig(),
    *,
    target: tuple[np.ndarray, tuple[int, int, int]] | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, Reconstruction]:
    """Fit and predict. ``observation`` is a binary mask Volume; ``target`` an optional (affine, shape)."""
    check_prior(config, prior)
    check_binary_mask(observation)
    check_reconstruction_request(observation, prior, config, target)  # memory, before anything is allocated
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    case = case_for(observation, prior, config)
    timings["prepare"] = time.perf_counter() - started

    tick = time.perf_counter()
    last_preview = time.perf_counter()

    def attach_preview(progress: Progress) -> None:
        nonlocal last_preview
        if config.preview_interval_s > 0 and time.perf_counter() - last_preview >= config.preview_interval_s:
            progress.preview = _preview(progress.extra["live"])
            last_preview = time.perf_counter()

    fitted = yield from relay(fit_steps(case, prior, config, device=device, cancel=cancel), attach_preview)
    slice_model = diversify_members(fitted, observation, config)
    shape_check = check_shape(fitted, observation, prior, slice_model)
    timings["finetune"] = time.perf_counter() - tick
    check = None
    if config.slice_check:
        tick = time.perf_counter()
        check = yield from relay(slice_check_steps(observation, prior, config, device=device, cancel=cancel), _as_check)
        timings["slice_check"] = time.perf_counter() - tick
    grid = target if target is not None else output_grid(fitted, observation, config.resolution_mm)
    return (
        yield from finish_steps(
            fitted,
            observation,
            case,
            config,
            prior=prior,
            grid=grid,
            timings=timings,
            started=started,
            device=device,
            slice_model=slice_model,
            check=check,
            shape_check=shape_check,
            cancel=cancel,
        )
    )


def reconstruct(
    observation: Volume,
    prior: Prior,
    config: ReconstructionConfig = ReconstructionConfig(),
    *,
    target: tuple[np.ndarray, tuple[int, int, int]] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> Reconstruction:
    """Run :func:`reconstruct_steps` to the end."""
    return drive(reconstruct_steps(observation, prior, config, target=target, cancel=cancel), on_progress)
