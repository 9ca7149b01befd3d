"""The result of a reconstruction, and its output folder: written by :meth:`Reconstruction.save`,
read back by :func:`read_reconstruction` (the CLI's ``evaluate``, the viewer).

The folder: ``mean``, ``variance``, ``entropy``, ``mutual_information`` ``.nii.gz`` (float32, world
affine), ``mesh.ply`` (vertex quality = variance) and ``report.json`` (config, timings, metrics).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from .checkpoint import Prior
from .chunking import precision_note
from .config import ReconstructionConfig
from .errors import InputError
from .fitted import Fitted
from .io import atomic_write_bytes, ensure_writable_dir, read_volume, write_volume
from .mesh import IsoSurface, Mesh, extract_mesh, read_mesh, write_mesh
from .predict import MAP_NAMES, EnsembleMaps
from .slice_field import SliceReading
from .slice_uncertainty import SliceUncertainty
from .validation import integer, number
from .volume import Volume

REPORT = "report.json"
MESH = "mesh.ply"


def surface_level(threshold: object) -> float:
    """A surface level on the mean occupancy: a finite number in (0, 1)."""
    return number("threshold", threshold, 0.0, 1.0, lo_open=True, hi_open=True)


def config_setting(field: str, value: object) -> str:
    """A config field set to a value, in the core's words (``empty_slices='background'``)."""
    return f"{field}={value!r}"


