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
import hashlib
import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .. import __version__
from .checkpoint import Prior, read_metadata
from .chunking import autocast
from .config import FinetuneConfig, ReconstructionConfig
from .device import resolve_device
from .ensemble import DECODER_PARAMS, EnsembleDecoder, _decoder_shapes
from .errors import CheckpointError, ConfigError, InputError
from .finetune import finetune_steps
from .fitted import Fitted
from .frame import Case, Frame
from .fused_decoder import fast_decoder
from .io import atomic_write_bytes, check_binary_mask, one_line
from .methods import MCDropout, check_prior, get_method
from .model import sample_features
from .pipeline import case_for, diversify_members, finish_steps, output_grid
from .progress import CancelFlag, Progress, drive, relay
from .result import Reconstruction

MEMBERS = "members.safetensors"
FORMAT = "napari-dropsembles-members"
FORMAT_VERSION = 1
REFINE_STEPS = 10  # fine-tuning steps of one round (warm start: a few suffice; bench/annotate_next.py)
KEEP_FRAME_MARGIN = 0.02  # keep the frame while the foreground stays this far inside the unit cube

Grid = tuple[np.ndarray, tuple[int, int, int]]

__all__ = [
    "MEMBERS",
    "REFINE_STEPS",
    "WarmStart",
    "mask_digest",
    "read_warm_start",
    "refine",
    "refine_steps",
    "save_members",
]


def mask_digest(observation) -> str:
    """A short hash of a mask's foreground voxels and its grid (shape and affine): tells an unchanged mask."""
    data = np.asarray(observation.data) > 0
    digest = hashlib.sha256(json.dumps([list(data.shape), np.round(observation.affine, 6).tolist()]).encode())
    digest.update(np.packbits(data, axis=None).tobytes())
    return digest.hexdigest()[:16]


@dataclass(eq=False)
class WarmStart:
    """What a refinement starts from: the fine-tuned members, their frame, settings and output grid."""

    method: str
    decoder: dict[str, torch.Tensor]  # fine-tuned parameters, [M, ...] each
    masks: torch.Tensor  # [M, blocks, hidden]
    frame: Frame
    config: ReconstructionConfig
    prior: Prior
    grid: Grid
    default_grid: bool  # the grid is the default one of its frame: it follows the frame when that grows
    annotation_axis: int | None  # the sparse annotation axis the first round read (kept from round to round)
    rounds: int = 0
    observation_digest: str = ""  # mask_digest of the observation the members were fitted on ('' unknown)

    @classmethod
    def from_result(cls, result: Reconstruction) -> WarmStart:
        if result.prior is None:
            raise InputError("this result does not hold its prior; refine needs the prior it was fitted from")
        fitted = result.fitted
        grid = (result.maps.mean.affine, result.maps.mean.shape)
        return cls(
            method=fitted.method,
            decoder={k: v.detach().clone().cpu() for k, v in fitted.decoder.parameter_dict().items()},
            masks=fitted.decoder.member_masks.detach().clone().cpu(),
            frame=fitted.frame,
            config=result.config,
            prior=result.prior,
            grid=grid,
            default_grid=_same_grid(grid, output_grid(fitted, result.observation, result.config.resolution_mm)),
            annotation_axis=_sparse_axis(result),
            rounds=result.rounds,
            observation_digest=mask_digest(result.observation),
        )


def _sparse_axis(result: Reconstruction) -> int | None:
    reading = result.reading
    return reading.axis if reading is not None and reading.sparse else None


def _same_grid(a: Grid, b: Grid) -> bool:
    return tuple(a[1]) == tuple(b[1]) and bool(np.allclose(a[0], b[0], atol=1e-5))


def prior_fingerprint(prior: Prior) -> str:
    """A short hash of a prior's config and weights: tells a result folder's prior from another."""
    digest = hashlib.sha256(json.dumps(prior.config.to_dict(), sort_keys=True).encode())
    for model in prior.models:
        for name, value in sorted(model.encoder.state_dict().items()):
            digest.update(name.encode() + value.detach().cpu().float().numpy().tobytes())
        for name in DECODER_PARAMS:
            digest.update(name.encode() + model.decoder[name].detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


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
    return Fitted(config.method, decoder, feature_grids, case.frame, history, case.point_inputs)


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


# -- the warm-start state on disk ---------------------------------------------------------------


def save_members(result: Reconstruction, path: str | Path) -> Path:
    """Write the fine-tuned members of ``result`` (and what a refinement needs) atomically to ``path``."""
    path = Path(path)
    decoder = result.fitted.decoder
    tensors = {f"decoder.{k}": v.detach().cpu().float().contiguous() for k, v in decoder.parameter_dict().items()}
    tensors["masks"] = decoder.member_masks.detach().cpu().float().contiguous()
    grid = (result.maps.mean.affine, result.maps.mean.shape)
    default = _same_grid(grid, output_grid(result.fitted, result.observation, result.config.resolution_mm))
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "package_version": __version__,
        "method": result.fitted.method,
        "members": str(decoder.members),
        "config": json.dumps(result.config.to_dict()),
        "frame": json.dumps(result.fitted.frame.to_dict()),
        "grid": json.dumps({"affine": np.asarray(grid[0]).tolist(), "shape": list(grid[1]), "default": default}),
        "annotation_axis": json.dumps(_sparse_axis(result)),
        "rounds": str(result.rounds),
        "prior": result.prior_name,
        "prior_fingerprint": "" if result.prior is None else prior_fingerprint(result.prior),
        "observation_digest": mask_digest(result.observation),
    }
    atomic_write_bytes(path, save_bytes(tensors, metadata=metadata))
    return path


