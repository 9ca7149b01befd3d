"""Priors on disk: one ``.safetensors`` file, no pickle, written atomically.

Tensors: ``model{i}.encoder.*``, ``model{i}.decoder.*`` (also the EWC anchor) and
``model{i}.fisher.*`` for each of the file's independently pretrained models (a deep-ensemble
prior holds several). Metadata (strings): ``format``, ``format_version``, ``package_version``,
``config`` (ModelConfig JSON) and ``training`` (JSON description of the data, seed, steps, time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .. import __version__
from .config import ModelConfig
from .ensemble import DECODER_PARAMS, _decoder_shapes
from .errors import CheckpointError
from .io import atomic_write_bytes
from .model import VoxelEncoder
from .paths import bundled_prior_path

FORMAT = "napari-dropsembles-prior"
FORMAT_VERSION = 1


@dataclass(eq=False)
class PretrainedModel:
    """One network trained on dataset A: encoder, decoder (= EWC anchor), decoder Fisher."""

    encoder: VoxelEncoder
    decoder: dict[str, torch.Tensor]  # single-member parameters, leading axis 1
    fisher: dict[str, torch.Tensor]


@dataclass(eq=False)
class Prior:
    config: ModelConfig
    models: list[PretrainedModel]
    training: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "in-memory prior"


def save_prior(prior: Prior, path: str | Path) -> Path:
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for i, model in enumerate(prior.models):
        for key, value in model.encoder.state_dict().items():
            tensors[f"model{i}.encoder.{key}"] = value.detach().cpu().contiguous()
        for key in DECODER_PARAMS:
            tensors[f"model{i}.decoder.{key}"] = model.decoder[key].detach().cpu().contiguous()
            tensors[f"model{i}.fisher.{key}"] = model.fisher[key].detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "package_version": __version__,
        "models": str(len(prior.models)),
        "config": json.dumps(prior.config.to_dict()),
        "training": json.dumps(prior.training),
    }
    atomic_write_bytes(path, save_bytes(tensors, metadata=metadata))
    return path


def _read_metadata(raw: bytes, path: Path) -> dict[str, str]:
    """The JSON header of a safetensors file (its first 8 bytes give the header length)."""
    if len(raw) < 8:
        raise CheckpointError(f"{path} is not a prior: the file is too short to be a safetensors file")
    size = int.from_bytes(raw[:8], "little")
    if size <= 0 or 8 + size > len(raw):
        raise CheckpointError(f"{path} is not a valid prior: truncated or not a safetensors file")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a valid prior: unreadable header ({error})") from None
    return header.get("__metadata__") or {}


def load_prior(path: str | Path | None = None) -> Prior:
    """Load a prior (the bundled one when ``path`` is None); every failure is a CheckpointError."""
    path = Path(path) if path is not None else bundled_prior_path()
    if not path.is_file():
        raise CheckpointError(f"prior file not found: {path}")
    raw = path.read_bytes()
    meta = _read_metadata(raw, path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a napari-dropsembles prior")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has prior format version {meta.get('format_version')} (written by napari-dropsembles "
            f"{meta.get('package_version', '?')}); this version {__version__} reads format {FORMAT_VERSION}"
        )
    try:
        tensors = load_bytes(raw)
        config = ModelConfig.from_dict(json.loads(meta["config"]))
        training = json.loads(meta.get("training", "{}"))
        count = int(meta["models"])
    except (SafetensorError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} is a corrupt or truncated prior: {error}") from None
    models = []
    expected = _decoder_shapes(config)
    for i in range(count):
        encoder = VoxelEncoder(config)
        prefix = f"model{i}.encoder."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            encoder.load_state_dict(state)
        except RuntimeError as error:
            raise CheckpointError(f"{path}: encoder weights do not match its config: {error}") from None
        decoder, fisher = {}, {}
        for key in DECODER_PARAMS:
            for part, target in (("decoder", decoder), ("fisher", fisher)):
                name = f"model{i}.{part}.{key}"
                if name not in tensors:
                    raise CheckpointError(f"{path} is missing tensor {name}")
                if tuple(tensors[name].shape) != (1, *expected[key]):
                    raise CheckpointError(
                        f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                        f"expected {(1, *expected[key])} for its config"
                    )
                target[key] = tensors[name].float()
        encoder.eval()
        models.append(PretrainedModel(encoder=encoder, decoder=decoder, fisher=fisher))
    return Prior(config=config, models=models, training=training, path=path)
