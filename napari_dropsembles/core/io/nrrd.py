"""NRRD volumes and 3D Slicer segmentations (``.seg.nrrd``) through pynrrd.

The NRRD ``space`` says what the world axes mean; every anatomical space is turned into RAS
here, and files are written in ``left-posterior-superior`` (what Slicer and ITK write). A Slicer
segmentation keeps its segments in ``SegmentN_*`` header fields: their names and colours are
read into :class:`Segment` and written back, so Slicer opens the file as a segmentation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config.errors import InputError
from ..volumes.volume import Volume
from .atomic import atomic_path
from .messages import one_line
from .segments import Segment, SegmentedVolume, label_map_segments

# sign of each world axis relative to RAS
_SPACE_SIGNS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "scanner-xyz": (-1.0, -1.0, 1.0),  # DICOM patient coordinates
    "3d-right-handed": (1.0, 1.0, 1.0),
}
_UNITS_TO_MM = {"mm": 1.0, "millimeter": 1.0, "um": 1e-3, "micron": 1e-3, "cm": 10.0, "m": 1000.0}
_SPATIAL_KINDS = ("domain", "space")


def _read_raw(path: Path) -> tuple[np.ndarray, dict]:
    import nrrd  # pynrrd: loaded for NRRD files only

    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:  # pynrrd raises NRRDError, OSError, ValueError, zlib errors...
        raise InputError(f"{path}: not a readable NRRD file ({one_line(exc, with_type=True)})") from None
    return np.asarray(data), header


def _spatial_axes(data: np.ndarray, header: dict, path: Path) -> list[int]:
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    directions = header.get("space directions")
    if kinds and len(kinds) == data.ndim:
        axes = [i for i, k in enumerate(kinds) if k in _SPATIAL_KINDS]
    elif directions is not None:
        rows = np.asarray(directions, dtype=float)
        axes = [i for i in range(data.ndim) if i < len(rows) and np.all(np.isfinite(rows[i]))]
    else:
        axes = list(range(min(3, data.ndim)))
    if len(axes) != 3:
        raise InputError(f"{path}: expected 3 spatial axes, found {len(axes)} (kinds {kinds or 'not given'})")
    return axes


def _affine(header: dict, axes: list[int], path: Path) -> np.ndarray:
    """index (of the spatial axes) -> RAS mm."""
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        rows = np.asarray(directions, dtype=float)
        affine[:3, :3] = np.stack([rows[a][:3] for a in axes], axis=1)
    elif header.get("spacings") is not None:
        spacings = np.asarray(header["spacings"], dtype=float)
        affine[:3, :3] = np.diag([spacings[a] for a in axes])
    origin = header.get("space origin")
    if origin is not None:
        affine[:3, 3] = np.asarray(origin, dtype=float)[:3]
    units = [str(u).lower() for u in header.get("space units", [])]
    if units and len(set(units)) == 1 and units[0] in _UNITS_TO_MM:
        affine[:3, :] *= _UNITS_TO_MM[units[0]]
    elif units and any(u not in _UNITS_TO_MM for u in units):
        raise InputError(f"{path}: space units {units} are not lengths this reader knows (mm, um, cm, m)")
    space = str(header.get("space", "")).lower()
    if space and space not in _SPACE_SIGNS:
        raise InputError(f"{path}: NRRD space '{space}' is not supported; expected one of {sorted(_SPACE_SIGNS)}")
    signs = _SPACE_SIGNS.get(space, (1.0, 1.0, 1.0))  # no space: plain mm axes, taken as they are
    affine[:3, :] *= np.asarray(signs)[:, None]
    return affine


def _color(text: str | None) -> tuple[float, float, float] | None:
    if not text:
        return None
    try:
        rgb = tuple(float(v) for v in str(text).split())
    except ValueError:
        return None
    return rgb if len(rgb) == 3 and all(0 <= v <= 1 for v in rgb) else None  # type: ignore[return-value]


def _segment_fields(header: dict) -> list[dict]:
    fields = []
    n = 0
    while f"Segment{n}_ID" in header or f"Segment{n}_Name" in header:
        get = lambda key, n=n: header.get(f"Segment{n}_{key}")  # noqa: E731
        fields.append(
            {
                "name": str(get("Name") or get("ID") or f"Segment_{n + 1}"),
                "color": _color(get("Color")),
                "layer": int(get("Layer") or 0),
                "label": int(get("LabelValue") or n + 1),
            }
        )
        n += 1
    return fields


def read_nrrd_segments(path: str | os.PathLike) -> SegmentedVolume:
    """An NRRD volume (index -> RAS mm); for a Slicer segmentation, its label map and segments.

    A segmentation stored in several layers (overlapping segments, a 4D file) becomes one label
    map: labels keep their ``LabelValue`` when those differ across layers, else segment ``n``
    gets label ``n + 1``; where segments overlap the later one wins.
    """
    path = Path(path)
    data, header = _read_raw(path)
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported data type {data.dtype} (expected numbers)")
    fields = _segment_fields(header)
    axes = _spatial_axes(data, header, path)
    affine = _affine(header, axes, path)
    others = [i for i in range(data.ndim) if i not in axes]
    data = np.transpose(data, others + axes)  # non-spatial axes first
    if not fields:
        while data.ndim > 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 3:
            raise InputError(
                f"{path}: holds {data.ndim - 3} non-spatial axes of size {data.shape[:-3]}; expected one 3D volume"
            )
        return SegmentedVolume(Volume(data, affine), ())
    layers = data.reshape((-1, *data.shape[-3:]))
    distinct = len({f["label"] for f in fields}) == len(fields)
    if len(layers) == 1 and distinct:
        return SegmentedVolume(
            Volume(layers[0], affine), tuple(Segment(f["label"], f["name"], f["color"]) for f in fields)
        )
    dtype = np.uint8 if len(fields) < 256 and (not distinct or max(f["label"] for f in fields) < 256) else np.int32
    labels = np.zeros(layers.shape[1:], dtype=dtype)
    segments = []
    for n, f in enumerate(fields):
        if f["layer"] >= len(layers):
            raise InputError(f"{path}: segment '{f['name']}' is in layer {f['layer']} but the file has {len(layers)}")
        value = f["label"] if distinct else n + 1
        labels[layers[f["layer"]] == f["label"]] = value
        segments.append(Segment(value, f["name"], f["color"]))
    return SegmentedVolume(Volume(labels, affine), tuple(segments))


def _geometry_header(volume: Volume) -> dict:
    lps = np.diag([-1.0, -1.0, 1.0]) @ volume.affine[:3, :]
    return {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T.copy(),  # one row per array axis
        "space origin": lps[:3, 3].copy(),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }


def _write(path: Path, data: np.ndarray, header: dict) -> Path:
    import nrrd  # pynrrd: loaded for NRRD files only


    if path.name.lower().endswith(".nhdr"):
        raise InputError(f"{path}: write a single-file .nrrd (a detached .nhdr header is read, not written)")
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(data), header, compression_level=1)
    return path


def write_nrrd(path: str | os.PathLike, volume: Volume) -> Path:
    """Write ``volume`` as a gzip NRRD in LPS space (what Slicer and ITK read natively)."""
    data = np.asarray(volume.data)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    return _write(Path(path), data, _geometry_header(volume))


def write_seg_nrrd(
    path: str | os.PathLike, labels: Volume, segments: tuple[Segment, ...] | list[Segment] | None = None
) -> Path:
    """Write a label map as a Slicer segmentation: one layer, one named, coloured segment per label.

    ``segments`` default to one per non-zero label (``Segment_N``); labels without a segment
    are dropped, so that the file and its segment list agree.
    """
    path = Path(path)
    data, segments = label_map_segments(path, labels, segments)
    top = max(s.label for s in segments)
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32
    out = np.zeros(data.shape, dtype=dtype)
    header = _geometry_header(labels)
    header["Segmentation_MasterRepresentation"] = "Binary labelmap"
    header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    for n, segment in enumerate(segments):
        inside = data == segment.label
        out[inside] = segment.label
        if inside.any():
            index = np.argwhere(inside)
            lo, hi = index.min(axis=0), index.max(axis=0)
            extent = " ".join(f"{int(a)} {int(b)}" for a, b in zip(lo, hi, strict=True))
        else:
            extent = "0 -1 0 -1 0 -1"
        rgb = segment.display_color()
        header.update(
            {
                f"Segment{n}_ID": f"Segment_{segment.label}",
                f"Segment{n}_Name": segment.name,
                f"Segment{n}_NameAutoGenerated": "0",
                f"Segment{n}_Color": " ".join(f"{c:.6g}" for c in rgb),
                f"Segment{n}_ColorAutoGenerated": "0",
                f"Segment{n}_Layer": "0",
                f"Segment{n}_LabelValue": str(int(segment.label)),
                f"Segment{n}_Extent": extent,
                f"Segment{n}_Tags": "|",
            }
        )
    return _write(path, out, header)
