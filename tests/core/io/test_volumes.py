import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.atomic import atomic_write_bytes, ensure_writable_dir
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.volumes.masks import binary_mask_from_volume, list_labels
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing


def _rotated_affine():
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 1.1, 3.0])
    affine[:3, 3] = [-12.5, 40.0, 7.25]
    return affine


def _data(shape=(5, 6, 7)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


def _no_temp_files(folder: Path):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize(
    "affine",
    [affine_from_spacing((0.8, 1.0, 2.5), (5.0, -3.0, 20.0)), _rotated_affine()],
    ids=["aniso_translated", "rotated"],
)
def test_nifti_round_trip(tmp_path, suffix, affine):
    vol = Volume(_data(), affine)
    out = write_volume(tmp_path / f"v{suffix}", vol)
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    img = nib.load(str(out))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert _no_temp_files(tmp_path) == []


def test_nifti_squeezes_trailing_singleton(tmp_path):
    affine = affine_from_spacing((1.0, 2.0, 3.0))
    nib.save(nib.Nifti1Image(_data((4, 5, 6, 1)), affine), str(tmp_path / "x.nii.gz"))
    vol = read_volume(tmp_path / "x.nii.gz")
    assert vol.shape == (4, 5, 6)
    np.testing.assert_allclose(vol.spacing, [1, 2, 3])


def test_write_uint8_nifti(tmp_path):
    vol = Volume(np.ones((3, 3, 3), np.uint8))
    out = write_volume(tmp_path / "m.nii.gz", vol, dtype=np.uint8)
    assert nib.load(str(out)).get_data_dtype() == np.uint8


def test_npy_read(tmp_path):
    np.save(tmp_path / "a.npy", _data())
    vol = read_volume(tmp_path / "a.npy")
    np.testing.assert_array_equal(vol.affine, np.eye(4))
    np.testing.assert_array_equal(vol.data, _data())


def test_npz_read_affine_and_spacing(tmp_path):
    affine = _rotated_affine()
    np.savez(tmp_path / "a.npz", data=_data(), affine=affine)
    np.testing.assert_allclose(read_volume(tmp_path / "a.npz").affine, affine)
    np.savez(tmp_path / "b.npz", vol=_data(), spacing=np.array([0.5, 0.5, 2.0]))
    vol = read_volume(tmp_path / "b.npz")
    np.testing.assert_allclose(vol.spacing, [0.5, 0.5, 2.0])
    np.testing.assert_array_equal(vol.data, _data())
    np.savez(tmp_path / "c.npz", a=_data(), b=_data())
    with pytest.raises(InputError, match="data"):
        read_volume(tmp_path / "c.npz")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".tif"])
def test_other_round_trips(tmp_path, suffix):
    affine = affine_from_spacing((2.5, 0.8, 0.8)) if suffix == ".tif" else _rotated_affine()
    vol = Volume(_data(), affine)
    back = read_volume(write_volume(tmp_path / f"v{suffix}", vol))
    np.testing.assert_array_equal(back.data, vol.data)
    expected = affine if suffix != ".npy" else np.eye(4)
    np.testing.assert_allclose(back.affine, expected, rtol=1e-5, atol=1e-6)


def test_tif_imagej_spacing(tmp_path):
    data = (_data((4, 8, 9)) * 100).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "s.tif",
        data,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.25),
        metadata={"spacing": 3.0, "unit": "mm", "axes": "ZYX"},
    )
    vol = read_volume(tmp_path / "s.tif")
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.spacing, [3.0, 0.25, 0.5])
    # micron units are converted to mm
    tifffile.imwrite(
        tmp_path / "u.tif",
        data,
        imagej=True,
        resolution=(1 / 200.0, 1 / 200.0),
        metadata={"spacing": 1000.0, "unit": "micron", "axes": "ZYX"},
    )
    np.testing.assert_allclose(read_volume(tmp_path / "u.tif").spacing, [1.0, 0.2, 0.2])


def test_tif_without_metadata_is_1mm(tmp_path):
    tifffile.imwrite(tmp_path / "p.tiff", np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    vol = read_volume(tmp_path / "p.tiff")
    assert vol.shape == (3, 4, 5)
    np.testing.assert_allclose(vol.spacing, [1, 1, 1])


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        read_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(err.value)


def test_unknown_suffix(tmp_path):
    (tmp_path / "x.png").write_bytes(b"123")
    with pytest.raises(InputError, match="unknown file type"):
        read_volume(tmp_path / "x.png")
    with pytest.raises(InputError, match="unknown file type"):
        write_volume(tmp_path / "x.png", Volume(_data()))


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii", "x.tif", "x.npy", "x.npz"])
def test_not_a_volume(tmp_path, name):
    (tmp_path / name).write_text("this is not a volume\n" * 20)
    with pytest.raises(InputError, match="not a readable") as err:
        read_volume(tmp_path / name)
    assert name in str(err.value)


def test_truncated_nifti(tmp_path):
    write_volume(tmp_path / "t.nii.gz", Volume(_data((20, 20, 20))))
    raw = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="t.nii.gz"):
        read_volume(tmp_path / "t.nii.gz")


def test_2d_and_4d_rejected(tmp_path):
    np.save(tmp_path / "two.npy", np.zeros((4, 5)))
    with pytest.raises(InputError, match=r"2D.*\(4, 5\)"):
        read_volume(tmp_path / "two.npy")
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.float32), np.eye(4)), str(tmp_path / "f.nii.gz"))
    with pytest.raises(InputError, match=r"4D.*\(3, 4, 5, 2\)"):
        read_volume(tmp_path / "f.nii.gz")


