"""Volume IO (NIfTI, TIFF, NumPy), input validation and atomic writes.

Every reader returns a :class:`Volume` whose affine maps voxel-centre indices to world mm;
every failure a user can cause raises :class:`InputError` with a message that names the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..config.budget import check_volume
from ..config.errors import InputError
from ..volumes.volume import Volume, affine_from_spacing, affine_problem
from .atomic import atomic_path
from .formats import VOLUME_FORMAT_SUFFIXES, can_read, format_suffix, read_format_volume, write_format_volume
from .messages import one_line

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".tif", ".tiff", ".npy", ".npz")

_UNIT_TO_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "um": 1e-3,
    "µm": 1e-3,
    "\\u00b5m": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "micrometer": 1e-3,
    "micrometre": 1e-3,
    "nm": 1e-6,
    "nanometer": 1e-6,
    "cm": 10.0,
    "centimeter": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "metre": 1000.0,
}


# --------------------------------------------------------------------------- helpers


def volume_suffix(path: str | os.PathLike) -> str:
    """The volume suffix of ``path`` (``.nii.gz`` counts as one), lower case; '' when unknown."""
    name = Path(path).name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def all_volume_suffixes() -> tuple[str, ...]:
    """Every suffix a reader takes: NIfTI, TIFF, numpy here and the formats of core/formats."""

    return VOLUME_SUFFIXES + tuple(s for s in VOLUME_FORMAT_SUFFIXES if s not in VOLUME_SUFFIXES)


def is_volume_path(path: str | os.PathLike) -> bool:
    """True for a file (or a DICOM or OME-Zarr folder) that :func:`read_volume` reads."""

    path = Path(path)
    return (path.is_file() and volume_suffix(path) in VOLUME_SUFFIXES) or (path.exists() and can_read(path))


@contextlib.contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """nibabel and tifffile log their own multi-line complaints to stderr; ours is the one line."""
    loggers = [logging.getLogger(name) for name in ("nibabel", "nibabel.global", "tifffile")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _unreadable(path: Path, what: str, error: BaseException) -> InputError:
    return InputError(f"{path}: not a readable {what} ({type(error).__name__}: {one_line(error)})")


def _check_array(data: np.ndarray, path: Path) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported data type {data.dtype} (expected numbers or booleans)")
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got {data.ndim}D data of shape {tuple(data.shape)}")
    if data.size == 0:
        raise InputError(f"{path}: the volume is empty (shape {tuple(data.shape)})")
    return data


def _check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    problem = affine_problem(affine)
    if problem is not None:
        raise InputError(
            f"{path}: the voxel -> mm affine is not usable: {problem}; "
            "fix the voxel spacing / orientation in the file's header and read it again"
        )
    return np.asarray(affine, dtype=float)


def _raw_nifti_pixdim(path: Path, header_class: type) -> np.ndarray | None:
    """pixdim[1:4] as stored in the file (nibabel silently turns zeros into 1 mm on load)."""
    from nibabel.openers import ImageOpener  # nibabel: slow to import, loaded when a NIfTI file is read or written

    try:
        with ImageOpener(str(path)) as fh:
            raw = header_class.from_fileobj(fh, check=False)
        return np.asarray(raw["pixdim"][1:4], dtype=float)
    except Exception:  # the header was read once already; a second failure only skips this check
        return None


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib  # nibabel: slow to import, loaded when a NIfTI file is read or written

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        itemsize = int(img.get_data_dtype().itemsize)
    except Exception as exc:  # nibabel raises many kinds (ImageFileError, OSError, EOFError, zlib...)
        raise _unreadable(path, "NIfTI volume", exc) from None
    check_volume(shape, itemsize, str(path))
    header = img.header
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        pixdim = _raw_nifti_pixdim(path, type(header))
        if pixdim is not None and not np.all(np.isfinite(pixdim) & (pixdim != 0)):
            shown = ", ".join(f"{v:g}" for v in pixdim)
            raise InputError(
                f"{path}: the header gives voxel size (pixdim) {shown} and no qform/sform, so the spacing is "
                "unknown (a zero is not read as 1 mm); write the real voxel size into the header"
            )
    try:
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(path, "NIfTI volume", exc) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    affine = np.asarray(img.affine, dtype=float)
    if "xyzt_units" in getattr(header, "keys", list)():
        code = int(header["xyzt_units"]) % 8  # NIfTI: 0 unknown (read as mm), 1 metre, 2 mm, 3 micron
        if code > 3:
            raise InputError(
                f"{path}: the header's spatial unit code {code} is not a NIfTI unit (metre, mm or micron); "
                "set xyzt_units in the header and read it again"
            )
        scale = {1: 1000.0, 3: 1e-3}.get(code, 1.0)
        if scale != 1.0:
            affine = affine.copy()
            affine[:3, :] *= scale
    return data, affine


def _tif_pixel_size(page, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    value = t.value
    try:
        num, den = value if isinstance(value, tuple) else (value, 1)
        num, den = float(num), float(den)
    except (TypeError, ValueError):
        return None
    if num <= 0 or den <= 0:
        return None
    return den / num


def _read_tif(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import tifffile  # tifffile: loaded when a TIFF file is read or written

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            series = tif.series[0]
            samples = int(getattr(page, "samplesperpixel", 1) or 1)
            photometric = int(getattr(page, "photometric", 1) or 1)
            if samples > 1 or photometric in (2, 5, 6):  # RGB, CMYK/separated, YCbCr
                raise InputError(
                    f"{path}: a colour image ({samples} samples per pixel, axes {series.axes}), not a label "
                    "volume; save the segmentation as a single-channel (grayscale) stack of slices"
                )
            check_volume(series.shape, np.dtype(series.dtype).itemsize, str(path))
            data = tif.asarray()
            ij = tif.imagej_metadata or {}
            shaped = (tif.shaped_metadata or ({},))[0] if not ij else {}
            if isinstance(shaped, dict) and "spacing" in shaped:
                ij = {"spacing": shaped["spacing"], "unit": shaped.get("unit", "mm")}
            px_x = _tif_pixel_size(page, "XResolution")
            px_y = _tif_pixel_size(page, "YResolution")
            res_unit = page.tags.get("ResolutionUnit")
            res_unit = int(res_unit.value) if res_unit is not None else None
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(path, "TIFF volume", exc) from None
    while data.ndim > 3 and 1 in data.shape:  # ImageJ hyperstacks carry singleton T/C axes
        data = np.squeeze(data, axis=data.shape.index(1))
    if data.ndim == 2 and ij.get("spacing") is not None:
        data = data[None]  # a one-slice ImageJ stack (its Z axis was dropped as a singleton)
    # Unit of the resolution tags: ImageJ's 'unit' when present; else the TIFF ResolutionUnit
    # (centimetre -> mm; 'none' taken as mm). Inch (the TIFF default, usually a print dpi) is ignored.
    unit_scale: float | None
    if ij:
        unit = str(ij.get("unit", "mm")).strip().lower()
        unit_scale = _UNIT_TO_MM.get(unit, 1.0)
    elif res_unit == 3:
        unit_scale = 10.0
    elif res_unit == 1:
        unit_scale = 1.0
    else:
        unit_scale = None
    sx = px_x * unit_scale if (px_x is not None and unit_scale is not None) else 1.0
    sy = px_y * unit_scale if (px_y is not None and unit_scale is not None) else sx
    sz = 1.0
    if ij and ij.get("spacing") is not None:
        try:
            sz = float(ij["spacing"]) * (unit_scale or 1.0)
        except (TypeError, ValueError):
            sz = float("nan")
        if not np.isfinite(sz) or sz <= 0:
            raise InputError(
                f"{path}: the ImageJ slice spacing is {ij['spacing']!r}, not a positive number; "
                "set the voxel depth (Image > Properties in ImageJ/Fiji) and save again"
            )
    # Stored axes are (Z, Y, X): spacing per array axis.
    return data, affine_from_spacing((sz, sy, sx))


def _npy_header(fh, path: Path, member: str = "") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, without reading the data."""
    where = f"{path}{':' + member if member else ''}"
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except Exception as exc:
        raise InputError(f"{where}: not a readable .npy array ({type(exc).__name__}: {one_line(exc)})") from None
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects, which are never loaded (pickle); save a numeric array")
    return tuple(int(n) for n in shape), dtype