def config_from_dict(data: object) -> ReconstructionConfig:
    """A :class:`ReconstructionConfig` from its ``to_dict()`` (ConfigError on unknown or wrong fields)."""
    if not isinstance(data, dict) or not isinstance(data.get("finetune", {}), dict):
        raise ConfigError("config", "must be a JSON object of fields", data)
    known = {f.name for f in dataclasses.fields(ReconstructionConfig)}
    tune = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(data) - known) + sorted(set(data.get("finetune", {})) - tune)
    if unknown:
        raise ConfigError("config", f"has unknown fields {unknown}", sorted(data))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    fields["finetune"] = FinetuneConfig(**data.get("finetune", {}))
    return ReconstructionConfig(**fields)


def _metadata(raw: bytes, path: Path) -> dict[str, str]:
    meta = read_metadata(raw, path, "members file", "; rerun reconstruct to write it again")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not the members file of a reconstruction")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has members format {one_line(str(meta.get('format_version')), 20)}; "
            f"this version reads {FORMAT_VERSION}: rerun reconstruct"
        )
    return meta


def _check_tensors(tensors: dict[str, torch.Tensor], prior: Prior, members: int, path: Path) -> None:
    expected = {f"decoder.{k}": (members, *shape) for k, shape in _decoder_shapes(prior.config).items()}
    expected["masks"] = (members, prior.config.blocks, prior.config.hidden)
    for name, shape in expected.items():
        value = tensors.get(name)
        if value is None or tuple(value.shape) != shape:
            got = "missing" if value is None else f"of shape {tuple(value.shape)}"
            raise CheckpointError(
                f"{path}: tensor {name} is {got}, expected {shape}; the file is corrupt or for another prior"
            )
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {name} has NaN/inf values; the file is corrupt")


def read_warm_start(folder: str | Path, prior: Prior) -> WarmStart:
    """The warm-start state of a result folder, checked against ``prior`` (one-line errors)."""
    folder = Path(folder)
    path = folder / MEMBERS
    if not folder.is_dir():
        raise InputError(f"{folder} is not a result folder (written by reconstruct)")
    if not path.is_file():
        raise InputError(f"{folder} holds no {MEMBERS} (written by reconstruct since version 0.x); rerun reconstruct")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({one_line(error.strerror or error)})") from None
    meta = _metadata(raw, path)
    fingerprint = prior_fingerprint(prior)
    if meta.get("prior_fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path} was fitted from the prior {one_line(meta.get('prior', '?'), 80)}, not {prior.name}; "
            "resume with the same prior (--prior)"
        )
    try:
        members = int(meta["members"])
        config = config_from_dict(json.loads(meta["config"]))
        frame_data = json.loads(meta["frame"])
        frame = Frame(
            np.asarray(frame_data["centre_mm"], float),
            float(frame_data["scale_mm"]),
            np.asarray(frame_data["rotation"], float),
        )
        grid_data = json.loads(meta["grid"])
        grid = (np.asarray(grid_data["affine"], float), tuple(int(n) for n in grid_data["shape"]))
        axis = json.loads(meta.get("annotation_axis", "null"))
        rounds = int(meta.get("rounds", "0"))
        tensors = load_bytes(raw)
    except (KeyError, TypeError, ValueError, SafetensorError, InputError) as error:
        raise CheckpointError(f"{path} is corrupt ({one_line(error, 120)}); rerun reconstruct") from None
    _check_tensors(tensors, prior, members, path)
    return WarmStart(
        method=meta["method"],
        decoder={k: tensors[f"decoder.{k}"] for k in DECODER_PARAMS},
        masks=tensors["masks"],
        frame=frame,
        config=config,
        prior=prior,
        grid=grid,
        default_grid=bool(grid_data.get("default", False)),
        annotation_axis=axis if axis in (0, 1, 2) else None,
        rounds=rounds,
        observation_digest=str(meta.get("observation_digest", "")),
    )
