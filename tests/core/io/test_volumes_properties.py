"""Property tests of the volume readers: any file gives a correct Volume or one InputError line."""

from __future__ import annotations

import io
import string
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_dropsembles.core.config import budget
from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing
from tests.hypothesis_support import PROPERTY, assert_one_line, scaled

SUFFIXES = [".nii.gz", ".nii", ".tif", ".npy", ".npz"]

shapes_3d = st.tuples(*[st.integers(1, 6)] * 3)
dtypes = st.sampled_from([np.uint8, np.int16, np.uint16, np.float32, np.float64])
spacings = st.tuples(*[st.floats(0.05, 20.0)] * 3)
origins = st.tuples(*[st.floats(-500, 500)] * 3)
odd_floats = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from([0.0, -0.0, 1e-300, 1e300])


def _read_or_refuse(path: Path) -> Volume | None:
    """read_volume: a usable Volume, or an InputError of one line (any other exception fails the test)."""
    try:
        volume = read_volume(path)
    except InputError as error:
        assert_one_line(error)
        return None
    assert volume.data.ndim == 3 and volume.data.size > 0
    assert np.all(np.isfinite(volume.affine)) and np.all(volume.spacing > 0)
    return volume


@pytest.fixture(autouse=True)
def _small_memory_limit():
    """Keep the size checks meaningful on a tiny budget (a few MB is plenty for these files)."""
    budget.set_memory_limit(0.05)
    yield
    budget.set_memory_limit(None)


@PROPERTY
@given(
    data=st.data(),
    shape=shapes_3d,
    dtype=dtypes,
    spacing=spacings,
    origin=origins,
    suffix=st.sampled_from(SUFFIXES),
)
def test_round_trip_every_format(data, shape, dtype, spacing, origin, suffix):
    """What write_volume writes, read_volume gives back: data, spacing and (but for TIFF) origin."""
    values = data.draw(hnp.arrays(dtype, shape, elements=st.integers(0, 200)))
    volume = Volume(values, affine_from_spacing(spacing, origin))
    with tempfile.TemporaryDirectory() as folder:
        path = write_volume(Path(folder) / f"v{suffix}", volume, dtype=None)
        back = read_volume(path)
    np.testing.assert_array_equal(back.data, values)
    if suffix == ".npy":  # a bare array carries no frame: 1 mm voxels at the origin
        np.testing.assert_array_equal(back.affine, np.eye(4))
        return
    np.testing.assert_allclose(back.spacing, spacing, rtol=1e-5)
    if suffix != ".tif":
        np.testing.assert_allclose(back.origin, origin, rtol=1e-5, atol=1e-3)


CLINICAL_SUFFIXES = [".nrrd", ".seg.nrrd", ".nhdr", ".mha", ".mhd"]  # core/formats, reached through read_volume


@PROPERTY
@given(blob=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES + CLINICAL_SUFFIXES))
def test_arbitrary_bytes_are_refused_in_one_line(blob, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(blob)
        _read_or_refuse(path)


@scaled(1.5)
@given(
    suffix=st.sampled_from(SUFFIXES),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.floats(0, 1),
)
@example(suffix=".nii", edits=[(0.30078125, 4)], cut=None)  # found by a long run: a bad unit code in the header
def test_corrupted_valid_files(suffix, edits, cut):
    """A valid file with bytes overwritten and/or truncated: a Volume or one line, never a traceback."""
    volume = Volume(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), affine_from_spacing((0.5, 1.0, 3.0)))
    with tempfile.TemporaryDirectory() as folder:
        path = write_volume(Path(folder) / f"v{suffix}", volume, dtype=None)
        raw = bytearray(path.read_bytes())
        for where, value in edits:
            raw[int(where * len(raw))] = value
        if cut is not None:
            raw = raw[: int(cut * len(raw))]
        path.write_bytes(bytes(raw))
        _read_or_refuse(path)


