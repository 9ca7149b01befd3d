"""The reconstruct job, one call from a request to its outputs: read the observation, load the prior,
check the budget, fit every structure (or refine a result), score against a ground truth, write the folder.

The command line, the widgets and the cohort runner each build a :class:`ReconstructRequest` and make
this one call (``refine`` is this job with ``resume``). One object read whole is a set of one structure;
the result is always a :class:`~..results.structures.StructureSet`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config.configs import REFINE_STEPS, ReconstructionConfig
from ..config.errors import InputError, setting
from ..config.progress import CancelFlag, Progress, check_cancel, drive
from ..fitting.methods import check_prior
from ..io.atomic import atomic_folder
from ..io.formats import find_segment
from ..io.output_formats import OutputFormats, output_formats
from ..io.output_paths import check_output_folder
from ..results.folder import STRUCTURES, SavedStructures, read_structure_starts, save_structures
from ..results.structures import StructureSet
from ..scoring.evaluate import compare_steps
from ..volumes.volume import Volume
from .inputs import EACH, Grid, PathLike, PriorSource, as_volume, ground_truth_masks, load_priors, observation_masks
from .inputs import target_grid as read_target_grid
from .requests import check_reconstruction_request
from .structures import reconstruct_structures_steps, refine_structures_steps

Resume = PathLike | StructureSet


@dataclass(frozen=True, eq=False)
class ReconstructRequest:
    """A reconstruction (with ``resume``: a refinement round of an earlier result) and where it goes."""

    observation: Volume | PathLike
    config: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    prior: PriorSource = None  # None: the bundled prior; several files: one deep-ensemble prior
    label: int | str | None = None  # None, a label, a segment name, "all" (merged) or "each" (one per label)
    threshold: float | None = None  # binarise an intensity image: voxels >= threshold are the object
    target: Volume | PathLike | Grid | None = None  # the output grid: a reference volume (else the default)
    ground_truth: Volume | PathLike | None = None  # score each structure against it (report.json "metrics")
    resume: Resume | None = None  # refine this result (a folder or a set) with the updated observation
    resume_changes: Mapping[str, object] = field(default_factory=dict)  # config fields changed from the result's
    refine_steps: int | None = REFINE_STEPS  # fine-tuning steps of a refinement round
    out: PathLike | None = None  # write the result folder here (replaced as a whole at the end)
    formats: str | None = None  # output formats by extension (default: the input's family)
    member_meshes: bool = False  # also write one mesh per member


@dataclass(eq=False)
class ReconstructOutput:
    structures: StructureSet
    paths: dict[str, Path] = field(default_factory=dict)  # what was written in ``out``


def input_files(request: ReconstructRequest) -> dict[str, Path | None]:
    """The input files an output must not overwrite."""
    inputs: dict[str, Path | None] = {}
    for role, value in (
        ("observation", request.observation),
        ("ground truth", request.ground_truth),
        ("--like volume", request.target),
    ):
        inputs[role] = Path(value) if isinstance(value, (str, os.PathLike)) else None
    prior = request.prior
    paths = [prior] if isinstance(prior, (str, os.PathLike)) else prior if isinstance(prior, (list, tuple)) else []
    inputs.update({f"prior {p}": Path(p) for p in paths})
    if isinstance(request.resume, (str, os.PathLike)):
        resume = Path(request.resume)
        for path in resume.glob("*"):
            files = path.glob("*") if path.is_dir() and path.name.startswith("label") else [path]
            inputs.update({f"--resume file {p.relative_to(resume)}": p for p in files if p.is_file()})
    return inputs


def _formats(request: ReconstructRequest) -> OutputFormats | None:
    """The output formats (``formats``, else the input's family); None: NIfTI maps and a RAS mesh.ply."""
    source = request.observation if isinstance(request.observation, (str, os.PathLike)) else None
    formats = output_formats(request.formats, source)
    if source is not None and isinstance(request.label, str) and request.label not in ("all", EACH):
        segment = find_segment(source, request.label)  # the output segment keeps its name and colour
        formats = dataclasses.replace(formats, segment=dataclasses.replace(segment, label=1))
    return None if formats == OutputFormats() else formats


def _saved(resume: Resume, prior) -> SavedStructures:
    if isinstance(resume, StructureSet):
        return SavedStructures(dict(resume.results), resume.split)
    return read_structure_starts(resume, prior)


def _resume_masks(request: ReconstructRequest, saved: SavedStructures) -> dict:
    """The updated observation read as the result was: one mask per label, or one object read whole."""
    if saved.split and request.label not in (None, EACH):
        raise InputError(
            f"{request.resume} holds several structures and {setting('resume')} refines every one of them: "
            f"leave {setting('label')} out"
        )
    if not saved.split and request.label == EACH:
        raise InputError(
            f"{request.resume} holds one structure (not written with {setting('label', EACH)}): resume it with the "
            f"{setting('label')} of its first run, or reconstruct with {setting('label', EACH)} again"
        )
    masks, _ = observation_masks(request.observation, EACH if saved.split else request.label, request.threshold)
    if not saved.split:  # the one object, whatever its label
        masks = dict(zip(saved.starts, masks.values(), strict=True))
    return masks


def reconstruct_job_steps(
    request: ReconstructRequest, cancel: CancelFlag | None = None
) -> Generator[Progress, None, ReconstructOutput]:
    """Run the job; yields Progress; returns the structures and the files written (one-line errors)."""
    out = None
    if request.out is not None:
        out = check_output_folder(request.out, inputs=input_files(request), names=(STRUCTURES,))
    formats = _formats(request) if out is not None else None
    if request.resume is None:
        masks, split = observation_masks(request.observation, request.label, request.threshold)
    target = read_target_grid(request.target)
    truth = None if request.ground_truth is None else as_volume(request.ground_truth)
    prior = load_priors(request.prior)
    check_cancel(cancel)
    if request.resume is not None:
        saved = _saved(request.resume, prior)
        masks = _resume_masks(request, saved)
        first = saved.starts[min(saved.starts)]
        config = dataclasses.replace(first.config, **dict(request.resume_changes))
        work = refine_structures_steps(saved, masks, config, steps=request.refine_steps, target=target, cancel=cancel)
    else:
        config = request.config
        check_prior(config, prior)
        for mask in masks.values():  # memory, before anything is allocated
            check_reconstruction_request(mask, prior, config, target, None if truth is None else truth.shape)
        work = reconstruct_structures_steps(masks, prior, config, target=target, split=split, cancel=cancel)
    structures = yield from work
    if truth is not None:
        yield from _score_steps(structures, masks, truth, request, cancel)
    paths: dict[str, Path] = {}
    if out is not None:
        with atomic_folder(out) as staging:  # the previous result stays whole until the new one is
            written = save_structures(structures, staging, formats, member_meshes=request.member_meshes)
        paths = {name: out / Path(path).name for name, path in written.items()}
    return ReconstructOutput(structures, paths)


def _score_steps(structures: StructureSet, masks: dict, truth: Volume, request: ReconstructRequest, cancel):
    """Each structure's metrics and the interpolation baselines against its mask of the ground truth."""
    label = request.label if isinstance(request.label, int) else None
    name = f"the ground truth {request.ground_truth}" if not isinstance(request.ground_truth, Volume) else None
    truths = ground_truth_masks(truth, structures.labels, structures.split, label, name or "the ground truth")
    for key, result in structures.results.items():
        tick = time.perf_counter()
        result.metrics = yield from compare_steps(
            result.fitted,
            masks[key],
            truths[key],
            threshold=result.config.threshold,
            empty_slices=result.config.empty_slices,
            reading=result.reading,
            cancel=cancel,
        )
        result.timings["evaluate"] = time.perf_counter() - tick


def run_reconstruct(
    request: ReconstructRequest,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> ReconstructOutput:
    """Run :func:`reconstruct_job_steps` to the end."""
    return drive(reconstruct_job_steps(request, cancel), on_progress)
