"""NRRD, MetaImage and OME-Zarr in and out: a known sphere lands where it is, within half a voxel.

Input files are made here with the formats' own libraries (pynrrd, SimpleITK, zarr); files we
write are read back with those libraries too, as Slicer / ITK-SNAP / napari-ome-zarr would.
"""

from __future__ import annotations

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import zarr

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.formats import can_read, format_suffix
from napari_dropsembles.core.io.lps import LPS_TO_RAS
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing
from tests.formats_support import (
    CENTRE_LPS,
    GEOMETRIES,
    SPACING,
    assert_centre_within_half_voxel,
    centroid_index,
    lps_grid,
    lps_sphere_volume,
    ras,
    sphere_on,
)


def _write_nrrd_lps(path, geometry: str, space: str = "left-posterior-superior"):
    affine, shape = lps_grid(GEOMETRIES[geometry])
    data = sphere_on(affine, shape)
    if space == "right-anterior-superior":  # the same anatomy described in RAS
        affine = LPS_TO_RAS @ affine
    header = {
        "space": space,
        "space directions": affine[:3, :3].T,
        "space origin": affine[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(str(path), data, header)


@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
def test_nrrd_from_pynrrd_puts_the_sphere_at_its_world_position(tmp_path, geometry, space):
    path = tmp_path / "obs.nrrd"
    _write_nrrd_lps(path, geometry, space)
    volume = read_volume(path)
    assert np.allclose(volume.spacing, SPACING)
    assert_centre_within_half_voxel(volume, ras(CENTRE_LPS))


def test_nrrd_without_space_is_plain_mm_and_4d_data_is_refused(tmp_path):
    data = np.zeros((6, 7, 8), np.uint8)
    data[2:4, 3:5, 4:6] = 1
    nrrd.write(str(tmp_path / "plain.nrrd"), data, {"spacings": [0.5, 0.6, 2.0]})
    volume = read_volume(tmp_path / "plain.nrrd")
    assert np.allclose(volume.affine, affine_from_spacing((0.5, 0.6, 2.0)))
    nrrd.write(
        str(tmp_path / "vec.nrrd"),
        np.zeros((3, 4, 5, 6), np.float32),
        {"kinds": ["vector", "domain", "domain", "domain"]},
    )
    with pytest.raises(InputError, match="non-spatial"):
        read_volume(tmp_path / "vec.nrrd")
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: float\nsizes: 2 2\n")
    with pytest.raises(InputError, match="not a readable NRRD"):
        read_volume(tmp_path / "bad.nrrd")


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
def test_metaimage_from_simpleitk_puts_the_sphere_at_its_world_position(tmp_path, suffix, geometry):
    affine, shape = lps_grid(GEOMETRIES[geometry])
    image = sitk.GetImageFromArray(sphere_on(affine, shape).transpose(2, 1, 0))  # numpy (z, y, x)
    image.SetSpacing(tuple(SPACING))
    image.SetDirection(tuple(GEOMETRIES[geometry].ravel()))
    image.SetOrigin(tuple(affine[:3, 3]))
    sitk.WriteImage(image, str(tmp_path / f"obs{suffix}"))
    volume = read_volume(tmp_path / f"obs{suffix}")
    assert_centre_within_half_voxel(volume, ras(CENTRE_LPS))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("geometry", ["anisotropic", "oblique"])
def test_written_volume_opens_in_itk_at_the_lps_position(tmp_path, suffix, geometry):
    """ITK reads NRRD and MetaImage as Slicer does: the sphere's centroid maps to its LPS centre."""
    volume = lps_sphere_volume(geometry)
    path = write_volume(tmp_path / f"out{suffix}", volume, dtype=None)
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    assert array.dtype == np.uint8
    expected = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in CENTRE_LPS)))
    assert np.all(np.abs(centroid_index(array) - expected) < 0.5)
    back = read_volume(path)
    assert np.allclose(back.affine, volume.affine, atol=1e-5)
    assert np.array_equal(back.data, volume.data)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_nifti_ras_and_nrrd_lps_of_one_volume_agree_in_itk(tmp_path):
    """The same volume as NIfTI (RAS on disk) and NRRD (LPS on disk): ITK puts voxel i at one place."""
    volume = lps_sphere_volume("oblique")
    nifti = sitk.ReadImage(str(write_volume(tmp_path / "v.nii.gz", volume)))
    nrrd_image = sitk.ReadImage(str(write_volume(tmp_path / "v.nrrd", volume)))
    for index in [(0, 0, 0), (5, 7, 3), (20, 1, 9)]:
        assert np.allclose(
            nifti.TransformIndexToPhysicalPoint(index), nrrd_image.TransformIndexToPhysicalPoint(index), atol=1e-3
        )
    ras_point = volume.index_to_world(np.array([[5, 7, 3]]))[0]
    assert np.allclose(nrrd_image.TransformIndexToPhysicalPoint((5, 7, 3)), ras(ras_point), atol=1e-3)


