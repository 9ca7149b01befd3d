"""The main job: binary observation + prior -> mean / variance / entropy / MI maps and a mesh.

``reconstruct_steps`` is a generator (progress, cancel, live previews) used by the GUI worker;
``reconstruct`` runs it to the end for scripts and the command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .adaptive import coarse_step_for, predict_grid_adaptive_steps
from .checkpoint import Prior
from .chunking import PRECISIONS, precision_note
from .device import resolve_device
from .errors import InputError
from .finetune import FinetuneConfig
from .frame import make_case
from .io import atomic_write_bytes, ensure_writable_dir, write_volume
from .mesh import IsoSurface, Mesh, extract_mesh, write_mesh
from .methods import Fitted, MethodConfig, fit_steps
from .predict import EnsembleMaps, predict_grid_steps, run_to_end
from .progress import CancelFlag, Progress
from .slice_field import check_empty_slices
from .volume import Volume

PREVIEW_GRID = 32


@dataclass(frozen=True)
class ReconstructionConfig:
    """Everything a reconstruction depends on (saved in report.json)."""

    method: str = "dropsembles"
    members: int = 4
    steps: int = 60
    ewc: float = 0.1  # chosen by bench/defaults_sweep.py (docs/defaults_sweep.md)
    lr: float = 1e-3
    points_per_step: int = 4096
    holdout: float = 0.1
    resolution_mm: float | None = None  # output spacing; None = the observation's finest spacing
    threshold: float = 0.5
    device: str = "auto"
    seed: int = 0
    chunk: int | None = None  # points per network call; None = chosen for the device (core/chunking)
    keep_members: bool = False
    preview_interval_s: float = 0.0  # > 0: attach a coarse mean to progress this often
    adaptive: bool = True  # coarse-to-fine grid evaluation (core/adaptive); False = query every voxel
    precision: str = "fp32"  # "fp32", "tf32" or "bf16": CUDA only (other devices run float32)
    empty_slices: str = "unobserved"  # empty slices between labelled ones: "unobserved" or "background"

    def validate(self) -> None:
        if not 0 < self.threshold < 1:
            raise InputError(f"--threshold must be in (0, 1), got {self.threshold}")
        if self.resolution_mm is not None and not self.resolution_mm > 0:
            raise InputError(f"--resolution must be positive (mm), got {self.resolution_mm}")
        if self.lr <= 0 or self.points_per_step < 1 or not 0 <= self.holdout < 0.9:
            raise InputError("lr and points per step must be positive and holdout in [0, 0.9)")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_empty_slices(self.empty_slices)
        if self.chunk is not None and self.chunk < 1:
            raise InputError(f"chunk must be a positive number of points, got {self.chunk}")
        self.method_config().validate()

    def method_config(self) -> MethodConfig:
        finetune = FinetuneConfig(
            steps=self.steps,
            lr=self.lr,
            points_per_step=self.points_per_step,
            ewc_lambda=self.ewc,
            holdout=self.holdout,
        )
        return MethodConfig(method=self.method, members=self.members, finetune=finetune, seed=self.seed)


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

    _surface: IsoSurface | None = field(default=None, init=False, repr=False)

    def remesh(self, threshold: float, *, step_size: int = 1) -> Mesh:
        """Marching cubes on the cached mean at a new threshold (no network query).

        The padded grid is prepared on the first call and kept, so that a threshold slider
        pays only for the cubes.
        """
        if self._surface is None:
            self._surface = IsoSurface(self.maps.mean, self.maps.variance)
        return self._surface.extract(threshold, step_size=step_size)

    def member_mesh(self, member: int, threshold: float | None = None) -> Mesh:
        if self.maps.members is None:
            raise InputError("per-member maps were not kept (set keep_members=True)")
        level = self.config.threshold if threshold is None else threshold
        grid = self.maps.mean.with_data(self.maps.members[member].astype(np.float32))
        return extract_mesh(grid, level, self.maps.variance)

    def notes(self) -> list[str]:
        """What the user should know about how the observation was read."""
        notes = []
        if self.unobserved_slices:
            slices = ", ".join(str(s) for s in self.unobserved_slices)
            notes.append(
                f"{len(self.unobserved_slices)} empty slice(s) between labelled ones (index {slices} of the "
                "thick axis) were read as not annotated; if they are truly empty, rerun with "
                "--empty-slices background (widget: Empty slices = background)"
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

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """mean/variance/entropy/mutual_information .nii.gz, mesh.ply, report.json."""
        folder = ensure_writable_dir(out_dir)
        paths = {}
        for name, volume in self.maps.as_dict().items():
            paths[name] = write_volume(folder / f"{name}.nii.gz", volume)
        if not self.mesh.is_empty:
            paths["mesh"] = write_mesh(folder / "mesh.ply", self.mesh)
        report = folder / "report.json"
        atomic_write_bytes(report, json.dumps(self.report(), indent=2, default=_json_default).encode())
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


def output_grid(fitted: Fitted, observation: Volume, resolution_mm: float | None) -> tuple[np.ndarray, tuple]:
    spacing = float(resolution_mm) if resolution_mm else float(observation.spacing.min())
    return fitted.frame.box_affine(spacing)


def _preview(fitted: Fitted) -> Volume:
    """Coarse mean occupancy of the members as they are now."""
    affine, shape = fitted.frame.box_affine(fitted.frame.scale_mm / PREVIEW_GRID)
    with torch.no_grad():
        return run_to_end(predict_grid_steps(fitted, affine, shape)).mean


def reconstruct_steps(
    observation: Volume,
    prior: Prior,
    config: ReconstructionConfig = ReconstructionConfig(),
    *,
    target: tuple[np.ndarray, tuple[int, int, int]] | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, Reconstruction]:
    """Fit and predict. ``observation`` is a binary mask Volume; ``target`` an optional (affine, shape)."""
    config.validate()
    config.method_config().validate(prior)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    case = make_case(observation, prior.config, empty_slices=config.empty_slices)
    if case.labels.sum() == 0:
        raise InputError("no foreground voxel of the mask falls in the reconstruction box")
    timings["prepare"] = time.perf_counter() - started

    tick = time.perf_counter()
    fitting = fit_steps(
        case, prior, config.method_config(), device=device, precision=config.precision, cancel=cancel
    )
    last_preview = time.perf_counter()
    fitted: Fitted | None = None
    while fitted is None:
        try:
            progress = next(fitting)
        except StopIteration as done:
            fitted = done.value
            break
        if config.preview_interval_s > 0 and time.perf_counter() - last_preview >= config.preview_interval_s:
            progress.preview = _preview(progress.extra["live"])
            last_preview = time.perf_counter()
        yield progress
    timings["finetune"] = time.perf_counter() - tick

    tick = time.perf_counter()
    affine, shape = target if target is not None else output_grid(fitted, observation, config.resolution_mm)
    grid_kwargs = dict(chunk=config.chunk, keep_members=config.keep_members, precision=config.precision)
    if config.adaptive:
        step = coarse_step_for(fitted, affine)
        maps = yield from predict_grid_adaptive_steps(
            fitted, affine, shape, threshold=config.threshold, coarse_step=step, cancel=cancel, **grid_kwargs
        )
    else:
        maps = yield from predict_grid_steps(fitted, affine, shape, cancel=cancel, **grid_kwargs)
    timings["predict"] = time.perf_counter() - tick
    tick = time.perf_counter()
    surface = IsoSurface(maps.mean, maps.variance)
    mesh = surface.extract(config.threshold)
    timings["mesh"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    yield Progress("mesh", 1, 1, message="done")
    result = Reconstruction(
        maps=maps,
        mesh=mesh,
        fitted=fitted,
        config=config,
        observation=observation,
        prior_name=prior.name,
        device=str(device),
        timings=timings,
        unobserved_slices=case.unobserved_slices,
    )
    result._surface = surface  # the threshold slider starts from the prepared grid
    return result


def reconstruct(
    observation: Volume,
    prior: Prior,
    config: ReconstructionConfig = ReconstructionConfig(),
    *,
    target: tuple[np.ndarray, tuple[int, int, int]] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> Reconstruction:
    """Run :func:`reconstruct_steps` to the end."""
    steps = reconstruct_steps(observation, prior, config, target=target, cancel=cancel)
    while True:
        try:
            progress = next(steps)
        except StopIteration as done:
            return done.value
        if on_progress is not None:
            on_progress(progress)
