"""Property tests of the prior loader: any file gives a usable Prior or one CheckpointError line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from napari_dropsembles.core.config import budget
from napari_dropsembles.core.config.configs import ModelConfig
from napari_dropsembles.core.config.errors import CheckpointError
from napari_dropsembles.core.networks.checkpoint import Prior, expected_tensors, load_prior, save_prior
from tests.conftest import TINY, make_tiny_prior
from tests.hypothesis_support import PROPERTY, assert_one_line, scaled


@pytest.fixture(scope="module")
def good_file() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a valid two-model tiny prior."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_prior(make_tiny_prior(models=2), Path(folder) / "p.safetensors")
        raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8 : 8 + size])["__metadata__"]
    return dict(load_bytes(raw)), meta


def _load(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Prior | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.safetensors"
        path.write_bytes(save_bytes(tensors, metadata=meta))
        return _load_path(path)


def _load_path(path: Path) -> Prior | None:
    """load_prior: a usable Prior, or a CheckpointError of one line (any other exception fails the test)."""
    try:
        prior = load_prior(path)
    except CheckpointError as error:
        assert_one_line(error)
        return None
    for model in prior.models:
        for part in (model.decoder, model.fisher):
            assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in part.values())
        assert all((v >= 0).all() for v in model.fisher.values())
    return prior


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@PROPERTY
@given(field=st.sampled_from(sorted(TINY.to_dict())), value=json_values)
def test_any_config_field_value(good_file, field, value):
    """One config field replaced by any JSON value: loaded only if it still builds the saved tensors."""
    tensors, meta = good_file
    config = json.loads(meta["config"])
    config[field] = value
    prior = _load(tensors, {**meta, "config": json.dumps(config)})
    if prior is not None:
        assert isinstance(prior.config, ModelConfig)


@PROPERTY
@given(
    key=st.sampled_from(["config", "training", "models", "format_version", "format", "package_version"]),
    value=json_values,
    as_json=st.booleans(),
)
def test_any_metadata_value(good_file, key, value, as_json):
    tensors, meta = good_file
    text = json.dumps(value) if as_json else str(value)
    prior = _load(tensors, {**meta, key: text})
    if prior is not None and key == "models":
        assert len(prior.models) == int(text)


@PROPERTY
@given(header=json_values)
def test_any_json_header(header):
    """A safetensors-shaped file whose JSON header is anything at all."""
    body = json.dumps(header).encode()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "h.safetensors"
        path.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 16)
        assert _load_path(path) is None


TENSOR_EDITS = ["drop", "dtype", "shape", "nan", "inf", "negative"]


@scaled(1.5)
@given(
    data=st.data(),
    edit=st.sampled_from(TENSOR_EDITS),
    dtype=st.sampled_from([torch.bool, torch.int8, torch.int32, torch.int64, torch.float16, torch.float64]),
)
def test_any_tensor_edit(good_file, data, edit, dtype):
    """A tensor missing, of another dtype or shape, non-finite, or a negative Fisher: refused in one
    line that names the tensor, except for float dtypes, which are read as float32."""
    tensors, meta = good_file
    name = data.draw(st.sampled_from(sorted(tensors)))
    edited = dict(tensors)
    value = tensors[name].clone()
    if edit == "drop":
        del edited[name]
    elif edit == "dtype":
        edited[name] = value.to(dtype)
    elif edit == "shape":
        edited[name] = torch.zeros(value.numel() + 1)
    elif edit in ("nan", "inf"):
        flat = value.reshape(-1)
        flat[data.draw(st.integers(0, flat.numel() - 1))] = float(edit)
        edited[name] = flat.reshape(value.shape)
    else:
        edited[name] = value - (value.abs().max() + 1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.safetensors"
        path.write_bytes(save_bytes(edited, metadata=meta))
        try:
            prior = load_prior(path)
        except CheckpointError as error:
            assert_one_line(error)
            assert name in str(error)
            return
    harmless = (edit == "dtype" and dtype.is_floating_point) or (edit == "negative" and ".fisher." not in name)
    assert harmless, f"{edit} of {name} was accepted"
    assert prior is not None


@scaled(1.5)
@given(
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.floats(0, 1),
)
def test_corrupted_bytes(good_file, edits, cut):
    tensors, meta = good_file
    raw = bytearray(save_bytes(tensors, metadata=meta))
    for where, value in edits:
        raw[int(where * len(raw))] = value
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.safetensors"
        path.write_bytes(bytes(raw))
        _load_path(path)


@PROPERTY
@given(value=st.integers() | st.floats() | st.sampled_from(["", " "]) | st.binary(max_size=4) | st.lists(st.integers()))
def test_load_prior_rejects_non_paths(value):
    with pytest.raises(CheckpointError) as caught:
        load_prior(value)
    assert_one_line(caught.value)


def test_huge_config_is_refused_before_building(good_file):
    """A config asking for a huge model is refused from its numbers, before anything is allocated."""
    tensors, meta = good_file
    config = {**json.loads(meta["config"]), "hidden": 4096, "blocks": 64}
    with tempfile.TemporaryDirectory() as folder, budget.memory_limit(0.01):
        path = Path(folder) / "p.safetensors"
        path.write_bytes(save_bytes(tensors, metadata={**meta, "config": json.dumps(config)}))
        with pytest.raises(CheckpointError, match="memory") as caught:
            load_prior(path)
    assert_one_line(caught.value)


def test_expected_tensors_match_a_saved_prior(good_file):
    tensors, meta = good_file
    expected = expected_tensors(TINY, 2)
    assert set(expected) == set(tensors)
    assert all(tuple(tensors[k].shape) == shape for k, shape in expected.items())