def test_float_maps_keep_values_and_nrrd_header_says_lps(tmp_path):
    volume = lps_sphere_volume("anisotropic")
    values = Volume(np.random.default_rng(0).random(volume.shape).astype(np.float32), volume.affine)
    path = write_volume(tmp_path / "mean.nrrd", values)
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    assert data.dtype == np.float32 and np.array_equal(data, values.data)
    assert np.allclose(header["space origin"], ras(volume.origin))


# --------------------------------------------------------------------------- OME-Zarr


def _write_ome_zarr(path, *, version: str, unit: str, to_unit: float):
    affine, shape = lps_grid(np.eye(3))
    ras_affine = LPS_TO_RAS @ affine
    # an axis-aligned RAS grid: flip the x and y axes so that the scales are positive
    data = sphere_on(affine, shape)[::-1, ::-1, :]
    origin = ras_affine[:3, 3] + np.diag(ras_affine[:3, :3]) * (np.array(shape) - 1) * np.array([1, 1, 0])
    stored = np.ascontiguousarray(data.transpose(2, 1, 0))[None]  # (c, z, y, x)
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    group.create_array("s0", data=stored, chunks=stored.shape)
    multiscales = [
        {
            "version": version,
            "axes": [{"name": "c", "type": "channel"}]
            + [{"name": n, "type": "space", "unit": unit} for n in ("z", "y", "x")],
            "datasets": [
                {
                    "path": "s0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, *(SPACING[::-1] / to_unit)]},
                        {"type": "translation", "translation": [0.0, *(origin[::-1] / to_unit)]},
                    ],
                }
            ],
        }
    ]
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}


ZARR3 = int(zarr.__version__.split(".")[0]) >= 3


@pytest.mark.parametrize(("version", "unit", "to_unit"), [("0.4", "micrometer", 1e-3), ("0.5", "millimeter", 1.0)])
def test_ome_zarr_from_zarr_puts_the_sphere_at_its_world_position(tmp_path, version, unit, to_unit):
    if not ZARR3:
        pytest.skip("these stores are made with the zarr 3 API")
    path = tmp_path / "obs.ome.zarr"
    _write_ome_zarr(path, version=version, unit=unit, to_unit=to_unit)
    assert format_suffix(path) == ".ome.zarr" and can_read(path)
    volume = read_volume(path)
    assert np.allclose(volume.spacing, SPACING)
    assert_centre_within_half_voxel(volume, ras(CENTRE_LPS))


def test_ome_zarr_round_trip_flips_mirrored_axes_and_refuses_oblique(tmp_path):
    volume = lps_sphere_volume("anisotropic")  # RAS affine with negative x, y scales
    path = write_volume(tmp_path / "out.ome.zarr", volume, dtype=None)
    group = zarr.open_group(str(path), mode="r")
    meta = group.attrs["multiscales"][0]
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    assert all(s > 0 for s in meta["datasets"][0]["coordinateTransformations"][0]["scale"])
    back = read_volume(path)
    assert_centre_within_half_voxel(back, ras(CENTRE_LPS))
    assert np.allclose(back.spacing, SPACING)
    write_volume(path, volume)  # overwriting a store replaces it
    with pytest.raises(InputError, match="oblique"):
        write_volume(tmp_path / "oblique.zarr", lps_sphere_volume("oblique"))


def test_detached_nhdr_header_is_read(tmp_path):
    affine, shape = lps_grid(GEOMETRIES["oblique"])
    header = {"space": "left-posterior-superior", "space directions": affine[:3, :3].T, "space origin": affine[:3, 3]}
    nrrd.write(str(tmp_path / "obs.nhdr"), sphere_on(affine, shape), header, detached_header=True)
    assert_centre_within_half_voxel(read_volume(tmp_path / "obs.nhdr"), ras(CENTRE_LPS))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".ome.zarr"])
