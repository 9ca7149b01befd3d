"""The unusual-shape score: slice descriptors of an observation against a prior's training shapes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.config.errors import CheckpointError
from napari_dropsembles.core.data.corrupt import random_corruption, simulate_observation
from napari_dropsembles.core.data.vertebra import random_vertebra
from napari_dropsembles.core.slices.unusual_shape import DESCRIPTORS, ShapeReference, shape_descriptors
from tests.conftest import sphere_volume


def _vertebra_observations(count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        corruption = random_corruption(rng, slice_factors=(2.0, 4.0), erosion_prob=0, noise_prob=0, slice_axes=(0, 2))
        out.append(simulate_observation(random_vertebra(rng), corruption, rng))
    return out


@pytest.fixture(scope="module")
def reference() -> ShapeReference:
    vectors = [shape_descriptors(v) for v in _vertebra_observations(40)]
    return ShapeReference.fit(vectors, {"shapes": "procedural vertebrae (test)"})


def test_descriptors_are_finite_and_named():
    vector = shape_descriptors(_vertebra_observations(1)[0])
    assert vector is not None and vector.shape == (len(DESCRIPTORS),)
    assert np.isfinite(vector).all()


def test_an_observation_with_nothing_to_describe_has_no_descriptors():
    empty = sphere_volume().with_data(np.zeros(sphere_volume().shape, np.uint8))
    assert shape_descriptors(empty) is None


def test_a_ball_is_unusual_for_a_vertebra_reference_and_vertebrae_are_not(reference):
    ball = reference.assess(sphere_volume(radius_mm=12.0, size_mm=40.0))
    assert ball["unusual"] and ball["score"] > reference.threshold
    usual = [reference.assess(v)["unusual"] for v in _vertebra_observations(10, seed=1)]
    assert sum(usual) <= 2  # the threshold is the 99th percentile of the training observations


def test_the_reference_round_trips_through_its_file_form(reference):
    tensors, meta = reference.to_file()
    again = ShapeReference.from_file(tensors, meta, "test")
    assert np.allclose(again.mean, reference.mean) and again.threshold == reference.threshold
    assert again.provenance == reference.provenance


def test_a_damaged_reference_is_one_checkpoint_error(reference):
    tensors, meta = reference.to_file()
    tensors["shape_reference.mean"] = tensors["shape_reference.mean"][:3]
    with pytest.raises(CheckpointError, match="shape reference"):
        ShapeReference.from_file(tensors, meta, "test")
    with pytest.raises(CheckpointError, match="not readable"):
        ShapeReference.from_file(tensors, "{", "test")


def test_too_few_shapes_make_no_reference():
    with pytest.raises(ValueError, match="at least"):
        ShapeReference.fit([np.zeros(len(DESCRIPTORS))] * 3)
