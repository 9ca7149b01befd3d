"""Volume IO (NIfTI, TIFF, NumPy), input validation and atomic writes.

Every reader returns a :class:`Volume` whose affine maps voxel-centre indices to world mm;
every failure a user can cause raises :class:`InputError` with a message that names the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume, affine_from_spacing

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
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + os.replace (never half-written)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- reading


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
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise InputError(f"{path}: affine must be 4x4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: the affine (voxel -> mm) is not usable:\n{affine}")
    return affine


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many kinds (ImageFileError, OSError, EOFError, zlib...)
        raise InputError(f"{path}: not a readable NIfTI volume ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    affine = np.asarray(img.affine, dtype=float)
    header = getattr(img, "header", None)
    if header is not None and hasattr(header, "get_xyzt_units"):
        unit = header.get_xyzt_units()[0]
        scale = {"meter": 1000.0, "micron": 1e-3}.get(unit, 1.0)
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
            data = tif.asarray()
            ij = tif.imagej_metadata or {}
            page = tif.pages[0]
            px_x = _tif_pixel_size(page, "XResolution")
            px_y = _tif_pixel_size(page, "YResolution")
            res_unit = page.tags.get("ResolutionUnit")
            res_unit = int(res_unit.value) if res_unit is not None else None
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF volume ({type(exc).__name__}: {exc})") from exc
    if data.ndim > 3:
        data = np.squeeze(data)  # ImageJ hyperstacks carry singleton T/C axes
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
            sz = 1.0
        if not np.isfinite(sz) or sz <= 0:
            sz = 1.0
    # Stored axes are (Z, Y, X): spacing per array axis.
    return data, affine_from_spacing((sz, sy, sx))


def _read_npy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.load(str(path), allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from exc
    return data, np.eye(4)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    if "data" in arrays:
        data = arrays["data"]
    else:
        candidates = [k for k in arrays if k not in ("affine", "spacing", "origin")]
        if len(candidates) != 1:
            raise InputError(
                f"{path}: cannot tell which array is the volume: keys {sorted(arrays)}; store it under the key 'data'"
            )
        data = arrays[candidates[0]]
    if "affine" in arrays:
        affine = np.asarray(arrays["affine"], dtype=float)
        if affine.shape != (4, 4):
            raise InputError(f"{path}: 'affine' must be 4x4, got shape {affine.shape}")
    elif "spacing" in arrays:
        spacing = np.asarray(arrays["spacing"], dtype=float).ravel()
        if spacing.shape != (3,) or np.any(spacing <= 0):
            raise InputError(f"{path}: 'spacing' must be 3 positive numbers, got {spacing}")
        origin = np.asarray(arrays.get("origin", np.zeros(3)), dtype=float).ravel()
        if origin.shape != (3,):
            raise InputError(f"{path}: 'origin' must be 3 numbers, got {origin}")
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
    path = Path(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise InputError(f"{path}: unknown file type; expected one of {', '.join(VOLUME_SUFFIXES)}")
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a volume file")
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
    if not suffix:
        raise InputError(f"{path}: unknown file type; expected one of {', '.join(VOLUME_SUFFIXES)}")
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
            if data.dtype in _IMAGEJ_DTYPES:
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
                )
    return path


# --------------------------------------------------------------------------- masks


def _integer_valued(data: np.ndarray) -> bool:
    if data.dtype.kind in "biu":
        return True
    return bool(np.all(data == np.round(data)))


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
        raise InputError("pass either a label (--label) or a threshold (--threshold), not both")

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
        elif data.dtype.kind in "iu" or _integer_valued(data):
            labels = list_labels(volume)
            if len(labels) <= 1:  # {0, 1}, or one label such as {0, 255}
                mask = data != 0
                how = "binary data"
            else:
                shown = labels if len(labels) <= 20 else [*labels[:20], "..."]
                raise InputError(
                    f"the volume has several labels {shown}; choose one with --label N "
                    "(e.g. --label " + str(labels[0]) + "), merge them with --label all, "
                    "or pass --threshold T"
                )
        else:
            lo, hi = float(data.min()), float(data.max())
            raise InputError(
                f"the volume holds continuous values in [{lo:g}, {hi:g}], not a 0/1 mask; "
                "pass --threshold T (voxels >= T become the object), e.g. --threshold 0.5"
            )

    mask = np.asarray(mask, dtype=np.uint8)
    n = int(mask.sum())
    if n == 0:
        raise InputError(f"the mask is empty (no voxel selected by {how}); check the file, --label or --threshold")
    if n == mask.size:
        raise InputError(
            f"the mask fills the whole volume ({how} selects every voxel); "
            "check --label or --threshold, or pad the volume with background"
        )
    return Volume(mask, volume.affine)
