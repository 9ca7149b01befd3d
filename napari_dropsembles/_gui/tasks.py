"""What the widgets' workers run: each task one call of a core job (core/jobs/*_api), no Qt, no viewer.

Every task is ``task(request, cancel) -> Generator[Progress, None, output]``; the widget builds the
request from its fields on the main thread, a :class:`~.workers.Task` runs it, and the output (with
ready-made layer data) comes back to the main thread. A task only translates: the widget's request into
the job's (its input checked in the widget's words), the job's output into layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config.configs import ModelConfig, PretrainConfig, ReconstructionConfig
from ..core.config.errors import CheckpointError, InputError
from ..core.config.paths import bundled_prior_path
from ..core.config.progress import CancelFlag, Progress, check_cancel
from ..core.jobs import evaluate_api, inputs, pretrain_api, reconstruct_api
from ..core.jobs.evaluate_api import ground_truth_dice
from ..core.jobs.inputs import ALL, EACH, load_priors
from ..core.jobs.structures import structures_expected_error
from ..core.jobs.suggest import ExpectedError, SliceSuggestion
from ..core.jobs.suggest_api import next_slices
from ..core.networks.checkpoint import Prior
from ..core.networks.threads import use_threads
from ..core.results.structures import StructureRow, StructureSet
from ..core.volumes.input_kind import MAX_LABELS, whole_numbers
from ..core.volumes.masks import binary_mask_from_volume, list_labels
from ..core.volumes.volume import Volume
from .layers import InputFrame, reconstruction_to_layer_data, structure_meshes, surface_data

EACH_LABEL = EACH  # label choice: every label reconstructed separately (per-structure table)
ALL_LABELS = ALL  # label choice: all labels merged into one object

# --------------------------------------------------------------------------- threads


def one_core_for_the_viewer() -> contextlib.AbstractContextManager:
    """torch's threads for a task, in the thread that runs it: the cores other processes leave free, all
    but one (the GUI thread's), idle threads sleeping (core/networks/threads)."""
    return use_threads("viewer")


_WARMED = threading.Event()


def warm_up() -> None:
    """Do once, off the GUI thread, the first-use work of a run: torch's optimiser machinery imports
    torch._dynamo (about 2 s), and the bundled prior is read. A Run pressed later starts at once,
    and its worker does not hold the interpreter lock importing modules while the user watches."""
    if _WARMED.is_set():
        return
    _WARMED.set()
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    if bundled_prior_path().is_file():
        with contextlib.suppress(CheckpointError):
            load_prior_cached(None)


def start_warm_up() -> None:
    """:func:`warm_up` in a daemon thread (widgets call this when they open)."""
    if not _WARMED.is_set():
        threading.Thread(target=warm_up, name="dropsembles-warm-up", daemon=True).start()


# --------------------------------------------------------------------------- priors

_PRIORS = inputs.PRIOR_CACHE  # the one prior cache (core/jobs/inputs): the warm-up fills it


def load_prior_cached(path: str | Path | Prior | None) -> Prior:
    """A prior (the bundled one for None) from the one cache of core/jobs/inputs, in the widget's words."""
    if path is None and not bundled_prior_path().is_file():
        raise CheckpointError(
            f"the bundled prior is not installed ({bundled_prior_path().name} not found); choose a .safetensors "
            "prior with 'Browse' or train one in 'Train a prior'"
        )
    if isinstance(path, (str, Path)):
        path = Path(path).expanduser().resolve()
    return load_priors(path)


# --------------------------------------------------------------------------- reconstruct


@dataclass(frozen=True, eq=False)
class ReconstructRequest:
    volume: Volume  # the input layer's data (a copy) with its world affine
    frame: InputFrame
    prior: str | Path | Prior | None  # None: the bundled prior
    config: ReconstructionConfig
    selection: int | str | None = None  # None (binary input), a label, ALL_LABELS or EACH_LABEL
    image_threshold: float | None = None  # Image input: voxels >= this are the object
    member: int | None = None  # show this member's mesh too
    names: dict[int, str] = field(default_factory=dict)  # label -> structure name (each structure's mesh layer)

    @property
    def label(self) -> int | str | None:
        """The label choice of the core job (a thresholded image is one object)."""
        return None if self.image_threshold is not None else self.selection


@dataclass(eq=False)
class ReconstructOutput:
    structures: StructureSet
    layer_data: list
    rows: list[StructureRow]
    frame: InputFrame
    threshold: float
    elapsed_s: float
    request: ReconstructRequest | None = None  # how the observation was read (a refinement reads it the same way)
    round: RoundOutput | None = None  # a refinement's suggestions, expected error and Dice


def check_selection(volume: Volume, name: str, selection: int | str | None, image_threshold: float | None) -> None:
    """The layer and its label choice, checked in the widget's words (core/jobs reads the masks)."""
    data = np.asarray(volume.data)
    finite = data.dtype.kind != "f" or bool(np.isfinite(data).all())
    if image_threshold is not None:
        return
    if finite and not whole_numbers(data):
        raise InputError(
            f"'{name}' holds continuous values in [{float(data.min()):g}, {float(data.max()):g}], not a mask: "
            "tick 'Threshold image' and choose a level (voxels at or above it become the object)"
        )
    if selection == EACH_LABEL:
        if not finite:
            binary_mask_from_volume(volume, label="all")  # raises the NaN message
        labels = list_labels(volume)
        if len(labels) > MAX_LABELS:
            raise InputError(
                f"'{name}' has {len(labels)} distinct values, too many to reconstruct one by one: if it is an "
                "intensity image, tick 'Threshold image'; else choose one label in 'Label'"
            )
    elif selection is None:
        labels = list_labels(volume) if finite else []
        if len(labels) > 1:
            shown = labels if len(labels) <= 12 else [*labels[:12], "..."]
            raise InputError(
                f"'{name}' has {len(labels)} labels {shown}: choose one in 'Label', "
                "or 'all labels merged', or 'each label separately'"
            )


def observation_masks(
    volume: Volume, name: str, selection: int | str | None, image_threshold: float | None
) -> dict[int, Volume]:
    """label -> binary mask to reconstruct, with messages that name the widget's fields."""
    check_selection(volume, name, selection, image_threshold)
    label = None if image_threshold is not None else selection
    return inputs.observation_masks(volume, label, image_threshold)[0]


def _layers(structures: StructureSet, request, threshold: float, member: int | None) -> list:
    member = None if member is None else min(int(member), structures.members - 1)
    frame, names = request.frame, request.names
    return reconstruction_to_layer_data(structures, frame, threshold=threshold, member=member, names=names)


def reconstruct_task(request: ReconstructRequest, cancel: CancelFlag) -> Generator[Progress, None, ReconstructOutput]:
    """The reconstruct job of core/jobs on the layer's data; the layers made from its structures."""
    started = time.perf_counter()
    yield Progress("prepare", 0, 1, message="checking the input")
    check_selection(request.volume, request.frame.name, request.selection, request.image_threshold)
    job = reconstruct_api.ReconstructRequest(
        observation=request.volume,
        config=dataclasses.replace(request.config, keep_members=True),  # the table's volume spread
        prior=load_prior_cached(request.prior),
        label=request.label,
        threshold=request.image_threshold,
    )
    check_cancel(cancel)
    with one_core_for_the_viewer():
        structures = (yield from reconstruct_api.reconstruct_job_steps(job, cancel)).structures
    yield Progress("layers", 0, 1, message="building layers")
    threshold = request.config.threshold
    layer_data = _layers(structures, request, threshold, request.member)
    elapsed = time.perf_counter() - started
    return ReconstructOutput(
        structures, layer_data, structures.table(threshold), request.frame, threshold, elapsed, request=request
    )


@dataclass(eq=False)
class RemeshOutput:
    threshold: float
    step_size: int
    mesh: tuple | None  # Surface data (vertices in the input's data coordinates, faces, values)
    labels: np.ndarray | None  # thresholded labels (full resolution only)
    member: tuple | None
    empty: bool
    elapsed_s: float
    rows: list[StructureRow] | None = None  # the structure table at this threshold (full resolution only)
    structure_meshes: dict[int, tuple] | None = None  # label -> Surface data (several structures: one layer each)

    @property
    def triangles(self) -> int:
        if self.structure_meshes:
            return sum(len(faces) for _v, faces, _values in self.structure_meshes.values()) if not self.empty else 0
        return len(self.mesh[1]) if self.mesh and not self.empty else 0


def remesh_task(
    structures: StructureSet,
    frame: InputFrame,
    threshold: float,
    *,
    step_size: int = 1,
    member: int | None = None,
    mesh: bool = True,
    rows: bool = False,
) -> Generator[Progress, None, RemeshOutput]:
    """Marching cubes on the cached means at a new threshold: no network query."""
    started = time.perf_counter()
    yield Progress("mesh", 0, 1, message=f"threshold {threshold:.2f}")
    surface, empty, parts = None, False, None
    if mesh and len(structures.results) > 1:  # the layers: one per structure (core/results: a set of one is one)
        meshes = structure_meshes(structures, threshold, step_size=step_size)
        parts = {label: surface_data(part, frame) for label, part in meshes.items()}
        empty = all(part.is_empty for part in meshes.values())
    elif mesh:
        extracted = structures.remesh(threshold, step_size=step_size)
        surface, empty = surface_data(extracted, frame), extracted.is_empty
    labels = structures.label_volume(threshold).data if step_size == 1 and mesh else None
    member_data = None
    if member is not None and step_size == 1:
        member_data = surface_data(structures.member_mesh(member, threshold), frame)
    table = structures.table(threshold) if rows else None
    return RemeshOutput(
        threshold, step_size, surface, labels, member_data, empty, time.perf_counter() - started, table, parts
    )


# --------------------------------------------------------------------------- pretrain


@dataclass(frozen=True)
class PretrainRequest:
    out_path: Path
    model_config: ModelConfig = field(default_factory=ModelConfig)
    config: PretrainConfig = field(default_factory=PretrainConfig)
    models: int = 1
    data_folder: Path | None = None  # None: the procedural vertebra generator
    device: str = "auto"


@dataclass(eq=False)
class PretrainOutput:
    path: Path
    training: dict
    device: str


def pretrain_task(request: PretrainRequest, cancel: CancelFlag) -> Generator[Progress, None, PretrainOutput]:
    """The pretrain job of core/jobs (no worker processes: never fork the multi-threaded Qt process)."""
    out = Path(request.out_path).expanduser()
    if not out.name.endswith(".safetensors"):
        raise InputError(f"the prior file must end in .safetensors, got {out.name or out}")
    job = pretrain_api.PretrainRequest(
        out=out,
        model_config=request.model_config,
        config=request.config,
        models=request.models,
        data=request.data_folder,
        device=request.device,
        workers=1,
        provenance={"saved_from": "napari-dropsembles Train a prior widget"},
    )
    with one_core_for_the_viewer():
        output = yield from pretrain_api.pretrain_job_steps(job, cancel)
    return PretrainOutput(out, output.prior.training, output.device)


# --------------------------------------------------------------------------- evaluate

EvaluateRequest = evaluate_api.EvaluateRequest  # a prediction layer (and its uncertainty) against a ground truth
EvaluateOutput = evaluate_api.EvaluateOutput
resample_onto = evaluate_api.resample_onto


def evaluate_task(request: EvaluateRequest, cancel: CancelFlag) -> Generator[Progress, None, EvaluateOutput]:
    """The evaluate job of core/jobs on the layers' data."""
    return (yield from evaluate_api.evaluate_job_steps(request, cancel))


# --------------------------------------------------------------------------- annotate next (suggest, refine)


@dataclass(eq=False)
class RoundOutput:
    """Where a result stands in the annotate-next loop: what to annotate next and how far from done."""

    suggestions: list[SliceSuggestion]  # StructureSuggestion, with the labels each helps
    expected: ExpectedError | None
    dice: float | None  # against the ground truth, when one was given (several structures: mean over labels)
    labelled_slices: int  # slices of the slice axis holding labels
    axis: int | None  # the slice axis
    message: str = ""  # why there are no suggestions
    annotated_empty: tuple[int, ...] = ()  # slices of the slice axis the round read as annotated empty


@dataclass(frozen=True, eq=False)
class SuggestRequest:
    structures: StructureSet
    ground_truth: Volume | None = None
    threshold: float = 0.5
    n: int = 5


def labelled_slices(observation: Volume | list[Volume], axis: int | None) -> int:
    """How many slices along ``axis`` hold a label (in any of the observations given)."""
    if axis is None:
        return 0
    observations = observation if isinstance(observation, list) else [observation]
    other = tuple(a for a in range(3) if a != axis)
    held = np.zeros(observations[0].shape[axis], bool)
    for volume in observations:
        held |= (np.asarray(volume.data) > 0).any(axis=other)
    return int(held.sum())


def round_of(structures: StructureSet, truth: Volume | None, threshold: float, n: int = 5) -> RoundOutput:
    """Suggestions (best first; ranked across structures), the expected error near the surface(s) and the Dice."""
    parts = [structures.results[label] for label in structures.labels]
    first = parts[0]
    axis = first.reading.axis if first.reading is not None else None
    try:
        found = next_slices(structures, n)
        suggestions, expected, message = found.suggestions, found.expected, ""
    except InputError as error:
        suggestions, expected, message = [], structures_expected_error(structures), str(error)
    return RoundOutput(
        suggestions,
        expected,
        ground_truth_dice(structures, truth, threshold),
        labelled_slices([part.observation for part in parts], axis),
        axis,
        message,
        tuple(first.config.annotated_empty),
    )


def suggest_task(request: SuggestRequest, cancel: CancelFlag) -> Generator[Progress, None, RoundOutput]:
    yield Progress("suggest", 0, 1, message="ranking the slices by the error they would remove")
    check_cancel(cancel)
    return round_of(request.structures, request.ground_truth, request.threshold, request.n)


@dataclass(frozen=True, eq=False)
class RefineRequest:
    previous: ReconstructOutput  # the result to refine (one structure or several)
    volume: Volume  # the observation layer's data now (a copy), with the user's added and corrected slices
    frame: InputFrame
    threshold: float  # the surface level (the slider)
    member: int | None = None
    ground_truth: Volume | None = None
    steps: int | None = None  # fine-tuning steps of the round (None: REFINE_STEPS of core/config)
    names: dict[int, str] = field(default_factory=dict)
    preview_interval_s: float = 0.0  # the live preview's interval (0: none)
    annotated_empty: tuple[int, ...] | None = None  # slices of the slice axis annotated as empty (None: the result's)


def refine_task(request: RefineRequest, cancel: CancelFlag) -> Generator[Progress, None, ReconstructOutput]:
    """One round: the reconstruct job of core/jobs resumed from the previous result (each structure warm-started
    from its own members on its own mask, an unchanged structure kept), the layers made as a first run makes them."""
    started = time.perf_counter()
    yield Progress("prepare", 0, 1, message="reading the annotation")
    first = request.previous.request
    selection = None if first is None else first.selection
    image_threshold = None if first is None else first.image_threshold
    check_selection(request.volume, request.frame.name, selection, image_threshold)
    changes = {"threshold": float(request.threshold), "preview_interval_s": float(request.preview_interval_s)}
    if request.annotated_empty is not None:
        changes["annotated_empty"] = tuple(request.annotated_empty)
    job = reconstruct_api.ReconstructRequest(
        observation=request.volume,
        label=None if image_threshold is not None else selection,
        threshold=image_threshold,
        resume=request.previous.structures,
        resume_changes=changes,
        refine_steps=request.steps,
    )
    check_cancel(cancel)
    with one_core_for_the_viewer():
        structures = (yield from reconstruct_api.reconstruct_job_steps(job, cancel)).structures
    yield Progress("layers", 0, 1, message="building layers")
    layer_data = _layers(structures, request, request.threshold, request.member)
    output = ReconstructOutput(
        structures,
        layer_data,
        structures.table(request.threshold),
        request.frame,
        request.threshold,
        time.perf_counter() - started,
        request=first,
    )
    output.round = round_of(structures, request.ground_truth, request.threshold)
    return output