def _read_npy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            shape, dtype = _npy_header(fh, path)
    except OSError as exc:
        raise _unreadable(path, ".npy array", exc) from None
    check_volume(shape, dtype.itemsize, str(path))
    try:
        data = np.load(str(path), allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(path, ".npy array", exc) from None
    return data, np.eye(4)


_NPZ_META = ("affine", "spacing", "origin")
_NPZ_META_MAX_BYTES = 1 << 16  # a 4x4 affine is 128 bytes of data; anything this big is not one


def _npz_member(npz, key: str, path: Path, *, volume: bool) -> np.ndarray:
    """One member of an open NpzFile, sized from its zip entry and .npy header before decompressing."""
    name = f"{key}.npy"
    info = npz.zip.getinfo(name)
    if volume:
        with npz.zip.open(name) as fh:
            shape, dtype = _npy_header(fh, path, key)
        check_volume(shape, dtype.itemsize, f"{path}:{key}")
        if info.file_size > math.prod(shape) * dtype.itemsize + (1 << 20):
            raise InputError(f"{path}:{key}: the member is larger than its header says; the archive is corrupt")
    elif info.file_size > _NPZ_META_MAX_BYTES:
        raise InputError(f"{path}: '{key}' holds {info.file_size} bytes, far too many for a {key}; fix the archive")
    return npz[key]


def _npz_numbers(value: np.ndarray, key: str, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        numbers = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        numbers = None
    if numbers is not None and key != "affine":
        numbers = numbers.ravel()
    if numbers is None or numbers.shape != shape or not np.all(np.isfinite(numbers)):
        want = "a 4x4 matrix of finite numbers" if key == "affine" else f"{shape[0]} finite numbers"
        raise InputError(f"{path}: '{key}' must be {want}, got {one_line(repr(value), 80)}")
    return numbers


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            keys = list(npz.files)
            if "data" in keys:
                data_key = "data"
            else:
                candidates = [k for k in keys if k not in _NPZ_META]
                if len(candidates) != 1:
                    raise InputError(
                        f"{path}: cannot tell which array is the volume: keys {sorted(keys)}; "
                        "store it under the key 'data'"
                    )
                data_key = candidates[0]
            data = _npz_member(npz, data_key, path, volume=True)
            meta = {k: _npz_member(npz, k, path, volume=False) for k in _NPZ_META if k in keys}
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(path, ".npz archive", exc) from None
    if "affine" in meta:
        affine = _npz_numbers(meta["affine"], "affine", path, (4, 4))
    elif "spacing" in meta:
        spacing = _npz_numbers(meta["spacing"], "spacing", path, (3,))
        if np.any(spacing <= 0):
            raise InputError(f"{path}: 'spacing' must be 3 positive numbers (mm), got {spacing.tolist()}")
        origin = _npz_numbers(meta.get("origin", np.zeros(3)), "origin", path, (3,))
        affine = affine_from_spacing(spacing, origin)
    else:
        affine = np.eye(4)
    return data, affine


_READERS = {
    ".nii": _read_nifti,
    ".nii.gz": _read_nifti,
    ".tif": _read_tif,
    ".tiff": _read_tif,
    ".npy": _read_npy,
    ".npz": _read_npz,
}


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D volume with its voxel -> world mm affine from NIfTI, TIFF, .npy or .npz."""
    if not isinstance(path, (str, os.PathLike)) or not str(os.fspath(path)).strip():
        raise InputError(f"a volume path must be a file name, got {one_line(repr(path), 80)}")
    path = Path(path)
    suffix = volume_suffix(path)

    if not suffix and can_read(path):
        clinical = read_format_volume(path)
        return Volume(_check_array(clinical.data, path), _check_affine(clinical.affine, path))
    if not suffix:
        raise InputError(
            f"{path}: unknown file type; expected one of {', '.join(all_volume_suffixes())} or a DICOM series folder"
        )
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({one_line(exc.strerror or exc)})") from None
    if not exists:
        raise InputError(f"{path}: file not found")
    if is_dir:
        raise InputError(f"{path}: is a folder, not a volume file")
    if not is_file:
        raise InputError(f"{path}: is not a regular file (a pipe or a device?); save the volume to a file")
    with _quiet_library_logs():
        data, affine = _READERS[suffix](path)
    data = _check_array(data, path)
    affine = _check_affine(affine, path)
    return Volume(data, affine)


# --------------------------------------------------------------------------- writing


_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def write_volume(path: str | os.PathLike, volume: Volume, dtype=np.float32) -> Path:
    """Write ``volume`` atomically as .nii/.nii.gz (affine in mm), .npy, .npz (data + affine) or .tif.

    ``dtype=None`` keeps the data's dtype. TIFF keeps only the spacing (axes stored as Z, Y, X),
    not the origin or a rotation.
    """
    path = Path(path)
    suffix = volume_suffix(path)

    if not suffix and format_suffix(path):
        return write_format_volume(path, volume, dtype=dtype)
    if not suffix:
        raise InputError(f"{path}: unknown file type; expected one of {', '.join(all_volume_suffixes())}")
    data = np.asarray(volume.data)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    with atomic_path(path) as tmp:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib  # nibabel: slow to import, loaded when a NIfTI file is read or written

            if data.dtype == np.bool_:
                data = data.astype(np.uint8)
            img = nib.Nifti1Image(data, volume.affine)
            img.set_qform(volume.affine, code=1)
            img.set_sform(volume.affine, code=1)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(tmp))
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, data, allow_pickle=False)
        elif suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, data=data, affine=volume.affine)
        else:
            import tifffile  # tifffile: loaded when a TIFF file is read or written

            sz, sy, sx = (float(s) for s in volume.spacing)
            if data.dtype == np.bool_:
                data = data.astype(np.uint8)
            if data.dtype in _IMAGEJ_DTYPES and min(data.shape) > 1:  # ImageJ drops axes of length 1
                tifffile.imwrite(
                    str(tmp),
                    data,
                    imagej=True,
                    resolution=(1.0 / sx, 1.0 / sy),
                    metadata={"spacing": sz, "unit": "mm", "axes": "ZYX"},
                )
            else:
                tifffile.imwrite(
                    str(tmp),
                    data,
                    photometric="minisblack",
                    resolution=(1.0 / sx, 1.0 / sy),
                    resolutionunit=1,
                    metadata={"spacing": sz, "unit": "mm"},  # shaped JSON: the slice spacing read back
                )
    return path