@PROPERTY
@given(matrix=hnp.arrays(np.float64, (4, 4), elements=odd_floats | st.floats(-5, 5)))
def test_any_affine_in_npz(matrix):
    """Every 4x4 affine: accepted only when finite with non-zero spacing; else one line naming it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.npz"
        np.savez(path, data=np.ones((2, 3, 4), np.uint8), affine=matrix)
        volume = _read_or_refuse(path)
    usable = np.all(np.isfinite(matrix)) and np.all(np.linalg.norm(matrix[:3, :3], axis=0) > 1e-6)
    if volume is None:
        assert not usable or abs(np.linalg.det(matrix[:3, :3])) < 1e-3 or np.any(np.abs(matrix) > 1e5)


@PROPERTY
@given(
    spacing=st.one_of(
        hnp.arrays(np.float64, st.integers(0, 5), elements=odd_floats | st.floats(-3, 3)),
        st.lists(st.text(max_size=4), max_size=4).map(np.array),
        st.text(max_size=6).map(np.array),
    ),
    origin=st.none() | hnp.arrays(np.float64, st.integers(0, 4), elements=odd_floats),
)
def test_any_spacing_and_origin_in_npz(spacing, origin):
    extra = {} if origin is None else {"origin": origin}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.npz"
        np.savez(path, data=np.ones((2, 3, 4), np.uint8), spacing=spacing, **extra)
        volume = _read_or_refuse(path)
    if volume is not None:
        np.testing.assert_allclose(volume.spacing, np.asarray(spacing, dtype=float).ravel())


@PROPERTY
@given(
    keys=st.lists(st.sampled_from(["data", "volume", "mask", "affine", "spacing", "origin", "x"]), unique=True),
    shape=st.lists(st.integers(0, 5), max_size=4).map(tuple),
)
def test_any_member_set_in_npz(keys, shape):
    arrays = {k: np.zeros(shape, np.uint8) for k in keys}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "k.npz"
        np.savez(path, **arrays)
        _read_or_refuse(path)


@PROPERTY
@given(shape=st.lists(st.integers(50, 10**6), min_size=3, max_size=3))
def test_npz_sizes_checked_before_decompressing(shape):
    """A member whose header claims a huge array is refused from its header: nothing is decompressed."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bomb.npz"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("data.npy", header.getvalue() + b"\0" * 1024)
        volume = _read_or_refuse(path)
    if int(np.prod(shape)) * 16 > budget.memory_limit_bytes():
        assert volume is None


@PROPERTY
@given(
    pixdim=st.tuples(*[odd_floats | st.floats(-4, 4)] * 3),
    qform=st.sampled_from([0, 1, 2]),
    sform=st.sampled_from([0, 1, 2]),
)
def test_nifti_any_pixdim_and_codes(pixdim, qform, sform):
    """Zero or NaN pixdim never becomes a silent 1 mm: read with the real spacing, or refused."""
    header = nib.Nifti1Header()
    header.set_data_shape((2, 3, 4))
    header.set_data_dtype(np.uint8)
    header["pixdim"][1:4] = pixdim
    header["qform_code"], header["sform_code"] = qform, sform
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.nii"
        with open(path, "wb") as fh:
            header.write_to(fh)
            fh.write(b"\0" * (int(header.get_data_offset()) - fh.tell()))
            fh.write(np.ones(24, np.uint8).tobytes())
        volume = _read_or_refuse(path)
    stored = np.asarray(header["pixdim"][1:4], dtype=float)
    if volume is not None and qform == 0 and sform == 0:
        np.testing.assert_allclose(volume.spacing, np.abs(stored), rtol=1e-4)


@PROPERTY
@given(
    shape=st.sampled_from([(5, 6, 3), (5, 6, 4), (2, 5, 6, 3), (7, 8)]),
    photometric=st.sampled_from(["rgb", "minisblack"]),
)
def test_colour_tiff_is_refused(shape, photometric):
    """A colour (RGB/RGBA) TIFF is never read as a stack of slices."""
    assume(not (photometric == "rgb" and shape[-1] not in (3, 4)))
    data = np.zeros(shape, np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.tif"
        tifffile.imwrite(path, data, photometric=photometric)
        volume = _read_or_refuse(path)
    if photometric == "rgb":
        assert volume is None
    elif volume is not None:
        assert volume.shape == shape


@PROPERTY
@given(spacing=odd_floats | st.floats(-2, 2) | st.text(alphabet=string.ascii_letters + "0123456789.-", max_size=3))
def test_imagej_slice_spacing(spacing):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ij.tif"
        tifffile.imwrite(path, np.zeros((3, 4, 5), np.uint8), imagej=True, metadata={"spacing": spacing})
        volume = _read_or_refuse(path)
    try:
        value = float(spacing)
    except (TypeError, ValueError):
        value = float("nan")
    if volume is not None:
        assert np.isclose(volume.spacing[0], value, rtol=1e-5)
    else:
        assert not (np.isfinite(value) and 1e-6 < value < 1e5)


@given(path=st.none() | st.integers() | st.floats() | st.just("") | st.just("   ") | st.binary(max_size=4))
@PROPERTY
def test_read_volume_rejects_non_paths(path):
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert_one_line(caught.value)
