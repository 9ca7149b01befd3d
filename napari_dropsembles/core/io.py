"""Volume IO (NIfTI, TIFF, NumPy), input validation and atomic writes.

Every reader returns a :class:`Volume` whose affine maps voxel-centre indices to world mm;
every failure a user can cause raises :class:`InputError` with a message that names the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .budget import check_volume
from .errors import InputError, setting
from .outputs import clean_stale, temp_name
from .volume import Volume, affine_from_spacing, affine_problem

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".tif", ".tiff", ".npy", ".npz")

# Read once at import: files written through a temp file get the usual permissions, not mkstemp's 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)

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
    from .formats import VOLUME_FORMAT_SUFFIXES

    return VOLUME_SUFFIXES + tuple(s for s in VOLUME_FORMAT_SUFFIXES if s not in VOLUME_SUFFIXES)


def is_volume_path(path: str | os.PathLike) -> bool:
    """True for a file (or a DICOM or OME-Zarr folder) that :func:`read_volume` reads."""
    from .formats import can_read

    path = Path(path)
    return (path.is_file() and volume_suffix(path) in VOLUME_SUFFIXES) or (path.exists() and can_read(path))


def _full_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed; raise InputError when it cannot be written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"cannot write to {path}: it exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {path}: permission denied")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the folder of ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the suffix of ``path`` (libraries pick formats by suffix). On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    folder = ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    suffix = _full_suffix(path)
    clean_stale(folder, path.name)  # temporaries of a killed earlier write
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_name(path), suffix=f".tmp{suffix}", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError) and error.errno is not None and not error.filename:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error  # name the file
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + os.replace (never half-written)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- reading


def one_line(error: BaseException | str, limit: int = 200) -> str:
    """A library's message on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """nibabel and tifffile log their own multi-line complaints to stderr; ours is the one line."""
    import logging

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
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as fh:
            raw = header_class.from_fileobj(fh, check=False)
        return np.asarray(raw["pixdim"][1:4], dtype=float)
    except Exception:  # the header was read once already; a second failure only skips this check
        return None


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

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
    import tifffile

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
    from .formats import can_read, read_format_volume  # NRRD, MetaImage, DICOM, OME-Zarr: core/formats

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
    from .formats import format_suffix, write_format_volume  # NRRD, MetaImage, OME-Zarr: core/formats

    if not suffix and format_suffix(path):
        return write_format_volume(path, volume, dtype=dtype)
    if not suffix:
        raise InputError(f"{path}: unknown file type; expected one of {', '.join(all_volume_suffixes())}")
    data = np.asarray(volume.data)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    with atomic_path(path) as tmp:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

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
            import tifffile

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


# --------------------------------------------------------------------------- masks


def _integer_valued(data: np.ndarray) -> bool:
    if data.dtype.kind in "biu":
        return True
    return bool(np.all(data == np.round(data)))


def _looks_like_labels(volume: Volume) -> bool:
    """Whole numbers that a person could have drawn: none negative, at most ``MAX_LABELS`` labels
    (a CT in Hounsfield units is an intensity image, not 1,300 labels)."""
    from .input_kind import MAX_LABELS, labels_of

    data = np.asarray(volume.data)
    if data.size and float(data.min()) < 0:
        return False
    return len(labels_of(data)) <= MAX_LABELS


def list_labels(volume: Volume) -> list[int]:
    """Sorted non-zero integer labels of ``volume`` ([] for non-integer float data)."""
    data = np.asarray(volume.data)
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if not _integer_valued(finite):
            return []
        data = finite
    if data.dtype == np.bool_:
        return [1] if data.any() else []
    if data.dtype.kind == "u" and data.dtype.itemsize <= 2:
        counts = np.bincount(data.ravel())
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    values = np.unique(data)
    return [int(v) for v in values if v != 0]


def _parse_label(label: int | str) -> int | str:
    if isinstance(label, (bool, np.bool_)):
        raise InputError(f"label must be an integer or 'all', got {label!r}")
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, str):
        text = label.strip().lower()
        if text == "all":
            return "all"
        try:
            return int(text)
        except ValueError:
            pass
    raise InputError(f"label must be an integer or 'all', got {label!r}")