@dataclass(eq=False)
class Reconstruction:
    """The result of one run: maps on one grid, a mesh, and the fitted ensemble for re-queries."""

    maps: EnsembleMaps
    mesh: Mesh
    fitted: Fitted
    config: ReconstructionConfig
    observation: Volume
    prior_name: str
    device: str
    timings: dict = field(default_factory=dict)
    metrics: dict | None = None
    unobserved_slices: tuple[int, ...] = ()  # empty slices between labelled ones, read as not annotated
    slice_uncertainty: SliceUncertainty | None = None  # between-slice model fitted on held-out slices
    slice_check: dict | None = None  # held-out slices: the network's and shape-based Dice (core/slice_check)
    reading: SliceReading | None = None  # the slice axis (thick or annotation axis) and the gaps
    prior: Prior | None = field(default=None, repr=False)  # the prior it was fitted from (core/refine warm-starts)
    rounds: int = 0  # refinements since the first reconstruction (core/refine)

    _surface: IsoSurface | None = field(default=None, init=False, repr=False)

    def remesh(self, threshold: float, *, step_size: int = 1) -> Mesh:
        """Marching cubes on the cached mean at a new threshold (no network query).

        The padded grid is prepared on the first call and kept, so that a threshold slider
        pays only for the cubes. ``threshold`` must lie in (0, 1) (ConfigError naming ``threshold``).
        """
        threshold = surface_level(threshold)
        if self._surface is None:
            self._surface = IsoSurface(self.maps.mean, self.maps.variance)
        return self._surface.extract(threshold, step_size=step_size)

    def member_mesh(self, member: int, threshold: float | None = None) -> Mesh:
        if self.maps.members is None:
            raise InputError("per-member maps were not kept (set keep_members=True)")
        level = self.config.threshold if threshold is None else surface_level(threshold)
        member = integer("member", member, 0, len(self.maps.members) - 1)
        grid = self.maps.mean.with_data(self.maps.members[member].astype(np.float32))
        return extract_mesh(grid, level, self.maps.variance)

    def notes(self, setting: Callable[[str, object], str] = config_setting) -> list[str]:
        """What the user should know about how the observation was read.

        A note that suggests another value of a config field words it with ``setting(field, value)``:
        by default ``empty_slices='background'``; the CLI passes its options, the GUI its fields.
        """
        notes = []
        if self.unobserved_slices:
            slices = ", ".join(str(s) for s in self.unobserved_slices)
            sparse = self.reading is not None and self.reading.sparse
            axis = f"axis {self.reading.axis}, the annotation axis" if sparse else "the thick axis"
            notes.append(
                f"{len(self.unobserved_slices)} empty slice(s) between labelled ones (index {slices} of "
                f"{axis}) were read as not annotated; if they are truly empty, rerun with "
                + setting("empty_slices", "background")
            )
        if self.slice_check and not self.slice_check["held_out_slices"]:
            notes.append(self.slice_check["verdict"])
        elif self.slice_check:
            check = self.slice_check
            notes.append(
                f"held-out slices {check['held_out_slices']}: network Dice {check['ours_dice']:.3f}, shape-based "
                f"interpolation {check['shape_based_dice']:.3f}; {check['verdict']}"
            )
        return notes

    def report(self) -> dict:
        return {
            "package_version": __version__,
            "config": asdict(self.config),
            "prior": self.prior_name,
            "device": self.device,
            "members": self.fitted.members,
            "frame": self.fitted.frame.to_dict(),
            "grid": {"shape": list(self.maps.mean.shape), "affine": self.maps.mean.affine.tolist()},
            "network_queries": self.maps.queries,
            "unobserved_slices": list(self.unobserved_slices),
            "slice_axis": None if self.reading is None else self.reading.axis,
            "annotation_axis": None if self.reading is None or not self.reading.sparse else self.reading.axis,
            "refine_rounds": self.rounds,
            "slice_uncertainty": None if self.slice_uncertainty is None else self.slice_uncertainty.to_dict(),
            "held_out_check": self.slice_check,
            "notes": self.notes(),
            "mesh": {"vertices": int(len(self.mesh.vertices_mm)), "faces": int(len(self.mesh.faces))},
            "finetune": {
                "best_step": self.fitted.history.get("best_step"),
                "best_holdout_bce": self.fitted.history.get("best_holdout"),
                "train_points": self.fitted.history.get("train_points"),
                "holdout_points": self.fitted.history.get("holdout_points"),
            },
            "execution": {
                "decoder_formulation": getattr(self.fitted.decoder, "formulation", "batched"),
                "adaptive_grid": self.config.adaptive,
                "precision_note": precision_note(self.device, self.config.precision),
            },
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "metrics": self.metrics,
        }

    def save(self, out_dir: str | Path, formats=None) -> dict[str, Path]:
        """mean/variance/entropy/mutual_information .nii.gz, mesh.ply, report.json; other formats
        (NRRD, MetaImage, OME-Zarr, .seg.nrrd, DICOM-SEG, LPS meshes) by ``formats``, an
        :class:`~.formats.outputs.OutputFormats`."""
        from .formats.outputs import OutputFormats, write_outputs
        from .refine import MEMBERS, save_members  # the warm-start state of `reconstruct --resume`

        folder = ensure_writable_dir(out_dir)
        paths = {}
        if formats is not None:
            paths = write_outputs(folder, self.maps.as_dict(), self.mesh, self.config.threshold, formats)
        else:
            for name, volume in self.maps.as_dict().items():
                paths[name] = write_volume(folder / f"{name}.nii.gz", volume)
            if not self.mesh.is_empty:
                paths["mesh"] = write_mesh(folder / MESH, self.mesh)
        paths["members"] = save_members(self, folder / MEMBERS)
        report = folder / REPORT
        described = (formats if formats is not None else OutputFormats()).describe()  # the files' spaces, always
        content = {**self.report(), "outputs": described}
        atomic_write_bytes(report, json.dumps(content, indent=2, default=_json_default).encode())
        paths["report"] = report
        return paths


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


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
    from .formats.outputs import MAP_SUFFIXES

    folder = Path(folder)
    suffix = next((s for s in MAP_SUFFIXES if (folder / f"mean{s}").exists()), ".nii.gz")  # save(formats=...)
    missing = [f"{name}{suffix}" for name in ("mean", "variance") if not (folder / f"{name}{suffix}").exists()]
    if missing:
        raise InputError(f"{folder} is not a reconstruction folder: missing {', '.join(missing)}")
    volumes = {
        name: read_volume(folder / f"{name}{suffix}") if (folder / f"{name}{suffix}").exists() else None
        for name in MAP_NAMES
    }
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
        from .formats.mesh_io import read_mesh_file

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
