"""Known spheres on anisotropic and oblique LPS grids, for the format round-trip tests."""

from __future__ import annotations

import numpy as np

from napari_dropsembles.core.io.lps import LPS_TO_RAS
from napari_dropsembles.core.volumes.volume import Volume

SPACING = np.array([0.8, 1.1, 2.5])  # anisotropic, thick third axis
CENTRE_LPS = np.array([-12.3, 25.6, -40.2])  # sphere centre, LPS mm (x left, y posterior)
RADIUS_MM = 7.0


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


GEOMETRIES = {"anisotropic": np.eye(3), "oblique": rotation(30.0, 20.0)}


def lps_grid(direction: np.ndarray, shape=(28, 26, 12), spacing=SPACING) -> tuple[np.ndarray, tuple[int, int, int]]:
    """index -> LPS affine of a grid that holds the sphere off its middle (by a few voxels)."""
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    middle = (np.asarray(shape) - 1) / 2 + np.array([3.3, -2.2, 1.4])  # off-centre: a mirrored axis shows
    affine[:3, 3] = CENTRE_LPS - affine[:3, :3] @ middle
    return affine, shape


def sphere_on(affine_lps: np.ndarray, shape, centre_lps=CENTRE_LPS, radius=RADIUS_MM) -> np.ndarray:
    """uint8 sphere sampled at the voxel centres of an LPS grid."""
    index = np.indices(shape).reshape(3, -1).T
    points = index @ affine_lps[:3, :3].T + affine_lps[:3, 3]
    return (np.linalg.norm(points - centre_lps, axis=1) <= radius).reshape(shape).astype(np.uint8)


def lps_sphere_volume(geometry: str) -> Volume:
    """The sphere as a package Volume (index -> RAS)."""
    affine, shape = lps_grid(GEOMETRIES[geometry])
    return Volume(sphere_on(affine, shape), LPS_TO_RAS @ affine)


def centroid_index(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(np.asarray(mask) > 0).mean(axis=0)


def assert_centre_within_half_voxel(volume: Volume, centre_ras: np.ndarray, mask: np.ndarray | None = None) -> None:
    """The mask's centroid (index space) is within half a voxel, on every axis, of where the
    volume's own affine puts the known world centre."""
    mask = np.asarray(volume.data) > 0 if mask is None else mask
    expected = volume.world_to_index(np.asarray(centre_ras, dtype=float)[None])[0]
    found = centroid_index(mask)
    assert np.all(np.abs(found - expected) < 0.5), (found, expected)


def ras(point_lps: np.ndarray) -> np.ndarray:
    return np.asarray(point_lps, dtype=float) * np.array([-1.0, -1.0, 1.0])


def write_ct_series(folder, affine_lps: np.ndarray, data: np.ndarray, *, series_uid: str | None = None) -> list:
    """A CT series made with pydicom: slices along the grid's third axis, columns along its first.

    Returns the file paths. Pixel (row r, column c) of slice k is voxel (c, r, k) of ``data``.
    """
    from pathlib import Path

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns_axis, rows_axis, slice_axis = (affine_lps[:3, a] for a in range(3))
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    paths = []
    for k in range(data.shape[2]):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Sphere", "0001", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality, ds.Manufacturer = series, 3, "CT", "test"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in affine_lps[:3, 3] + k * slice_axis]
        ds.ImageOrientationPatient = [float(v) for v in (*(columns_axis / spacing[0]), *(rows_axis / spacing[1]))]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows, between columns
        ds.SliceThickness = float(spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype(np.uint16)).tobytes()
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths
