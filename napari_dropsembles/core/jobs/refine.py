"""Refine a reconstruction with the user's added or corrected slices, warm-started from its members.

:func:`refine_steps` takes a :class:`~.result.Reconstruction` (or a :class:`WarmStart` read back from a
result folder by :func:`read_warm_start`) and the user's updated observation: the whole mask as it
is now, so a corrected slice replaces the old labels and an added slice adds new ones. Nothing the
user drew is written to: the observation is only read. The members start from their fine-tuned
weights (not from the prior), are fine-tuned a few steps on the new observation (same EWC anchor:
the prior), and the maps, mesh and between-slice uncertainty are made as in
:func:`~.pipeline.reconstruct_steps` (its :func:`~.pipeline.finish_steps`), on the same output grid,
so a viewer updates its layers in place.

The warm-start state lives in the result folder as ``members.safetensors`` (no pickle, written
atomically): the members' fine-tuned decoder weights and masks; in its metadata the method, the
config, the frame, the output grid, the annotation axis, a fingerprint of the prior, checked
when read back (:func:`read_warm_start`), so ``reconstruct --resume`` never mixes priors, and a digest
of the observation mask it was fitted on (:func:`mask_digest`: a refinement of several structures
keeps a structure whose mask did not change, core/structures).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator
from functools import partial

import numpy as np
import torch

from ..config.configs import REFINE_STEPS, ReconstructionConfig
from ..config.errors import ConfigError, InputError
from ..config.progress import CancelFlag, Progress, drive, relay
from ..fitting.case import Case
from ..fitting.finetune import finetune_steps
from ..fitting.fitted import Fitted
from ..fitting.methods import MCDropout, check_prior, get_method
from ..networks.chunking import autocast
from ..networks.device import resolve_device
from ..networks.ensemble import EnsembleDecoder
from ..networks.fused_decoder import fast_decoder
from ..networks.model import sample_features
from ..querying.predict import output_grid
from ..results.members import Grid, WarmStart
from ..results.reconstruction import Reconstruction
from ..volumes.frame import Frame
from ..volumes.masks import check_binary_mask
from .reconstruct import case_for, check_shape, diversify_members, finish_steps

__all__ = [
    "REFINE_STEPS",
    "refine",
    "refine_steps",
]


KEEP_FRAME_MARGIN = 0.02  # keep the frame while the foreground stays this far inside the unit cube


def _keeps_frame(frame: Frame, observation, pad: float) -> bool:
    """True when every foreground voxel of ``observation`` lies inside ``frame``'s object box."""
    index = np.argwhere(np.asarray(observation.data) > 0)
    if not len(index):
        return False
    corners = np.concatenate([index.min(0, keepdims=True) - 0.5, index.max(0, keepdims=True) + 0.5])
    box = np.array(np.meshgrid(*corners.T, indexing="ij")).reshape(3, -1).T
    limit = 0.5 / (1 + 2 * pad) + KEEP_FRAME_MARGIN
    return bool(np.all(np.abs(frame.to_normalised(observation.index_to_world(box))) <= limit))


def _warm_decoder(start: WarmStart, members: int, single: bool) -> EnsembleDecoder:
    """The members as they were fine-tuned (member 0 alone, without masks, for MC dropout)."""
    config = start.prior.config
    if single:
        return EnsembleDecoder.from_members(config, [{k: v[:1] for k, v in start.decoder.items()}])
    decoder = EnsembleDecoder.from_members(
        config, [{k: v[m : m + 1] for k, v in start.decoder.items()} for m in range(members)]
    )
    decoder.set_masks(start.masks)
    return decoder


