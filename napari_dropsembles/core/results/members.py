"""The warm-start state of a result folder: the fine-tuned members (members.safetensors)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ... import __version__
from ..config.configs import ReconstructionConfig, config_from_dict
from ..config.errors import CheckpointError, InputError
from ..io.atomic import atomic_write_bytes
from ..io.messages import one_line
from ..networks.checkpoint import Prior, read_metadata
from ..networks.ensemble import DECODER_PARAMS, _decoder_shapes
from ..querying.predict import output_grid
from ..volumes.frame import Frame

if TYPE_CHECKING:  # for annotations only: a Reconstruction saves its members through this module
    from .reconstruction import Reconstruction

__all__ = [
    "MEMBERS",
    "WarmStart",
    "mask_digest",
    "read_warm_start",
    "save_members",
]


MEMBERS = "members.safetensors"
FORMAT = "napari-dropsembles-members"
FORMAT_VERSION = 1

Grid = tuple[np.ndarray, tuple[int, int, int]]


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