def test_napari_reader_places_every_format_in_world_mm(tmp_path, suffix):
    """The layer's frame (scale/translate, or an affine when oblique) puts the sphere at its RAS centre."""
    from napari_dropsembles._reader import get_reader

    geometry = "anisotropic" if suffix == ".ome.zarr" else "oblique"
    path = write_volume(tmp_path / f"obs{suffix}", lps_sphere_volume(geometry), dtype=None)
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "labels" and kwargs["name"] == "obs"
    if "affine" in kwargs:
        affine = np.asarray(kwargs["affine"])
    else:
        affine = affine_from_spacing(kwargs["scale"], kwargs["translate"])
    centre = affine @ np.append(centroid_index(data), 1.0)
    assert np.linalg.norm(centre[:3] - ras(CENTRE_LPS)) < 0.5 * SPACING.min()


@pytest.mark.parametrize("name", ["bad.nrrd", "bad.seg.nrrd", "bad.mha", "bad.mhd", "bad.dcm"])
def test_corrupt_files_give_one_line_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage, not a volume\n" * 8)
    with pytest.raises(InputError) as error:
        read_volume(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message


def test_empty_zarr_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputError, match="empty.zarr"):
        read_volume(tmp_path / "empty.zarr")


@pytest.mark.parametrize("kind", ["labels", "mean"])
def test_ome_zarr_is_written_as_a_pyramid_with_each_level_in_place(tmp_path, kind):
    """NGFF 0.4 multiscales: levels finest first, y and x halved (z kept), a scale and a translation per
    level; every level read on its own puts the sphere within half of its own voxel."""
    from napari_dropsembles.core.io.ome_zarr import read_zarr, write_zarr

    affine, shape = lps_grid(np.eye(3), shape=(70, 66, 12))
    mask = sphere_on(affine, shape, radius=14.0)
    data = mask if kind == "labels" else mask.astype(np.float32) * 0.9
    path = write_zarr(tmp_path / f"{kind}.ome.zarr", Volume(data, LPS_TO_RAS @ affine))
    group = zarr.open_group(str(path), mode="r")
    [meta] = group.attrs["multiscales"]
    assert meta["version"] == "0.4" and [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    datasets = meta["datasets"]
    shapes = [group[d["path"]].shape for d in datasets]
    assert shapes == [(12, 66, 70), (12, 33, 35), (12, 17, 18), (12, 9, 9)]  # MAX_LEVELS; odd sizes round up
    scales = [d["coordinateTransformations"][0] for d in datasets]
    translations = [d["coordinateTransformations"][1] for d in datasets]
    assert all(s["type"] == "scale" and t["type"] == "translation" for s, t in zip(scales, translations, strict=True))
    for level, s in enumerate(scales):  # the spec's order: scale first, then translation, one each
        assert np.allclose(s["scale"], SPACING[::-1] * [1, 2**level, 2**level])
    t0 = np.asarray(translations[0]["translation"])
    for level, t in enumerate(translations):
        shift = 0.0 if kind == "labels" else (2**level - 1) / 2  # block means: half a fine voxel per halving
        assert np.allclose(t["translation"], t0 + shift * SPACING[::-1] * [0, 1, 1])
    assert meta["type"] == ("nearest" if kind == "labels" else "local_mean")
    for level in range(4):
        volume = read_zarr(path, level=level)
        assert np.allclose(volume.spacing, SPACING * [2**level, 2**level, 1])
        assert_centre_within_half_voxel(volume, ras(CENTRE_LPS), mask=np.asarray(volume.data) >= 0.45)
    finest = read_volume(path)  # what the reader and napari open: level 0, full resolution, its own scale
    assert finest.shape == shape and np.allclose(finest.spacing, SPACING)
    assert np.array_equal(np.asarray(finest.data) > 0, mask[::-1, ::-1] > 0)  # LPS x, y stored as RAS (flipped)
    with pytest.raises(InputError, match="no scale level 4"):
        read_zarr(path, level=4)


def test_ome_zarr_levels_can_be_chosen_and_small_volumes_stay_single_level(tmp_path):
    from napari_dropsembles.core.io.ome_zarr import write_zarr

    volume = lps_sphere_volume("anisotropic")  # 28 x 26 in-plane: 14 x 13 is the last level >= 8
    path = write_zarr(tmp_path / "auto.ome.zarr", volume)
    assert len(zarr.open_group(str(path), mode="r").attrs["multiscales"][0]["datasets"]) == 2
    one = write_zarr(tmp_path / "one.ome.zarr", volume, levels=1)
    assert len(zarr.open_group(str(one), mode="r").attrs["multiscales"][0]["datasets"]) == 1
    assert_centre_within_half_voxel(read_volume(one), ras(CENTRE_LPS))
