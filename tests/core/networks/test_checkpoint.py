"""Priors on disk: exact round trip, atomic write, and clear errors for bad files."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from napari_dropsembles.core.config.errors import CheckpointError
from napari_dropsembles.core.networks.checkpoint import load_prior, save_prior
from tests.conftest import make_tiny_prior


def test_round_trip_is_exact(tmp_path):
    prior = make_tiny_prior(models=2)
    prior.training = {"seed": 3, "steps": 10}
    path = save_prior(prior, tmp_path / "p.safetensors")
    loaded = load_prior(path)
    assert loaded.config == prior.config
    assert loaded.training == {"seed": 3, "steps": 10}
    assert len(loaded.models) == 2
    for a, b in zip(prior.models, loaded.models, strict=True):
        for (ka, va), (kb, vb) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
        for key in a.decoder:
            assert torch.equal(a.decoder[key], b.decoder[key])
            assert torch.equal(a.fisher[key], b.fisher[key])
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp file left


def test_file_is_safetensors_without_pickle(tmp_path):
    path = save_prior(make_tiny_prior(), tmp_path / "p.safetensors")
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    assert header["__metadata__"]["format"] == "napari-dropsembles-prior"
    assert b"\x80\x04" not in raw[:16]  # not a pickle stream


def _write(tmp_path, data: bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda raw: raw[: len(raw) // 2], "truncated|corrupt"),
        (lambda raw: b"hello world, not a checkpoint", "not a valid prior|not a prior"),
        (lambda raw: b"", "too short"),
    ],
)
def test_corrupt_or_truncated_files_are_rejected(tmp_path, make, words):
    raw = save_prior(make_tiny_prior(), tmp_path / "good.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match=words):
        load_prior(_write(tmp_path, make(raw)))


def _with_metadata(tmp_path, **changes):
    from safetensors.torch import save

    prior = make_tiny_prior()
    path = save_prior(prior, tmp_path / "good.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    metadata.update(changes)
    return _write(tmp_path, save(tensors, metadata=metadata))


def test_incompatible_version_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="format version 99"):
        load_prior(_with_metadata(tmp_path, format_version="99"))


def test_foreign_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save

    with pytest.raises(CheckpointError, match="not a napari-dropsembles prior"):
        load_prior(_write(tmp_path, save({"w": torch.zeros(2)})))


def test_shape_mismatch_is_rejected(tmp_path):
    config = json.loads(_read_config(tmp_path))
    config["hidden"] = 32
    with pytest.raises(CheckpointError, match="shape|match"):
        load_prior(_with_metadata(tmp_path, config=json.dumps(config)))


def _read_config(tmp_path) -> str:
    from safetensors import safe_open

    path = save_prior(make_tiny_prior(), tmp_path / "c.safetensors")
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()["config"]


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_prior(tmp_path / "nope.safetensors")
