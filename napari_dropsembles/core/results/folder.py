"""The result folder: one layout for one structure and for several, written and read back here.

A folder holds each structure's complete result (maps, ``mesh.ply``, ``report.json`` and the members
``members.safetensors`` that ``reconstruct --resume`` warm-starts from) in the structure's folder:

- one object read whole (a mask, one label, all labels merged): the folder itself (``.``), exactly
  as every version wrote it;
- a label map read one structure per label: ``label<k>/`` each, beside the merged ``mean`` and
  ``variance`` maps, ``segmentation.nii.gz`` (each voxel's structure at the surface level), ``mesh.ply``
  (all structures) and the index ``structures.json`` (labels, folders, table, rounds).

A folder without ``structures.json`` is one structure at ``.``: :func:`read_structure_starts` reads
either back as a set (each structure's members checked against the prior).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ... import __version__
from ..config.errors import CheckpointError, InputError
from ..io.atomic import atomic_write_bytes, ensure_writable_dir
from ..io.meshes import read_mesh, read_mesh_file, write_mesh
from ..io.messages import one_line
from ..io.output_formats import MAP_SUFFIXES
from ..io.volumes import read_volume, write_volume
from ..querying.maps import MAP_NAMES, EnsembleMaps
from ..volumes.mesh import Mesh
from ..volumes.volume import Volume
from .members import MEMBERS, WarmStart, read_warm_start
from .reconstruction import MESH, REPORT, Reconstruction
from .structures import StructureSet

STRUCTURES = "structures.json"  # the index of a folder of structures read one per label
STRUCTURES_FORMAT = "napari-dropsembles-structures"
STRUCTURES_FORMAT_VERSION = 1
WHOLE_LABEL = 1  # the label of one object read whole, in a folder without an index


@dataclass(eq=False)
class SavedReconstruction:
    """A reconstruction folder read back: the maps, the mesh, the report and what it says."""

    folder: Path
    mean: Volume
    variance: Volume
    entropy: Volume | None
    mutual_information: Volume | None
    mesh: Mesh
    report: dict
    threshold: float  # the surface level the reconstruction used (0.5 when the report does not say)
    members: int  # ensemble size (1 when the report does not say)

    def maps(self) -> EnsembleMaps:
        """The maps as :class:`EnsembleMaps` (entropy is needed; mutual information falls back to it)."""
        if self.entropy is None:
            raise InputError(f"{self.folder} is not a complete reconstruction folder: missing entropy.nii.gz")
        mutual_information = self.mutual_information if self.mutual_information is not None else self.entropy
        return EnsembleMaps(self.mean, self.variance, self.entropy, mutual_information)


def _read_report(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {path}: {error}; restore it from the run or delete it") from None
    if not isinstance(report, dict):
        raise InputError(f"{path} is not a reconstruction report (a JSON object); restore it or delete it")
    return report


def _report_value(report: dict, path: Path, key: str, kind: type, default, ok) -> object:
    value = report.get("config", {}).get(key, default) if key == "threshold" else report.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
        raise InputError(f"{path} holds an invalid {key!r} ({value!r}); restore it or delete it")
    return value


def read_reconstruction(folder: str | Path) -> SavedReconstruction:
    """Read a folder written by :meth:`Reconstruction.save` (mean and variance are required)."""

    folder = Path(folder)
    suffix = next((s for s in MAP_SUFFIXES if (folder / f"mean{s}").exists()), ".nii.gz")  # save(formats=...)
    missing = [f"{name}{suffix}" for name in ("mean", "variance") if not (folder / f"{name}{suffix}").exists()]
    if missing:
        raise InputError(f"{folder} is not a reconstruction folder: missing {', '.join(missing)}")
    volumes = {
        name: read_volume(folder / f"{name}{suffix}") if (folder / f"{name}{suffix}").exists() else None
        for name in MAP_NAMES
    }
    for name in ("mean", "variance"):
        data = np.asarray(volumes[name].data)
        if data.dtype.kind == "f" and not np.isfinite(data).any():
            raise InputError(
                f"{folder / f'{name}{suffix}'} holds no number (every voxel is NaN or infinite): "
                "the result folder is damaged; reconstruct again"
            )
    report_path = folder / REPORT
    report = _read_report(report_path)
    if not isinstance(report.get("config", {}), dict):
        raise InputError(f"{report_path} holds an invalid 'config'; restore it or delete it")
    threshold = _report_value(report, report_path, "threshold", (int, float), 0.5, lambda v: 0 < v < 1)
    members = _report_value(report, report_path, "members", int, 1, lambda v: v >= 1)
    mesh_path = folder / MESH
    mesh = read_mesh(mesh_path) if mesh_path.is_file() else Mesh(np.zeros((0, 3)), np.zeros((0, 3), int))
    outputs = report.get("outputs")
    if isinstance(outputs, dict) and outputs.get("mesh_space") in ("LPS", "RAS"):  # save(formats=...)
        chosen = folder / f"mesh{outputs.get('mesh', '.ply')}"
        mesh = read_mesh_file(chosen, space=outputs["mesh_space"]) if chosen.is_file() else mesh
    return SavedReconstruction(
        folder=folder,
        mesh=mesh,
        report=report,
        threshold=float(threshold),
        members=int(members),
        **volumes,
    )


# -- the set of structures -------------------------------------------------------------------------


def structure_folder(label: int, split: bool = True) -> str:
    """The folder of a structure inside the result folder: ``label<k>`` when read per label, else ``.``."""
    return f"label{int(label)}" if split else "."


def save_structures(
    structures: StructureSet, out_dir: str | Path, formats=None, *, member_meshes: bool = False
) -> dict[str, Path]:
    """Write the result folder of a set (see the module's docstring); name -> path of what was written."""
    if not structures.split and len(structures.results) != 1:
        raise InputError("a set read whole holds one structure")
    folder = ensure_writable_dir(out_dir)
    paths: dict[str, Path] = {}
    for label, result in sorted(structures.results.items()):
        name = structure_folder(label, structures.split)
        sub = folder / name
        written = result.save(sub, formats=formats)
        if member_meshes and result.maps.members is not None:
            for m in range(len(result.maps.members)):
                mesh = result.member_mesh(m)
                if not mesh.is_empty:
                    written[f"member{m}"] = write_mesh(sub / f"mesh_member{m}.ply", mesh)
        paths.update({name: sub} if structures.split else written)
    if structures.split:
        paths.update(_save_merged(structures, folder))
    return paths


def _save_merged(structures: StructureSet, folder: Path) -> dict[str, Path]:
    """The merged maps, segmentation and mesh of structures read per label, and the index."""
    threshold = structures.threshold
    paths = {
        "mean": write_volume(folder / "mean.nii.gz", structures.mean),
        "variance": write_volume(folder / "variance.nii.gz", structures.variance),
        "segmentation": write_volume(folder / "segmentation.nii.gz", structures.label_volume(threshold), dtype=None),
    }
    mesh = structures.remesh(threshold)
    if not mesh.is_empty:
        paths["mesh"] = write_mesh(folder / "mesh.ply", mesh)
    first = structures.results[structures.labels[0]]
    content = {
        "format": STRUCTURES_FORMAT,
        "format_version": STRUCTURES_FORMAT_VERSION,
        "package_version": __version__,
        "labels": structures.labels,
        "folders": {str(k): structure_folder(k) for k in structures.labels},
        "threshold": threshold,
        "members": structures.members,
        "prior": first.prior_name,
        "device": structures.device,
        "refine_rounds": structures.rounds,
        "kept_unchanged": list(structures.kept),
        "table": [asdict(row) for row in structures.table(threshold)],
    }
    atomic_write_bytes(folder / STRUCTURES, json.dumps(content, indent=2, default=_plain).encode())
    paths["structures"] = folder / STRUCTURES
    return paths


def _plain(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def is_structure_folder(folder: str | Path) -> bool:
    """True for a folder of structures read per label (it holds the index ``structures.json``)."""
    return (Path(folder) / STRUCTURES).is_file()


class SavedStructures(dict):
    """label -> the warm-start state of each structure of a result folder; ``split``: read per label
    (``label<k>/`` folders), else one object read whole."""

    def __init__(self, starts: dict[int, WarmStart | Reconstruction], split: bool) -> None:
        super().__init__(starts)
        self.split = split

    @property
    def starts(self) -> dict[int, WarmStart | Reconstruction]:
        return self


def read_structure_starts(folder: str | Path, prior) -> SavedStructures:
    """The members of every structure of a result folder (each checked against ``prior``; one-line errors)."""
    folder = Path(folder)
    if not is_structure_folder(folder):
        return SavedStructures({WHOLE_LABEL: read_warm_start(folder, prior)}, split=False)
    path = folder / STRUCTURES
    try:
        content = json.loads(path.read_text())
        if content.get("format") != STRUCTURES_FORMAT:
            raise ValueError("not a structures index")
        folders = {int(k): str(v) for k, v in content["folders"].items()}
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({one_line(error.strerror or error)})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is corrupt ({one_line(error, 120)}); rerun reconstruct") from None
    if not folders:
        raise CheckpointError(f"{path} lists no structure; rerun reconstruct")
    starts = {}
    for label, name in sorted(folders.items()):
        sub = folder / name
        if Path(name).name != name or not (sub / MEMBERS).is_file():
            raise InputError(f"{folder}: structure {label} has no {name}/{MEMBERS}; rerun reconstruct")
        starts[label] = read_warm_start(sub, prior)
    return SavedStructures(starts, split=True)
