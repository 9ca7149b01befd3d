"""Property tests of the config objects: any value for any field builds a valid config or raises
one ConfigError line naming the field; nothing else escapes (TypeError, OverflowError, ...)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from napari_dropsembles.core.config.configs import FinetuneConfig, ModelConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import ConfigError, InputError
from tests.hypothesis_support import PROPERTY, assert_one_line

CONFIGS = [ModelConfig, FinetuneConfig, ReconstructionConfig]

any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.floats(-5, 5),
    st.integers(0, 100),
    st.text(max_size=6),
    st.sampled_from(["4", "2.5", "nan", "inf", "dropsembles", "cpu", "fp32", "unobserved"]),
    st.lists(st.integers(-5, 100), max_size=4),
    st.tuples(st.integers(1, 64), st.integers(1, 64), st.integers(1, 64)),
    st.complex_numbers(max_magnitude=10),
    st.sampled_from([np.int64(3), np.float32(0.5), np.bool_(True), np.float64("nan"), np.uint8(200)]),
)


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not isinstance(getattr(cls(), f.name), (FinetuneConfig,))]


def _check_accepted(config: object, name: str, default: object) -> None:
    """A built config holds plain, finite values of its field's kind."""
    value = getattr(config, name)
    if isinstance(default, bool):
        assert type(value) is bool
    elif isinstance(default, int):
        assert type(value) is int
    elif isinstance(default, float):
        assert type(value) is float and math.isfinite(value)
    elif isinstance(default, str):
        assert type(value) is str
    elif isinstance(default, tuple):
        assert type(value) is tuple and all(type(v) is int for v in value)
    elif default is None and value is not None:
        assert type(value) in (int, float) and math.isfinite(value) and value > 0


@PROPERTY
@given(data=st.data(), cls=st.sampled_from(CONFIGS), value=any_value)
def test_any_value_for_any_field(data, cls, value):
    field = data.draw(st.sampled_from(_fields(cls)), label="field")
    default = getattr(cls(), field.name)
    try:
        config = cls(**{field.name: value})
    except ConfigError as error:
        assert_one_line(error)
        assert error.field.split(".")[-1] == field.name
        return
    _check_accepted(config, field.name, default)


@PROPERTY
@given(data=st.data(), value=any_value)
def test_nested_finetune_field(data, value):
    """A wrong fine-tuning value is refused when its FinetuneConfig is built, naming the field."""
    field = data.draw(st.sampled_from(_fields(FinetuneConfig)), label="field")
    try:
        ReconstructionConfig(finetune=FinetuneConfig(**{field.name: value}))
    except ConfigError as error:
        assert_one_line(error)
        assert field.name in error.field


@PROPERTY
@given(values=st.fixed_dictionaries({}, optional={name: any_value for name in ModelConfig().to_dict()}))
def test_model_config_round_trips_or_refuses(values):
    """The checkpoint's config JSON: from_dict of any field mix is a valid config that round-trips."""
    try:
        config = ModelConfig.from_dict(values)
    except InputError as error:
        assert_one_line(error)
        return
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("value", [None, [], "x", 3, [("grid_size", 8)]])
def test_model_config_from_non_dict(value):
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict(value)
    assert_one_line(caught.value)
