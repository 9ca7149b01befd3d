"""The reconstruction API checks its observation where it is called: one InputError line, nothing deeper."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.volumes.masks import check_binary_mask
from napari_dropsembles.core.volumes.volume import Volume
from tests.conftest import make_tiny_prior
from tests.hypothesis_support import PROPERTY, assert_one_line


@pytest.mark.parametrize(
    "observation",
    [
        np.ones((4, 4, 4)),
        None,
        "mask.nii.gz",
        Volume(np.full((6, 6, 6), np.nan)),
        Volume(np.where(np.arange(216).reshape(6, 6, 6) % 2, 0.3, 0.7)),
        Volume(np.arange(216).reshape(6, 6, 6) % 3),
    ],
    ids=["ndarray", "None", "a path", "NaN", "0.3/0.7 floats", "labels"],
)
def test_reconstruct_refuses_what_is_not_a_mask(observation):
    with pytest.raises(InputError) as caught:
        reconstruct(observation, make_tiny_prior())
    assert_one_line(caught.value)


@PROPERTY
@given(data=hnp.arrays(st.sampled_from([np.uint8, np.int32, np.float32, np.float64, np.bool_]), (3, 4, 5)))
def test_any_array_is_a_mask_or_refused(data):
    try:
        check_binary_mask(Volume(data))
    except InputError as error:
        assert_one_line(error)
        assert data.dtype != np.bool_ and not np.all((data == 0) | (data == 1))


@PROPERTY
@given(
    matrix=hnp.arrays(
        np.float64, (4, 4), elements=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, -1.0])
    )
)
def test_volume_takes_only_a_usable_affine(matrix):
    """A Volume's affine is finite with non-zero spacing and independent axes, else one InputError line."""
    try:
        volume = Volume(np.zeros((2, 2, 2), np.uint8), matrix)
    except InputError as error:
        assert_one_line(error)
        return
    assert np.all(np.isfinite(volume.affine)) and np.all(volume.spacing > 0)
    assert abs(np.linalg.det(volume.affine[:3, :3])) > 0


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), np.diag([1.0, 1.0, np.nan, 1.0]), np.ones((3, 3)), "eye"])
def test_volume_refuses_a_singular_or_malformed_affine(affine):
    with pytest.raises(InputError) as caught:
        Volume(np.zeros((2, 2, 2)), affine)
    assert_one_line(caught.value)
