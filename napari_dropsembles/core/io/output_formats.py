"""Which files a reconstruction writes: the maps' format, the thresholded segmentation's, the mesh's.

``--format`` names them by extension (``nrrd,seg.nrrd,vtp``); what it leaves out follows the
input: an NRRD or MetaImage input gets NRRD/MetaImage maps, a Slicer segmentation and an LPS
``.vtk`` mesh; a DICOM series also gets a DICOM-SEG (and its probability map as a fractional
DICOM-SEG) on the series' own grid; OME-Zarr gets OME-Zarr maps; anything else keeps the
historical NIfTI maps and ``mesh.ply`` in the package's RAS world.

Every mesh is in the input's physical space and says which: NIfTI / TIFF / NumPy / OME-Zarr
worlds are RAS (NIfTI's convention), so their default ``mesh.ply`` stays RAS; DICOM, NRRD and
MetaImage are LPS (DICOM's convention, Slicer's model files), so their meshes are LPS. The choice
is in ``report.json`` (``outputs.mesh_space``) and in the file itself (``SPACE=RAS`` or
``SPACE=LPS``: PLY/OBJ comment, STL and VTK header, VTP field data, glTF extras).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config.errors import InputError
from ..volumes.mesh import Mesh
from ..volumes.volume import Volume
from .dicom import SEG_SOP_CLASS, write_dicom_seg
from .formats import format_suffix, is_dicom_folder
from .meshes import MESH_FORMAT_SUFFIXES, write_mesh_file
from .nrrd import write_seg_nrrd
from .segments import Segment
from .volumes import write_volume

MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".ome.zarr", ".tif", ".npz")
SEGMENTATION_OUTPUTS = (".seg.nrrd", ".dcm")
_ALIASES = {".zarr": ".ome.zarr", ".dicom": ".dcm", ".dicom-seg": ".dcm", ".seg": ".seg.nrrd", ".tiff": ".tif"}
FORMAT_CHOICES = tuple(s.lstrip(".") for s in (*MAP_SUFFIXES, *SEGMENTATION_OUTPUTS, *MESH_FORMAT_SUFFIXES))


@dataclass(frozen=True)
class OutputFormats:
    """The files of a reconstruction folder; ``legacy_mesh``: the mesh in RAS (the historical mesh.ply), else
    in ``mesh_space``."""

    maps: str = ".nii.gz"
    mesh: str = ".ply"
    segmentations: tuple[str, ...] = ()
    mesh_space: str = "LPS"
    legacy_mesh: bool = True
    source: Path | None = None  # the DICOM series a DICOM-SEG refers to
    segment: Segment = Segment(1, "reconstruction", (0.89, 0.85, 0.79))

    def describe(self) -> dict:
        return {
            "maps": self.maps,
            "segmentations": list(self.segmentations),
            "mesh": self.mesh,
            "mesh_space": "RAS" if self.legacy_mesh else self.mesh_space,
            "dicom_source": str(self.source) if self.source else None,
        }


def _token(text: str) -> str:
    suffix = "." + text.strip().lower().lstrip(".")
    return _ALIASES.get(suffix, suffix)


def _input_family(source: str | os.PathLike | None) -> OutputFormats:
    """The defaults for an input file: the same family of formats as it came in."""
    if source is None:
        return OutputFormats()
    path = Path(source)
    suffix = format_suffix(path)
    if suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
        return OutputFormats(maps=".nrrd", mesh=".vtk", segmentations=(".seg.nrrd",), legacy_mesh=False)
    if suffix in (".mha", ".mhd"):
        return OutputFormats(maps=suffix, mesh=".vtk", segmentations=(".seg.nrrd",), legacy_mesh=False)
    if suffix in (".zarr", ".ome.zarr"):
        return OutputFormats(maps=".ome.zarr")
    if suffix == ".dcm" or is_dicom_folder(path):
        if path.is_file():
            import pydicom  # DICOM library: loaded for DICOM only

            header = pydicom.dcmread(str(path), stop_before_pixels=True)
            if str(getattr(header, "SOPClassUID", "")) == SEG_SOP_CLASS:  # no source images to refer to
                return OutputFormats(maps=".nrrd", mesh=".vtk", segmentations=(".seg.nrrd",), legacy_mesh=False)
        return OutputFormats(
            maps=".nrrd", mesh=".vtk", segmentations=(".seg.nrrd", ".dcm"), legacy_mesh=False, source=path
        )
    return OutputFormats()


def output_formats(choice: str | None, source: str | os.PathLike | None = None) -> OutputFormats:
    """Parse ``--format`` (comma-separated extensions, or None) for an input at ``source``."""
    formats = _input_family(source)
    if not choice:
        return formats
    maps, mesh, segmentations = None, None, []
    for text in str(choice).split(","):
        if not text.strip():
            continue
        token = _token(text)
        if token in MAP_SUFFIXES:
            maps = token
        elif token in MESH_FORMAT_SUFFIXES:
            mesh = token
        elif token in SEGMENTATION_OUTPUTS:
            segmentations.append(token)
        else:
            raise InputError(
                f"--format {text.strip()!r} is not an output format; choose from {', '.join(FORMAT_CHOICES)}"
            )
    if ".dcm" in segmentations and formats.source is None:
        raise InputError("--format dcm (DICOM-SEG) needs a DICOM series as the input: it refers to that series")
    return replace(
        formats,
        maps=maps or formats.maps,
        mesh=mesh or formats.mesh,
        legacy_mesh=formats.legacy_mesh and mesh is None,
        segmentations=tuple(dict.fromkeys(segmentations)) if segmentations else formats.segmentations,
    )


def write_outputs(
    folder: str | os.PathLike,
    maps: dict[str, Volume],
    mesh: Mesh,
    threshold: float,
    formats: OutputFormats,
) -> dict[str, Path]:
    """Write every map, the thresholded mean as segmentation(s) and the mesh; return name -> path."""
    folder = Path(folder)
    paths: dict[str, Path] = {}
    for name, volume in maps.items():
        paths[name] = write_volume(folder / f"{name}{formats.maps}", volume)
    mean = maps.get("mean")
    if formats.segmentations and mean is not None:
        labels = mean.with_data((np.asarray(mean.data) >= threshold).astype(np.uint8) * np.uint8(formats.segment.label))
        segments = (formats.segment,)
        if ".seg.nrrd" in formats.segmentations and np.any(labels.data):
            paths["segmentation"] = write_seg_nrrd(folder / "segmentation.seg.nrrd", labels, segments)
        if ".dcm" in formats.segmentations:
            if formats.source is None:
                raise InputError("DICOM-SEG output needs the DICOM series the input came from")
            if np.any(labels.data):
                paths["dicom_seg"] = write_dicom_seg(folder / "segmentation.dcm", labels, formats.source, segments)
            paths["dicom_probability"] = write_dicom_seg(
                folder / "probability.dcm",
                mean,
                formats.source,
                (Segment(1, f"{formats.segment.name} probability", formats.segment.color),),
                fractional=True,
            )
    if not mesh.is_empty:  # the file states its space (SPACE=RAS / SPACE=LPS), as report.json does
        paths["mesh"] = write_mesh_file(folder / f"mesh{formats.mesh}", mesh, space=formats.describe()["mesh_space"])
    return paths
