"""Every config checks itself when built: wrong types or ranges raise ConfigError naming the field."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from napari_dropsembles.core.config.configs import (
    MAX_MEMBERS,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    ReconstructionConfig,
)
from napari_dropsembles.core.config.errors import ConfigError, InputError
from napari_dropsembles.core.config.validation import SEED_MAX
from tests.hypothesis_support import PROPERTY, assert_one_line

CONFIGS = (ModelConfig, FinetuneConfig, ReconstructionConfig, PretrainConfig)

# anything a caller (a script, a checkpoint's JSON, a widget) might put in a field
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 100), max_size=4),
    st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)),
    st.sampled_from(["dropsembles", "cpu", "fp32", "unobserved", "slices", "4", "nan"]),
)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "finetune"]


@pytest.mark.parametrize("cls", CONFIGS)
def test_defaults_are_valid_and_stable(cls):
    config = cls()
    assert dataclasses.replace(config) == config


@PROPERTY
@given(data=st.data())
@pytest.mark.parametrize("cls", CONFIGS)
def test_any_field_value_is_accepted_in_range_or_refused_naming_the_field(cls, data):
    name = data.draw(st.sampled_from(_field_names(cls)))
    value = data.draw(ANY_VALUE)
    try:
        config = cls(**{name: value})
    except ConfigError as error:
        assert error.field == name
        assert str(error).startswith(name) and "got" in str(error)
        assert_one_line(error)
        assert isinstance(error, InputError)  # front ends catch the project's own error types
        return
    stored = getattr(config, name)  # accepted: normalised to a plain, finite Python value
    if isinstance(stored, float):
        assert math.isfinite(stored)
    if isinstance(value, bool):
        assert isinstance(stored, bool)
    assert dataclasses.replace(config) == config  # and it builds again from what it holds


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (ReconstructionConfig, dict(members="4"), "members"),
        (ReconstructionConfig, dict(members=2.5), "members"),
        (ReconstructionConfig, dict(members=True), "members"),
        (ReconstructionConfig, dict(members=0), "members"),
        (ReconstructionConfig, dict(members=MAX_MEMBERS + 1), "members"),
        (ReconstructionConfig, dict(seed=2**70), "seed"),
        (ReconstructionConfig, dict(seed=-1), "seed"),
        (ReconstructionConfig, dict(resolution_mm=math.inf), "resolution_mm"),
        (ReconstructionConfig, dict(resolution_mm=0.0), "resolution_mm"),
        (ReconstructionConfig, dict(threshold=1.0), "threshold"),
        (ReconstructionConfig, dict(threshold=math.nan), "threshold"),
        (ReconstructionConfig, dict(method="bagging"), "method"),
        (ReconstructionConfig, dict(device="tpu"), "device"),
        (ReconstructionConfig, dict(precision="fp16"), "precision"),
        (ReconstructionConfig, dict(chunk=0), "chunk"),
        (ReconstructionConfig, dict(keep_members="yes"), "keep_members"),
        (ReconstructionConfig, dict(finetune=dict(steps=3)), "finetune"),
        (FinetuneConfig, dict(lr=math.nan), "lr"),
        (FinetuneConfig, dict(lr=math.inf), "lr"),
        (FinetuneConfig, dict(lr=0.0), "lr"),
        (FinetuneConfig, dict(ewc_lambda=math.inf), "ewc_lambda"),
        (FinetuneConfig, dict(ewc_lambda=-0.1), "ewc_lambda"),
        (FinetuneConfig, dict(steps=-1), "steps"),
        (FinetuneConfig, dict(steps=10.0), "steps"),
        (FinetuneConfig, dict(holdout=0.9), "holdout"),
        (FinetuneConfig, dict(points_per_step=0), "points_per_step"),
        (ModelConfig, dict(grid_size=3), "grid_size"),
        (ModelConfig, dict(grid_size="24"), "grid_size"),
        (ModelConfig, dict(grid_size=24.0), "grid_size"),
        (ModelConfig, dict(dropout=5.0), "dropout"),
        (ModelConfig, dict(dropout="0.1"), "dropout"),
        (ModelConfig, dict(sdf_scale=0.0), "sdf_scale"),
        (ModelConfig, dict(box_padding=-0.1), "box_padding"),
        (ModelConfig, dict(hidden=100_000_000), "hidden"),
        (ModelConfig, dict(encoder_channels=(12, 24)), "encoder_channels"),
        (ModelConfig, dict(encoder_channels=(12, 17, 48)), "encoder_channels"),  # GroupNorm: 17 in 2 groups
        (ModelConfig, dict(point_features=2), "point_features"),
        (PretrainConfig, dict(lr=math.inf), "lr"),
        (PretrainConfig, dict(batch_size=1_000_000_000), "batch_size"),
        (PretrainConfig, dict(steps=0), "steps"),
        (PretrainConfig, dict(slice_factors=(5.0, 1.0)), "slice_factors"),
        (PretrainConfig, dict(in_plane_mm=(0.7,)), "in_plane_mm"),
        (PretrainConfig, dict(seed=2**64), "seed"),
    ],
)
def test_wrong_values_are_refused_with_the_field(cls, kwargs, field):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.field == field
    assert info.value.nested("finetune").field == f"finetune.{field}"


def test_numpy_scalars_and_lists_are_normalised():
    config = ReconstructionConfig(members=np.int64(3), threshold=np.float32(0.25), seed=np.uint8(7))
    assert type(config.members) is int and config.members == 3
    assert type(config.threshold) is float and type(config.seed) is int
    model = ModelConfig(encoder_channels=[8, 16, 32])
    assert model.encoder_channels == (8, 16, 32)
    assert ReconstructionConfig(seed=SEED_MAX).seed == SEED_MAX


def test_model_config_from_a_checkpoint_json_checks_everything():
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    for bad, field in [([1, 2], "model config"), ({"grid": 24}, "model config"), ({"grid_size": -4}, "grid_size")]:
        with pytest.raises(ConfigError) as info:
            ModelConfig.from_dict(bad)
        assert info.value.field == field


def test_nested_finetune_config_is_the_one_place_for_fine_tuning_defaults():
    config = ReconstructionConfig()
    assert config.finetune == FinetuneConfig()
    changed = config.with_finetune(steps=5, ewc_lambda=0.0)
    assert changed.finetune.steps == 5 and changed.finetune.ewc_lambda == 0.0 and changed.members == config.members
    assert config.to_dict()["finetune"]["ewc_lambda"] == FinetuneConfig().ewc_lambda
    with pytest.raises(ConfigError, match="steps"):
        config.with_finetune(steps=-5)


def test_error_wording_is_left_to_the_front_end():
    error = ConfigError("finetune.ewc_lambda", "must be a finite number >= 0", math.inf)
    assert str(error) == "finetune.ewc_lambda must be a finite number >= 0, got inf"
    assert error.worded("--ewc") == "--ewc must be a finite number >= 0, got inf"
    assert error.worded("'EWC strength'").startswith("'EWC strength' must")
    long = ConfigError("method", "must be one of a, b", "x" * 500)
    assert len(str(long)) < 120
