"""OME-Zarr (NGFF 0.4 / 0.5 ``multiscales``) and plain zarr arrays, through zarr.

The finest scale level (``level=0``, the first dataset) is read with its ``scale`` and
``translation`` (dataset and multiscale transforms composed) and its axis units turned into mm.
Arrays are stored (z, y, x) as NGFF recommends and held here as (x, y, z), like NIfTI.

Written stores are a pyramid (NGFF 0.4, zarr format 2): level 0 at full resolution, then each
level halves the in-plane axes (y, x; the slice axis z is kept, as ome-zarr-py's default scaler
does) until the smaller in-plane size would drop under :data:`MIN_LEVEL_SIZE` or
:data:`MAX_LEVELS` levels are written. Each level has its own ``scale`` and ``translation``:
intensity maps are 2 x 2 block means (the voxel centre moves half a fine voxel), label maps keep
every second voxel (nearest, the centre stays). OME-Zarr has no rotation: an oblique volume
cannot be written (use NRRD or NIfTI for it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config.errors import InputError
from ..volumes.volume import Volume
from .atomic import atomic_folder, ensure_writable_dir
from .messages import one_line

_UNIT_TO_MM = {
    None: 1.0,
    "millimeter": 1.0,
    "micrometer": 1e-3,
    "nanometer": 1e-6,
    "centimeter": 10.0,
    "meter": 1000.0,
}
_WORLD = ("x", "y", "z")
MAX_LEVELS = 4
MIN_LEVEL_SIZE = 8  # no level whose smaller in-plane size is below this


def _axis(entry) -> tuple[str, str | None, str | None]:
    """(name, type, unit) of an NGFF axis (a dict, or a bare name in NGFF 0.3)."""
    if isinstance(entry, dict):
        return str(entry.get("name", "")).lower(), entry.get("type"), entry.get("unit")
    return str(entry).lower(), None, None


def _transforms(entries) -> tuple[np.ndarray | None, np.ndarray | None]:
    scale = translation = None
    for entry in entries or []:
        if entry.get("type") == "scale":
            scale = np.asarray(entry["scale"], dtype=float)
        elif entry.get("type") == "translation":
            translation = np.asarray(entry["translation"], dtype=float)
    return scale, translation


def read_zarr(path: str | os.PathLike, level: int = 0) -> Volume:
    """Read one level of an OME-Zarr image (default the finest, 0) or a plain zarr array as a Volume in mm."""
    import zarr  # zarr: loaded for OME-Zarr only

    path = Path(path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(f"{path}: not a readable zarr store ({one_line(exc, with_type=True)})") from None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    axes: list = []
    scale = translation = None
    if multiscales:
        meta = multiscales[0]
        axes = meta.get("axes", [])
        datasets = meta.get("datasets") or []
        if not 0 <= level < len(datasets):
            raise InputError(f"{path}: no scale level {level} (the store has {len(datasets)})")
        first = datasets[level]
        scale, translation = _transforms(first.get("coordinateTransformations"))
        outer_scale, outer_translation = _transforms(meta.get("coordinateTransformations"))
        n = len(axes) or (len(scale) if scale is not None else 0)
        scale = np.ones(n) if scale is None else scale
        translation = np.zeros(n) if translation is None else translation
        if outer_scale is not None:
            scale, translation = scale * outer_scale, translation * outer_scale
        if outer_translation is not None:
            translation = translation + outer_translation
        array = node[first["path"]]
    elif level:
        raise InputError(f"{path}: a plain zarr array has no scale level {level}")
    elif hasattr(node, "shape"):
        array = node
    else:
        arrays = list(node.array_keys()) if hasattr(node, "array_keys") else []
        if len(arrays) != 1:
            raise InputError(
                f"{path}: a zarr group without OME 'multiscales' and {len(arrays)} arrays; cannot tell the image"
            )
        array = node[arrays[0]]
    data = np.asarray(array[...])
    names = [_axis(a) for a in axes] or [("", None, None)] * data.ndim
    if len(names) != data.ndim:
        raise InputError(f"{path}: {len(names)} axes in the metadata for a {data.ndim}D array")
    spatial = [i for i, (name, kind, _) in enumerate(names) if kind == "space" or name in _WORLD]
    if not axes:
        spatial = [i for i in range(data.ndim) if data.shape[i] > 1][-3:] if data.ndim > 3 else list(range(data.ndim))
    others = [i for i in range(data.ndim) if i not in spatial]
    if len(spatial) != 3 or any(data.shape[i] != 1 for i in others):
        raise InputError(
            f"{path}: expected 3 spatial axes (others of size 1), got shape {data.shape} with axes {names}"
        )
    units = {names[i][2] for i in spatial}
    if len(units) != 1 or next(iter(units)) not in _UNIT_TO_MM:
        raise InputError(f"{path}: spatial units {sorted(map(str, units))} are not one length this reader knows")
    to_mm = _UNIT_TO_MM[next(iter(units))]
    data = data.reshape([data.shape[i] for i in spatial]) if others else data
    scale = np.ones(data.ndim) if scale is None else scale[spatial]
    translation = np.zeros(data.ndim) if translation is None else translation[spatial]
    spatial_names = [names[i][0] for i in spatial]
    if sorted(spatial_names) == sorted(_WORLD):  # stored (z, y, x) or any order: hold as (x, y, z)
        order = [spatial_names.index(n) for n in _WORLD]
        data, scale, translation = np.transpose(data, order), scale[order], translation[order]
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scale * to_mm)
    affine[:3, 3] = translation * to_mm
    return Volume(np.ascontiguousarray(data), affine)


def _halve_in_plane(stored: np.ndarray, labels: bool) -> np.ndarray:
    """One pyramid step of a (z, y, x) array: y and x halved (2 x 2 block mean, or every second voxel)."""
    if labels:
        return np.ascontiguousarray(stored[:, ::2, ::2])
    z, y, x = stored.shape
    padded = np.pad(stored.astype(np.float64), ((0, 0), (0, y % 2), (0, x % 2)), mode="edge")
    blocks = padded.reshape(z, (y + 1) // 2, 2, (x + 1) // 2, 2).mean(axis=(2, 4))
    return blocks.astype(stored.dtype if stored.dtype.kind == "f" else np.float32)


def pyramid(
    stored: np.ndarray, scale: np.ndarray, translation: np.ndarray, levels: int | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(array, scale, translation) of every level of a (z, y, x) array, finest first.

    ``levels``: how many (None: halve while the smaller in-plane size stays >= MIN_LEVEL_SIZE, at
    most MAX_LEVELS). A block mean's voxel centre is the middle of the 2 x 2 fine voxels it averages
    (translation + half a fine voxel); a nearest level keeps voxel 2i, whose centre is unchanged.
    """
    if levels is not None and levels < 1:
        raise InputError(f"an OME-Zarr pyramid needs at least one level, got {levels}")
    labels = stored.dtype.kind in "biu"
    out = [(stored, np.asarray(scale, float), np.asarray(translation, float))]
    while levels is None or len(out) < levels:
        array, s, t = out[-1]
        if levels is None and (len(out) >= MAX_LEVELS or min(array.shape[1:]) // 2 < MIN_LEVEL_SIZE):
            break
        if min(array.shape[1:]) < 2:
            raise InputError(f"cannot make {levels} levels of a {stored.shape} array: the in-plane size reaches 1")
        factor = np.array([1.0, 2.0, 2.0])
        shift = np.zeros(3) if labels else (factor - 1.0) / 2.0 * s
        out.append((_halve_in_plane(array, labels), s * factor, t + shift))
    return out


def write_zarr(path: str | os.PathLike, volume: Volume, *, name: str | None = None, levels: int | None = None) -> Path:
    """Write ``volume`` as a multiscale OME-Zarr (NGFF 0.4, zarr format 2), axes z, y, x in millimetre.

    ``levels``: the number of pyramid levels (None: as many as :func:`pyramid` chooses; 1: one level).
    """
    import zarr  # zarr: loaded for OME-Zarr only


    path = Path(path)
    rot = np.asarray(volume.affine[:3, :3], dtype=float)
    if not np.allclose(rot, np.diag(np.diag(rot)), atol=1e-6 * max(1.0, float(np.abs(rot).max()))):
        raise InputError(f"{path}: OME-Zarr stores no rotation and this volume is oblique; write .nrrd or .nii.gz")
    data = np.asarray(volume.data)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    spacing = np.diag(rot).copy()
    origin = volume.affine[:3, 3].copy()
    for axis in range(3):  # a mirrored axis: flip the data so that the scale is positive
        if spacing[axis] < 0:
            data = np.flip(data, axis=axis)
            origin[axis] += spacing[axis] * (data.shape[axis] - 1)
            spacing[axis] = -spacing[axis]
    stored = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    levels_data = pyramid(stored, spacing[::-1], origin[::-1], levels)
    ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    try:
        with atomic_folder(path, keep_others=False) as target:  # a reader never sees half a store
            _write_levels(zarr, target, levels_data, stored.dtype.kind in "biu", name or path.name.split(".")[0])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot write the OME-Zarr ({one_line(exc, with_type=True)})") from None
    return path


def _write_levels(zarr, target: Path, levels_data, labels: bool, name: str) -> None:
    """The pyramid and its NGFF metadata into the (empty) store folder ``target``."""
    kwargs = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    group = zarr.open_group(str(target), mode="w", **kwargs)
    datasets = []
    for index, (array, scale, translation) in enumerate(levels_data):
        chunks = tuple(min(s, 64) for s in array.shape)
        if hasattr(group, "create_array"):
            group.create_array(str(index), data=array, chunks=chunks)
        else:  # zarr 2
            group.create_dataset(str(index), data=array, chunks=chunks)
        datasets.append(
            {
                "path": str(index),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [float(v) for v in scale]},
                    {"type": "translation", "translation": [float(v) for v in translation]},
                ],
            }
        )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name,
            "axes": [{"name": n, "type": "space", "unit": "millimeter"} for n in ("z", "y", "x")],
            "datasets": datasets,
            "type": "nearest" if labels else "local_mean",
            "metadata": {
                "description": "y and x halved per level (z kept): "
                + ("every second voxel" if labels else "2 x 2 block mean, edges padded by repetition"),
                "writer": "napari-dropsembles",
            },
        }
    ]
