"""Priors on disk: one ``.safetensors`` file, no pickle, written atomically.

Tensors: ``model{i}.encoder.*``, ``model{i}.decoder.*`` (also the EWC anchor) and
``model{i}.fisher.*`` for each of the file's independently pretrained models (a deep-ensemble
prior holds several); optionally ``calibration.*`` (the calibration head, core/networks/calibration)
and ``shape_reference.*`` (the descriptors of its training shapes, core/slices/unusual_shape).
Metadata (strings): ``format``, ``format_version``, ``package_version``, ``config`` (ModelConfig
JSON), ``training`` (JSON description of the data, seed, steps, time) and, with those tensors,
``calibration`` and ``shape_reference`` (JSON, with their provenance).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ... import __version__
from ..config.budget import check_memory, decoder_parameters
from ..config.configs import ModelConfig
from ..config.errors import CheckpointError, InputError, setting
from ..config.paths import bundled_prior_path
from ..io.atomic import atomic_write_bytes
from ..io.messages import one_line
from ..slices.unusual_shape import ShapeReference
from .calibration import Calibration
from .ensemble import DECODER_PARAMS, _decoder_shapes
from .model import VoxelEncoder

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
    calibration: Calibration | None = None  # learned on real anatomy; None: the members' own probabilities
    shape_reference: ShapeReference | None = None  # its training shapes, for the unusual-shape score

    @property
    def name(self) -> str:
        return self.path.name if self.path else "in-memory prior"


MAX_MODELS = 64  # independently pretrained models in one file
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_finite_prior(prior: Prior) -> None:
    """Refuse a prior with a non-finite weight or a negative/non-finite Fisher (never saved, never used)."""
    for i, model in enumerate(prior.models):
        named = [(f"model{i}.encoder.{k}", v) for k, v in model.encoder.state_dict().items()]
        named += [(f"model{i}.decoder.{k}", v) for k, v in model.decoder.items()]
        named += [(f"model{i}.fisher.{k}", v) for k, v in model.fisher.items()]
        for name, value in named:
            _check_values(name, value, fisher=".fisher." in name, where=prior.name)


def _check_values(name: str, value: torch.Tensor, *, fisher: bool, where: str) -> None:
    if value.dtype not in _FLOAT_DTYPES:
        raise CheckpointError(f"{where}: tensor {name} holds {str(value.dtype).replace('torch.', '')}, not floats")
    if value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise CheckpointError(
            f"{where}: tensor {name} has {bad} NaN/inf value(s); the prior is corrupt or its training diverged "
            f"(retrain it, e.g. with a lower {setting('lr')})"
        )
    if fisher and value.numel() and bool((value < 0).any()):
        raise CheckpointError(f"{where}: Fisher tensor {name} has negative values; a Fisher diagonal is never negative")


def save_prior(prior: Prior, path: str | Path) -> Path:
    """Write ``prior`` atomically; a prior with non-finite weights is refused, never written."""
    path = Path(path)
    check_finite_prior(prior)
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
    for part, key in ((prior.calibration, "calibration"), (prior.shape_reference, "shape_reference")):
        if part is not None:
            extra, metadata[key] = part.to_file()
            tensors.update(extra)
    atomic_write_bytes(path, save_bytes(tensors, metadata=metadata))
    return path


def read_metadata(raw: bytes, path: Path, what: str = "prior", remedy: str = "") -> dict[str, str]:
    """The string metadata of a safetensors file (its first 8 bytes give the JSON header's length).

    A file that is not one is a :class:`CheckpointError` naming ``what`` it should have been, ending
    with ``remedy`` (e.g. "; rerun reconstruct to write it again").
    """
    if len(raw) < 8:
        raise CheckpointError(f"{path} is not a {what}: the file is too short to be a safetensors file{remedy}")
    size = int.from_bytes(raw[:8], "little")
    if size <= 0 or 8 + size > len(raw):
        raise CheckpointError(f"{path} is not a valid {what}: truncated or not a safetensors file{remedy}")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        problem = one_line(error, 120)
        raise CheckpointError(f"{path} is not a valid {what}: unreadable header ({problem}){remedy}") from None
    if not isinstance(header, dict):
        kind = type(header).__name__
        raise CheckpointError(f"{path} is not a valid {what}: its header is a JSON {kind}, not an object{remedy}")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path} is not a valid {what}: its metadata must map names to strings{remedy}")
    return meta


def _json_object(meta: dict[str, str], key: str, path: Path, default: str | None = None) -> dict:
    text = meta.get(key, default)
    if text is None:
        raise CheckpointError(f"{path} is a corrupt prior: its metadata has no '{key}'")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        problem = one_line(error, 80)
        raise CheckpointError(f"{path} is a corrupt prior: metadata '{key}' is not JSON ({problem})") from None
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path} is a corrupt prior: metadata '{key}' must be a JSON object, got a {type(value).__name__}"
        )
    return value


def _model_count(meta: dict[str, str], path: Path) -> int:
    text = meta.get("models", "1")
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 1 <= count <= MAX_MODELS or str(count) != text.strip():
        raise CheckpointError(
            f"{path} is a corrupt prior: metadata 'models' must be a whole number from 1 to {MAX_MODELS}, got {text!r}"
        )
    return count


def expected_tensors(config: ModelConfig, count: int) -> dict[str, tuple[int, ...]]:
    """Every tensor name a prior of ``config`` with ``count`` models holds, with its shape."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        encoder_shapes = {k: tuple(v.shape) for k, v in VoxelEncoder(config).state_dict().items()}
    decoder_shapes = {k: (1, *shape) for k, shape in _decoder_shapes(config).items()}
    names: dict[str, tuple[int, ...]] = {}
    for i in range(count):
        names.update({f"model{i}.encoder.{k}": shape for k, shape in encoder_shapes.items()})
        for part in ("decoder", "fisher"):
            names.update({f"model{i}.{part}.{k}": decoder_shapes[k] for k in DECODER_PARAMS})
    return names


def _check_path(path: object) -> Path:
    if path is None:
        return bundled_prior_path()
    if not isinstance(path, (str, os.PathLike)) or not str(os.fspath(path)).strip():
        raise CheckpointError(f"a prior must be a .safetensors file name, got {one_line(repr(path), 80)}")
    return Path(path)


def load_prior(path: str | Path | None = None) -> Prior:
    """Load a prior (the bundled one when ``path`` is None); every failure is one CheckpointError line.

    Checked before any model is built: the metadata (types and ranges; the config through
    :class:`ModelConfig`'s own checks), the memory the weights need, and every tensor (present,
    float, the shape its config implies, finite; Fisher non-negative).
    """
    path = _check_path(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"prior file not found: {path}")
        check_memory(f"the prior {path.name}", path.stat().st_size * 2, "use a smaller prior")
        raw = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({one_line(error.strerror or error)})") from None
    except InputError as error:
        raise CheckpointError(str(error)) from None
    meta = read_metadata(raw, path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a napari-dropsembles prior")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has prior format version {one_line(str(meta.get('format_version')), 40)} (written by "
            f"napari-dropsembles {one_line(meta.get('package_version', '?'), 40)}); this version {__version__} "
            f"reads format {FORMAT_VERSION}"
        )
    count = _model_count(meta, path)
    try:
        config = ModelConfig.from_dict(_json_object(meta, "config", path))
    except InputError as error:
        raise CheckpointError(f"{path}: its model config is not usable: {error}") from None
    training = _json_object(meta, "training", path, default="{}")
    try:
        check_memory(
            f"the model of {path.name}",
            decoder_parameters(config.hidden, config.blocks, config.feature_channels) * 4 * 8 * count,
            "use a smaller prior",
        )
        expected = expected_tensors(config, count)
        tensors = load_bytes(raw)
    except InputError as error:
        raise CheckpointError(str(error)) from None
    except (SafetensorError, RuntimeError, ValueError, TypeError, OverflowError) as error:
        raise CheckpointError(f"{path} is a corrupt or truncated prior: {one_line(error, 160)}") from None
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path} is missing tensor {name}; the file is incomplete or for another model")
        value = tensors[name]
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(value.shape)}, expected {shape} for its config"
            )
        _check_values(name, value, fisher=".fisher." in name, where=str(path))
    models = []
    try:
        for i in range(count):
            encoder = VoxelEncoder(config)
            prefix = f"model{i}.encoder."
            encoder.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            encoder.eval()
            decoder = {k: tensors[f"model{i}.decoder.{k}"].float() for k in DECODER_PARAMS}
            fisher = {k: tensors[f"model{i}.fisher.{k}"].float() for k in DECODER_PARAMS}
            models.append(PretrainedModel(encoder=encoder, decoder=decoder, fisher=fisher))
    except (RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the weights do not build its model ({one_line(error, 160)})") from None
    calibration = reference = None
    if "calibration" in meta:
        calibration = Calibration.from_file(tensors, meta["calibration"], str(path))
    if "shape_reference" in meta:
        reference = ShapeReference.from_file(tensors, meta["shape_reference"], str(path))
    return Prior(
        config=config, models=models, training=training, path=path, calibration=calibration, shape_reference=reference
    )