def warm_fit_steps(
    case: Case,
    start: WarmStart,
    config: ReconstructionConfig,
    *,
    device: torch.device,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, Fitted]:
    """Fine-tune the members from their warm state on ``case`` (encoder features recomputed from its input)."""
    method = get_method(config.method)
    prior = start.prior
    members = method.effective_members(config.members)
    generator = torch.Generator().manual_seed(config.seed + 1000 * (start.rounds + 1))
    sources = method.sources(prior, members)
    grid = torch.from_numpy(case.encoder_input)[None].to(device)
    points = torch.from_numpy(case.points).to(device)
    labels = torch.from_numpy(case.labels).to(device)
    with torch.no_grad():
        feature_grids = torch.cat([m.encoder.to(device)(grid) for m in sources], 0)
        table = sample_features(feature_grids, points[None].expand(len(sources), -1, -1))
    features = table[0] if len(sources) == 1 else table
    _, anchor, fisher = method.build(prior.config, sources, members, torch.Generator().manual_seed(config.seed))
    single = isinstance(method, MCDropout)
    decoder = fast_decoder(_warm_decoder(start, members, single).to(device), device)
    steps = finetune_steps(
        decoder,
        features,
        points,
        labels,
        method.finetune_config(config.finetune, prior.config),
        anchor={k: v.to(device) for k, v in anchor.items()},
        fisher={k: v.to(device) for k, v in fisher.items()},
        generator=generator,
        cancel=cancel,
    )
    history = yield from relay(steps, around=partial(autocast, device, config.precision))
    if single:  # MC dropout predicts with its M sampled masks, the same as before
        sampled = EnsembleDecoder.replicate(prior.config, decoder.member(0), members)
        sampled.set_masks(start.masks)
        decoder = fast_decoder(sampled.to(device), device)
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    return Fitted(config.method, decoder, feature_grids, case.frame, history, case.point_inputs, prior.calibration)


def _round_config(start: WarmStart, config: ReconstructionConfig | None, steps: int | None) -> ReconstructionConfig:
    """The config of a round: the earlier one (or ``config``), its annotation axis kept, ``steps`` steps."""
    config = start.config if config is None else config
    if config.method != start.method:
        raise InputError(f"cannot refine a {start.method} result as {config.method}; keep the method of the result")
    if config.annotation_axis is None and start.annotation_axis is not None:
        config = dataclasses.replace(config, annotation_axis=start.annotation_axis)
    steps = REFINE_STEPS if steps is None else steps
    try:  # held-out loss at the start and the end only: a member keeps its warm state unless the round helped
        return config.with_finetune(steps=steps, eval_every=max(steps, 1))
    except ConfigError as error:
        raise error.nested("finetune") from None


def refine_steps(
    result: Reconstruction | WarmStart,
    observation,
    config: ReconstructionConfig | None = None,
    *,
    steps: int | None = None,
    target: Grid | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, Reconstruction]:
    """One refinement round: warm-started fine-tuning on the updated ``observation``, then maps and mesh.

    ``config`` defaults to the result's (its annotation axis is kept); ``steps`` fine-tuning steps
    (default :data:`REFINE_STEPS`). The maps are on the result's grid (``target`` to choose another;
    a default grid follows the frame when the new slices leave the old object box).
    """
    start = result if isinstance(result, WarmStart) else WarmStart.from_result(result)
    config = _round_config(start, config, steps)
    check_prior(config, start.prior)
    check_binary_mask(observation)
    device = resolve_device(config.device)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    frame = start.frame if _keeps_frame(start.frame, observation, start.prior.config.box_padding) else None
    case = case_for(observation, start.prior, config, frame)
    timings["prepare"] = time.perf_counter() - started
    tick = time.perf_counter()
    fitted = yield from warm_fit_steps(case, start, config, device=device, cancel=cancel)
    slice_model = diversify_members(fitted, observation, config)
    shape_check = check_shape(fitted, observation, start.prior, slice_model)
    timings["finetune"] = time.perf_counter() - tick
    grid = target if target is not None else start.grid
    if target is None and frame is None and start.default_grid:
        grid = output_grid(fitted, observation, config.resolution_mm)
    refined = yield from finish_steps(
        fitted,
        observation,
        case,
        config,
        prior=start.prior,
        grid=grid,
        timings=timings,
        started=started,
        device=device,
        slice_model=slice_model,
        shape_check=shape_check,
        cancel=cancel,
    )
    refined.rounds = start.rounds + 1
    return refined


def refine(
    result: Reconstruction | WarmStart,
    observation,
    config: ReconstructionConfig | None = None,
    *,
    steps: int | None = None,
    target: Grid | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> Reconstruction:
    """Run :func:`refine_steps` to the end."""
    return drive(refine_steps(result, observation, config, steps=steps, target=target, cancel=cancel), on_progress)
