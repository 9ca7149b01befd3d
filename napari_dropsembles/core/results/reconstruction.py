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

from ... import __version__
from ..config.configs import ReconstructionConfig
from ..config.errors import InputError
from ..config.validation import integer, number
from ..fitting.fitted import Fitted
from ..io.atomic import atomic_write_bytes, ensure_writable_dir
from ..io.meshes import write_mesh
from ..io.output_formats import OutputFormats, write_outputs
from ..io.volumes import write_volume
from ..networks.checkpoint import Prior
from ..networks.chunking import precision_note
from ..networks.threads import thread_summary
from ..querying.isosurface import IsoSurface, extract_mesh
from ..querying.maps import EnsembleMaps
from ..slices.slice_field import SliceReading
from ..slices.slice_uncertainty import SliceUncertainty
from ..volumes.mesh import Mesh
from ..volumes.volume import Volume
from .members import MEMBERS, save_members  # the warm-start state of `reconstruct --resume`

REPORT = "report.json"  # the files of one structure's result folder (core/results/folder)
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
    unusual_shape: dict | None = None  # score, threshold, unusual (core/slices/unusual_shape); None: not assessed

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

    def calibration_report(self) -> dict | None:
        """What answered the queries (calibrated network, interpolation) and where the calibration came from."""
        calibration = self.fitted.calibration
        if calibration is None:
            return None
        return {"answered_by": self.fitted.answered_by(), "provenance": calibration.provenance}

    def notes(self, setting: Callable[[str, object], str] = config_setting) -> list[str]:
        """What the user should know about how the observation was read.

        A note that suggests another value of a config field words it with ``setting(field, value)``:
        by default ``empty_slices='background'``; the CLI passes its options, the GUI its fields.
        """
        notes = []
        unusual = self.unusual_shape
        if unusual and unusual["unusual"]:
            fallback = unusual.get("answered_by") == "interpolation"
            notes.append(
                "This shape is unlike the shapes the prior was trained on (unusual-shape score "
                f"{unusual['score']:.0f}, usual up to {unusual['threshold']:.0f}): "
                + ("the network was not used; the surface is interpolated between the drawn slices." if fallback
                   else "trust the reconstruction less.")
                + " Check it."
            )
        gaps_note = self._gaps_note(setting)
        if gaps_note:
            notes.append(gaps_note)
        check = self.slice_check
        if check and not check["held_out_slices"]:
            notes.append(f"No check: {check['verdict']}.")
        elif check:
            hidden = check["held_out_slices"]
            notes.append(
                f"Check: {len(hidden)} drawn slice(s) ({', '.join(str(s) for s in hidden)}) were held out of the fit"
                f" and predicted, Dice {check['ours_dice']:.2f} for the reconstruction and"
                f" {check['shape_based_dice']:.2f} for interpolation between slices: {check['verdict']}."
            )
        return notes

    def _gaps_note(self, setting: Callable[[str, object], str]) -> str:
        """The empty slices inside the drawn range, in plain words ('' when there are none). Slices past the
        first and last drawn one are never mentioned: the shape is simply taken to end there."""
        if not self.unobserved_slices or self.reading is None or self.reading.axis is None:
            return ""
        axis = self.reading.axis
        others = tuple(a for a in range(3) if a != axis)
        drawn = np.nonzero((np.asarray(self.observation.data) > 0).any(axis=others))[0]
        if len(drawn) < 2:
            return ""
        first, last = int(drawn[0]), int(drawn[-1])
        inside = [int(s) for s in self.unobserved_slices if first < s < last]
        if not inside:
            return ""
        regular = self.reading.sparse and len(inside) + len(drawn) == last - first + 1 and self.reading.step > 1
        if regular:
            return (
                f"One slice in {self.reading.step} was drawn ({len(drawn)} slices, {first} to {last}): the"
                f" {len(inside)} slices in between were filled in from them."
            )
        return (
            f"{len(inside)} empty slice(s) inside the drawn range ({', '.join(str(s) for s in inside)}) were read"
            " as not annotated: the shape there is filled in from the slices around them. If nothing is there,"
            f" set {setting('empty_slices', 'background')}."
        )

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
            "unusual_shape": self.unusual_shape,
            "calibration": self.calibration_report(),
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
                "cpu_threads": thread_summary(),  # torch's, as the run's thread policy chose them
            },
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "metrics": self.metrics,
        }

    def save(self, out_dir: str | Path, formats=None) -> dict[str, Path]:
        """mean/variance/entropy/mutual_information .nii.gz, mesh.ply, report.json; other formats
        (NRRD, MetaImage, OME-Zarr, .seg.nrrd, DICOM-SEG, LPS meshes) by ``formats``, an
        :class:`~.formats.outputs.OutputFormats`."""

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