def check_binary_mask(observation: object) -> Volume:
    """The boundary of the reconstruction API: a :class:`Volume` of finite 0/1 values (bool or numbers)."""
    if not isinstance(observation, Volume):
        raise InputError(
            f"the observation must be a Volume (data + affine), got {type(observation).__name__}; "
            "read one with read_volume(path) or wrap an array as Volume(array, affine)"
        )
    data = np.asarray(observation.data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"the observation holds {data.dtype}, not numbers; pass a 0/1 mask")
    if data.dtype != np.bool_ and not np.all((data == 0) | (data == 1)):
        raise InputError(
            "the observation is not a 0/1 mask (it holds NaN, labels or fractional values); make one with "
            "binary_mask_from_volume(volume, label=..., threshold=...)"
        )
    return observation


def binary_mask_from_volume(
    volume: Volume, *, label: int | str | None = None, threshold: float | None = None
) -> Volume:
    """A uint8 0/1 mask (same affine) from a binary, label or probability volume.

    - NaN/inf anywhere: error.
    - ``threshold`` given: ``data >= threshold`` (any dtype). It cannot be combined with ``label``.
    - ``label`` given: ``data == label``, or ``data != 0`` for ``label='all'``.
    - otherwise: binary data (bool, values in {0, 1}, or one non-zero value such as {0, 255}) is
      used as is; integer-valued data with several labels needs ``label``; other float data
      needs ``threshold``.
    Float data holding only whole numbers (label maps saved as float) count as labels.
    The result must be neither empty nor fill the whole volume.
    """
    data = np.asarray(volume.data)
    if data.dtype.kind not in "biuf":
        raise InputError(f"unsupported data type {data.dtype} (expected numbers or booleans)")
    if data.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise InputError(f"the volume contains {n_bad} NaN/inf values; fix or mask them before reconstruction")
    if label is not None and threshold is not None:
        raise InputError(
            f"pass either a label ({setting('label')}) or a threshold ({setting('input_threshold')}), not both"
        )

    if threshold is not None:
        try:
            t = float(threshold)
        except (TypeError, ValueError) as exc:
            raise InputError(f"threshold must be a number, got {threshold!r}") from exc
        if not np.isfinite(t):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        mask = data >= t
        how = f"threshold {t:g}"
    elif label is not None:
        lab = _parse_label(label)
        if lab == "all":
            mask = data != 0
            how = "label 'all'"
        else:
            mask = data == lab
            how = f"label {lab}"
            if not mask.any():
                found = list_labels(volume)
                raise InputError(f"label {lab} is not in the volume; labels found: {found or 'none'}")
    else:
        if data.dtype == np.bool_:
            mask = data
            how = "binary data"
        elif (data.dtype.kind in "iu" or _integer_valued(data)) and _looks_like_labels(volume):
            labels = list_labels(volume)
            if len(labels) <= 1:  # {0, 1}, or one label such as {0, 255}
                mask = data != 0
                how = "binary data"
            else:
                shown = labels if len(labels) <= 20 else [*labels[:20], "..."]
                raise InputError(
                    f"the volume has several labels {shown}; choose one with {setting('label', 'N')} "
                    f"(e.g. {setting('label', labels[0])}), merge them with {setting('label', 'all')}, "
                    f"or pass {setting('input_threshold', 'T')}"
                )
        else:
            from .input_kind import intensity_level

            lo, hi = float(data.min()), float(data.max())
            level, why = intensity_level(data)
            raise InputError(
                f"the volume holds intensities in [{lo:g}, {hi:g}], not a mask or a label map; "
                f"pass {setting('input_threshold', 'T')} (voxels >= T become the object), "
                f"e.g. {setting('input_threshold', f'{level:g}')} ({why})"
            )

    mask = np.asarray(mask, dtype=np.uint8)
    n = int(mask.sum())
    if n == 0:
        raise InputError(
            f"the mask is empty (no voxel selected by {how}); check the file, {setting('label')} or "
            f"{setting('input_threshold')}"
        )
    if n == mask.size:
        raise InputError(
            f"the mask fills the whole volume ({how} selects every voxel); "
            f"check {setting('label')} or {setting('input_threshold')}, or pad the volume with background"
        )
    return Volume(mask, volume.affine)
