"""DICOM image series and DICOM-SEG (segments with names) in, DICOM-SEG out: pydicom + highdicom.

A series is read by highdicom (slices sorted by position, the affine from Image Position /
Orientation Patient and Pixel Spacing, rescale applied), in LPS, then turned into RAS. A
segmentation is written on the grid of the series it refers to (the thresholded result is
sampled at the source voxel centres), so that PACS viewers and Slicer overlay it on its image.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ... import __version__
from ..config.errors import InputError
from ..volumes.volume import Volume
from .atomic import atomic_path
from .lps import flip_lps_ras
from .messages import one_line
from .segments import Segment, SegmentedVolume, label_map_segments

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_MAX_FILES = 20000


def _one_line(exc: BaseException) -> str:
    return one_line(exc, with_type=True).replace(" Use force=True to force reading.", "")  # pydicom's hint is not ours


def _walk(folder: Path, depth: int = 3):
    """Files under ``folder`` (sorted, hidden ones skipped, at most ``depth`` folders down), lazily."""
    for root, dirs, files in os.walk(folder):
        level = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if level < depth else []
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def dicom_files(folder: Path, limit: int | None = None, *, max_checked: int | None = None) -> list[Path]:
    """DICOM files (by their 'DICM' preamble) in ``folder`` and its sub-folders (each sorted by name).

    ``limit``: stop after this many found; ``max_checked``: give up after opening this many files
    (telling a DICOM folder from another one without walking a whole disk).
    """
    from pydicom.misc import is_dicom  # DICOM library: loaded for DICOM only

    found: list[Path] = []
    for checked, path in enumerate(_walk(Path(folder))):
        if max_checked is not None and checked >= max_checked:
            break
        try:
            ok = path.is_file() and is_dicom(path)
        except OSError:
            ok = False
        if ok:
            found.append(path)
            if limit is not None and len(found) >= limit:
                break
        if len(found) > _MAX_FILES:
            raise InputError(f"{folder}: more than {_MAX_FILES} DICOM files; point at one series' folder")
    return found


def _headers(files: list[Path]) -> list[tuple[Path, object]]:
    import pydicom  # DICOM library: loaded for DICOM only

    out = []
    for path in files:
        try:
            out.append((path, pydicom.dcmread(str(path), stop_before_pixels=True)))
        except Exception as exc:
            raise InputError(f"{path}: not a readable DICOM file ({_one_line(exc)})") from None
    return out


def _series_files(path: Path) -> tuple[list[Path], bool]:
    """Files of the series to read and whether it is a segmentation.

    A file: its series (the files of its folder with the same Series Instance UID), or itself
    when it is a DICOM-SEG. A folder: its largest image series; a DICOM-SEG when it holds nothing else.
    """
    if path.is_file():
        ((_, header),) = _headers([path])
        if str(getattr(header, "SOPClassUID", "")) == SEG_SOP_CLASS:
            return [path], True
        uid = getattr(header, "SeriesInstanceUID", None)
        files = [p for p, h in _headers(dicom_files(path.parent)) if getattr(h, "SeriesInstanceUID", None) == uid]
        return files or [path], False
    images, segs = folder_contents(path)
    if images:
        return images, False
    return segs[:1], True


def folder_contents(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(the files of the largest image series, the DICOM-SEG files) of a folder and its sub-folders."""
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise InputError(f"{folder}: no DICOM file in this folder")
    series: dict[str, list[Path]] = defaultdict(list)
    segs: list[Path] = []
    for file, header in _headers(files):
        if str(getattr(header, "SOPClassUID", "")) == SEG_SOP_CLASS:
            segs.append(file)
        else:
            series[str(getattr(header, "SeriesInstanceUID", ""))].append(file)
    return (max(series.values(), key=len) if series else []), segs


def read_dicom_folder(folder: str | os.PathLike) -> list[tuple[Path, SegmentedVolume]]:
    """Everything a DICOM folder holds that opens as a volume: its largest image series (keyed by the
    folder), then each DICOM-SEG (keyed by its file), each with its segments' names and colours."""
    import pydicom  # DICOM library: loaded for DICOM only

    folder = Path(folder)
    images, segs = folder_contents(folder)
    out: list[tuple[Path, SegmentedVolume]] = []
    if images:
        try:
            datasets = [pydicom.dcmread(str(f)) for f in images]
        except Exception as exc:
            raise InputError(f"{folder}: not a readable DICOM series ({_one_line(exc)})") from None
        out.append((folder, SegmentedVolume(_from_hd(_hd_source_volume(datasets, folder)), ())))
    out.extend((seg, read_dicom_seg(seg)) for seg in segs)
    return out


def read_series_datasets(path: str | os.PathLike) -> list:
    """The pydicom datasets (with pixels) of the image series at ``path`` (a folder or one of its files)."""
    import pydicom  # DICOM library: loaded for DICOM only

    files, is_seg = _series_files(Path(path))
    if is_seg:
        raise InputError(f"{path}: holds a DICOM-SEG, not the image series it refers to")
    try:
        return [pydicom.dcmread(str(f)) for f in files]
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM series ({_one_line(exc)})") from None


def _hd_source_volume(datasets: list, where: Path, dtype=np.float32):
    import highdicom as hd  # DICOM library: loaded for DICOM only

    try:
        if len(datasets) == 1 and int(getattr(datasets[0], "NumberOfFrames", 1) or 1) > 1:
            return hd.imread(datasets[0].filename).get_volume(dtype=dtype)
        if len(datasets) < 2:
            raise InputError(f"{where}: a single 2D DICOM image; a volume needs a series of slices")
        return hd.get_volume_from_series(datasets, dtype=dtype)
    except InputError:
        raise
    except Exception as exc:  # highdicom raises ValueError/RuntimeError on irregular or mixed series
        raise InputError(
            f"{where}: the DICOM series is not one regular 3D volume ({_one_line(exc)}); "
            "check that the folder holds one series with equally spaced slices"
        ) from None