def test_empty_array_rejected(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 4, 5)))
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path / "e.npy")


# --------------------------------------------------------------------------- masks


def test_mask_binary_and_bool_pass_through():
    data = np.zeros((4, 4, 4))
    data[1:3, 1:3, 1:3] = 1
    affine = affine_from_spacing((1, 2, 3), (4, 5, 6))
    for arr in (data, data.astype(bool), data.astype(np.int16), data * 255):
        mask = binary_mask_from_volume(Volume(arr, affine))
        assert mask.data.dtype == np.uint8
        np.testing.assert_array_equal(mask.data, data.astype(np.uint8))
        np.testing.assert_array_equal(mask.affine, affine)


def test_mask_nan_and_inf():
    data = np.zeros((4, 4, 4))
    data[1, 1, 1] = 1
    data[0, 0, 0] = np.nan
    data[0, 0, 1] = np.nan
    with pytest.raises(InputError, match="contains 2 NaN/inf"):
        binary_mask_from_volume(Volume(data))
    data[0, 0, :2] = np.inf
    with pytest.raises(InputError, match="NaN/inf"):
        binary_mask_from_volume(Volume(data), threshold=0.5)


def test_mask_multilabel():
    data = np.zeros((5, 5, 5), np.int32)
    data[1, 1, 1:3] = 2
    data[3, 3, 3] = 7
    vol = Volume(data)
    assert list_labels(vol) == [2, 7]
    with pytest.raises(InputError, match=r"\[2, 7\].*label=N.*label=all"):
        binary_mask_from_volume(vol)
    assert binary_mask_from_volume(vol, label=7).data.sum() == 1
    assert binary_mask_from_volume(vol, label="2").data.sum() == 2
    assert binary_mask_from_volume(vol, label="all").data.sum() == 3
    with pytest.raises(InputError, match=r"label 3 is not in the volume.*\[2, 7\]"):
        binary_mask_from_volume(vol, label=3)
    # threshold on label data still applies
    assert binary_mask_from_volume(vol, threshold=5).data.sum() == 1
    # float label maps (e.g. NIfTI with scaling) behave like integer labels
    with pytest.raises(InputError, match="label=N"):
        binary_mask_from_volume(Volume(data.astype(np.float32)))


def test_mask_float_needs_threshold():
    data = np.random.default_rng(1).random((6, 6, 6))
    with pytest.raises(InputError, match="input_threshold=T"):
        binary_mask_from_volume(Volume(data))
    mask = binary_mask_from_volume(Volume(data), threshold=0.5)
    np.testing.assert_array_equal(mask.data, (data >= 0.5).astype(np.uint8))


def test_mask_empty_and_full():
    with pytest.raises(InputError, match="empty"):
        binary_mask_from_volume(Volume(np.zeros((3, 3, 3))))
    with pytest.raises(InputError, match="whole volume"):
        binary_mask_from_volume(Volume(np.ones((3, 3, 3))))
    data = np.random.default_rng(2).random((4, 4, 4))
    with pytest.raises(InputError, match="empty"):
        binary_mask_from_volume(Volume(data), threshold=2.0)
    with pytest.raises(InputError, match="whole volume"):
        binary_mask_from_volume(Volume(data), threshold=-1.0)


def test_label_and_threshold_exclusive():
    with pytest.raises(InputError, match="not both"):
        binary_mask_from_volume(Volume(np.eye(3)[None].repeat(3, 0)), label=1, threshold=0.5)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"abc")
    assert target.read_bytes() == b"abc"
    atomic_write_bytes(target, b"xyz")
    assert target.read_bytes() == b"xyz"
    assert _no_temp_files(target.parent) == []
    from napari_dropsembles.core.io import atomic as io

    assert os.stat(target).st_mode & 0o777 == 0o666 & ~io._UMASK  # not mkstemp's 0600


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import nibabel

    def boom(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nibabel, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_volume(tmp_path / "v.nii.gz", Volume(_data()))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "v.npy"
    write_volume(target, Volume(_data()))
    before = target.read_bytes()

    def boom(fh, *args, **kwargs):
        fh.write(b"half")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(RuntimeError):
        write_volume(target, Volume(_data() * 2))
    assert target.read_bytes() == before
    assert _no_temp_files(tmp_path) == []


def test_ensure_writable_dir(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot write to"):
        ensure_writable_dir(tmp_path / "file")
    with pytest.raises(InputError, match="cannot write to"):
        ensure_writable_dir(tmp_path / "file" / "sub")
    with pytest.raises(InputError, match="cannot write to"):
        write_volume(tmp_path / "file" / "v.nii.gz", Volume(_data()))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_ensure_writable_dir_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="cannot write to"):
            ensure_writable_dir(ro)
    finally:
        ro.chmod(0o700)


def test_a_ct_in_hounsfield_units_is_an_intensity_image_not_a_label_map():
    ct = np.full((12, 12, 12), -1000, dtype=np.int16)
    ct[3:9, 3:9, 3:9] = np.arange(6 * 6 * 6, dtype=np.int16).reshape(6, 6, 6) * 10 + 100  # many distinct values
    ct[5:7, 5:7, 5:7] = 1500
    with pytest.raises(InputError, match=r"intensities in \[-1000, 2250\].*input_threshold=200 \(bone"):
        binary_mask_from_volume(Volume(ct))
    mask = binary_mask_from_volume(Volume(ct), threshold=200)
    assert 0 < mask.data.sum() < mask.data.size