def _from_hd(volume) -> Volume:
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D DICOM volume, got array shape {array.shape}")
    return Volume(array, flip_lps_ras(volume.affine))


def read_dicom_seg(path: str | os.PathLike) -> SegmentedVolume:
    """A DICOM-SEG as a label map (label = segment number) with its segments' names and colours."""
    import highdicom as hd  # DICOM library: loaded for DICOM only

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
        numbers = list(seg.segment_numbers)
        volume = seg.get_volume(
            combine_segments=True, relabel=False, dtype=np.uint16 if max(numbers) > 255 else np.uint8
        )
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM-SEG volume ({_one_line(exc)})") from None
    segments = []
    for number in numbers:
        description = seg.get_segment_description(number)
        color = None
        lab = getattr(description, "RecommendedDisplayCIELabValue", None)
        if lab is not None:
            try:
                rgb = hd.color.CIELabColor.from_dicom_value(lab).to_rgb(clip=True)
                color = tuple(round(c / 255.0, 4) for c in rgb)
            except (ValueError, TypeError):
                color = None
        segments.append(Segment(int(number), str(description.segment_label), color))
    return SegmentedVolume(_from_hd(volume), tuple(segments))


def read_dicom(path: str | os.PathLike) -> SegmentedVolume:
    """A DICOM series (folder, or one of its files) as an image, or a DICOM-SEG with its segments."""
    path = Path(path)
    files, is_seg = _series_files(path)
    if is_seg:
        return read_dicom_seg(files[0])
    import pydicom  # DICOM library: loaded for DICOM only

    try:
        datasets = [pydicom.dcmread(str(f)) for f in files]
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM series ({_one_line(exc)})") from None
    return SegmentedVolume(_from_hd(_hd_source_volume(datasets, path)), ())


def _sample_on(volume: Volume, target_affine_ras: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """``volume`` sampled at every voxel centre of a target grid (0 outside), one slice at a time."""
    from scipy.ndimage import map_coordinates  # scipy.ndimage: slow to import, loaded when first used

    out = np.zeros(shape, dtype=np.float32 if order else np.asarray(volume.data).dtype)
    source = np.asarray(volume.data, dtype=np.float32) if order else np.asarray(volume.data)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for i in range(shape[0]):
        index = np.stack([np.full(j.size, i), j.ravel(), k.ravel()], axis=1).astype(float)
        world = index @ target_affine_ras[:3, :3].T + target_affine_ras[:3, 3]
        where = volume.world_to_index(world)
        out[i] = map_coordinates(source, where.T, order=order, mode="constant", cval=0).reshape(shape[1:])
    return out


def write_dicom_seg(
    path: str | os.PathLike,
    labels: Volume,
    source: str | os.PathLike,
    segments: tuple[Segment, ...] | list[Segment] | None = None,
    *,
    fractional: bool = False,
    description: str = "Dropsembles reconstruction",
) -> Path:
    """Write a DICOM-SEG referencing the image series at ``source``, on that series' grid.

    ``labels`` is a label map (a BINARY segmentation, one segment per label, nearest sampling)
    or, with ``fractional=True``, a probability map in [0, 1] (one FRACTIONAL segment, trilinear).
    """
    import highdicom as hd  # DICOM library: loaded for DICOM only
    from pydicom.sr.codedict import codes  # DICOM library: loaded for DICOM only


    path = Path(path)
    datasets = read_series_datasets(source)
    grid = _hd_source_volume(datasets, Path(source))
    target = flip_lps_ras(grid.affine)
    if fractional:
        probability = np.clip(_sample_on(labels, target, grid.spatial_shape, order=1), 0.0, 1.0)
        segments = tuple(segments) if segments else (Segment(1, "probability"),)
        pixels = probability.astype(np.float32)
        seg_type = hd.seg.SegmentationTypeValues.FRACTIONAL
        numbered = [(1, segments[0])]
    else:
        data, segments = label_map_segments(path, labels, segments, "a BINARY segmentation")
        sampled = _sample_on(Volume(data.astype(np.int32), labels.affine), target, grid.spatial_shape, order=0)
        numbered = list(enumerate(sorted(segments, key=lambda s: s.label), start=1))
        pixels = np.zeros(grid.spatial_shape, dtype=np.uint8 if len(numbered) < 256 else np.uint16)
        for number, segment in numbered:
            pixels[sampled == segment.label] = number
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    if not np.any(pixels):
        raise InputError(f"{path}: the segmentation does not overlap the source series {source}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-dropsembles", family=codes.DCM.ArtificialIntelligence, version=str(__version__)
    )
    descriptions = []
    for number, segment in numbered:
        rgb = tuple(int(round(255 * c)) for c in segment.display_color())
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment.name[:64],
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.AnatomicalStructure,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
        )
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=grid.with_array(pixels),
            segmentation_type=seg_type,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 100,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="napari-dropsembles",
            manufacturer_model_name="Dropsembles",
            software_versions=str(__version__),
            device_serial_number="0",
            series_description=description[:64],
        )
    except Exception as exc:
        raise InputError(f"{path}: cannot build the DICOM-SEG from {source} ({_one_line(exc)})") from None
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path
