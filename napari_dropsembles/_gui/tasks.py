"""What the widgets' workers run: core generators composed into one job each (no Qt, no viewer).

Every task is ``task(request, cancel) -> Generator[Progress, None, output]``; the widget builds
the request from its fields on the main thread, a :class:`~.workers.Task` runs it, and the
output (including ready-made layer data) comes back to the main thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.annotate import ExpectedError, SliceSuggestion, expected_band_error, suggest_slices
from ..core.checkpoint import Prior, load_prior, save_prior
from ..core.config import ModelConfig
from ..core.device import resolve_device
from ..core.errors import CheckpointError, InputError
from ..core.input_kind import MAX_LABELS
from ..core.io import binary_mask_from_volume, ensure_writable_dir, list_labels
from ..core.mesh import sample_volume
from ..core.metrics import dice, evaluate_probabilities, reliability_curve, surface_band
from ..core.paths import bundled_prior_path
from ..core.pipeline import ReconstructionConfig
from ..core.pretrain import PretrainConfig, pretrain_steps, shapes_from_folder
from ..core.progress import CancelFlag, Progress, check_cancel, relay
from ..core.result import Reconstruction
from ..core.structures import (
    StructureRow,
    StructureSet,
    combine_structures,
    reconstruct_structures_steps,
    refine_structures_steps,
    structure_masks,
    structures_expected_error,
    suggest_structure_slices,
)
from ..core.volume import Volume
from .layers import InputFrame, reconstruction_to_layer_data, structure_meshes, surface_data

EACH_LABEL = "each"  # label choice: every label reconstructed separately (per-structure table)
ALL_LABELS = "all"  # label choice: all labels merged into one object

# --------------------------------------------------------------------------- threads


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def one_core_for_the_viewer() -> Iterator[None]:
    """On the CPU, torch uses all cores but one while a task runs: the viewer stays responsive, and
    torch's spinning worker threads do not fight the GUI thread for the same cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, available_cores() - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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

_PRIORS: dict[tuple, Prior] = {}
_PRIORS_LOCK = threading.Lock()


def load_prior_cached(path: str | Path | Prior | None) -> Prior:
    """A prior from a file (the bundled one for None), loaded once per file version."""
    if isinstance(path, Prior):
        return path
    if path is None:
        path = bundled_prior_path()
        if not path.is_file():
            raise CheckpointError(
                f"the bundled prior is not installed ({path.name} not found); choose a .safetensors prior "
                "with 'Browse' or train one in 'Train a prior'"
            )
    path = Path(path).expanduser().resolve()
    try:
        stat = path.stat()
    except OSError:
        raise CheckpointError(f"prior file not found: {path}") from None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _PRIORS_LOCK:
        if key not in _PRIORS:
            _PRIORS[key] = load_prior(path)
        return _PRIORS[key]


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


def _is_continuous(data: np.ndarray) -> bool:
    if data.dtype.kind != "f":
        return False
    sample = data.reshape(-1)[:: max(1, data.size // 1_000_000)]
    return not np.array_equal(sample, np.round(sample))


def observation_masks(
    volume: Volume, name: str, selection: int | str | None, image_threshold: float | None
) -> dict[int, Volume]:
    """label -> binary mask to reconstruct, with messages that name the widget's fields."""
    data = np.asarray(volume.data)
    finite = data.dtype.kind != "f" or bool(np.isfinite(data).all())
    if image_threshold is not None:
        return {1: binary_mask_from_volume(volume, threshold=image_threshold)}
    if finite and _is_continuous(data):
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
        return structure_masks(volume, labels)
    if selection == ALL_LABELS:
        return {1: binary_mask_from_volume(volume, label="all")}
    if selection is None:
        labels = list_labels(volume) if finite else []
        if len(labels) > 1:
            shown = labels if len(labels) <= 12 else [*labels[:12], "..."]
            raise InputError(
                f"'{name}' has {len(labels)} labels {shown}: choose one in 'Label', "
                "or 'all labels merged', or 'each label separately'"
            )
        return {1: binary_mask_from_volume(volume)}
    return {int(selection): binary_mask_from_volume(volume, label=int(selection))}


def reconstruct_task(request: ReconstructRequest, cancel: CancelFlag) -> Generator[Progress, None, ReconstructOutput]:
    started = time.perf_counter()
    yield Progress("prepare", 0, 1, message="checking the input")
    masks = observation_masks(request.volume, request.frame.name, request.selection, request.image_threshold)
    prior = load_prior_cached(request.prior)
    check_cancel(cancel)
    with one_core_for_the_viewer():
        structures = yield from reconstruct_structures_steps(masks, prior, request.config, cancel=cancel)
    yield Progress("layers", 0, 1, message="building layers")
    threshold = request.config.threshold
    member = None if request.member is None else min(int(request.member), structures.members - 1)
    layer_data = reconstruction_to_layer_data(
        structures, request.frame, threshold=threshold, member=member, names=request.names
    )
    return ReconstructOutput(
        structures,
        layer_data,
        structures.table(threshold),
        request.frame,
        threshold,
        time.perf_counter() - started,
        request=request,
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
    if mesh and len(structures.results) > 1:
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


PRETRAIN_PHASES = {"data": (0.0, 0.2), "pretrain": (0.2, 0.97), "fisher": (0.97, 1.0)}  # share of one network


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
    out = Path(request.out_path).expanduser()
    if not out.name.endswith(".safetensors"):
        raise InputError(f"the prior file must end in .safetensors, got {out.name or out}")
    ensure_writable_dir(out.parent)
    device = resolve_device(request.device)
    yield Progress("prepare", 0, 1, message="preparing the training data")
    shapes = None
    if request.data_folder is not None:
        shapes = shapes_from_folder(Path(request.data_folder))
    steps = pretrain_steps(  # workers=1: never fork the multi-threaded Qt process
        request.model_config,
        request.config,
        models=request.models,
        shapes=shapes,
        device=device,
        workers=1,
        cancel=cancel,
    )

    def overall(progress: Progress) -> None:
        lo, hi = PRETRAIN_PHASES.get(progress.phase, (0.0, 1.0))
        within = lo + (hi - lo) * min(progress.fraction, 1.0)
        progress.extra["overall"] = (progress.extra.get("model", 0) + within) / request.models

    with one_core_for_the_viewer():
        prior = yield from relay(steps, overall)
    check_cancel(cancel)
    prior.training["saved_from"] = "napari-dropsembles Train a prior widget"
    save_prior(prior, out)
    return PretrainOutput(out, prior.training, str(device))


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True, eq=False)
class EvaluateRequest:
    prediction: Volume  # foreground probabilities (e.g. the mean occupancy layer)
    ground_truth: Volume  # a mask or label volume
    uncertainty: Volume | None = None  # e.g. the variance layer; None: entropy of the prediction
    threshold: float = 0.5


@dataclass(eq=False)
class EvaluateOutput:
    metrics: dict[str, float]
    curve: dict  # reliability over all voxels of the ground truth grid
    curve_band: dict  # reliability within 2 voxels of the true surface
    voxels: int
    resampled: bool


def resample_onto(source: Volume, target: Volume, slab: int = 16) -> tuple[np.ndarray, bool]:
    """``source`` on ``target``'s grid (trilinear in world mm, by slabs); unchanged when the grids agree."""
    if source.shape == target.shape and np.allclose(source.affine, target.affine, atol=1e-5):
        return np.asarray(source.data, np.float64), False
    out = np.empty(target.shape, np.float32)
    rest = np.indices(target.shape[1:]).reshape(2, -1).T
    for start in range(0, target.shape[0], slab):
        rows = np.arange(start, min(start + slab, target.shape[0]))
        index = np.concatenate([np.repeat(rows, len(rest))[:, None], np.tile(rest, (len(rows), 1))], axis=1)
        out[rows] = sample_volume(source, target.index_to_world(index)).reshape(len(rows), *target.shape[1:])
    return out.astype(np.float64), True


def evaluate_task(request: EvaluateRequest, cancel: CancelFlag) -> Generator[Progress, None, EvaluateOutput]:
    truth = request.ground_truth
    yield Progress("evaluate", 0, 3, message="ground truth mask")
    continuous = _is_continuous(np.asarray(truth.data))
    gt = binary_mask_from_volume(truth, threshold=0.5) if continuous else binary_mask_from_volume(truth, label="all")
    gt_mask = np.asarray(gt.data) > 0
    check_cancel(cancel)
    yield Progress("evaluate", 1, 3, message="resampling onto the ground truth grid")
    probs, resampled = resample_onto(request.prediction, truth)
    uncertainty = None
    if request.uncertainty is not None:
        uncertainty, _ = resample_onto(request.uncertainty, truth)
    check_cancel(cancel)
    yield Progress("evaluate", 2, 3, message="metrics")
    metrics = evaluate_probabilities(
        probs, gt_mask, truth.spacing, uncertainty=uncertainty, threshold=request.threshold
    )
    band = surface_band(gt_mask, truth.spacing, 2.0)
    return EvaluateOutput(
        metrics,
        reliability_curve(probs, gt_mask),
        reliability_curve(probs[band], gt_mask[band]),
        int(gt_mask.size),
        resampled,
    )


# --------------------------------------------------------------------------- annotate next (suggest, refine)


@dataclass(eq=False)
class RoundOutput:
    """Where a result stands in the annotate-next loop: what to annotate next and how far from done."""

    suggestions: list[SliceSuggestion]  # StructureSuggestion (with the labels each helps) for several structures
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


def _truth_mask(truth: Volume, label: int | str = "all") -> np.ndarray:
    if _is_continuous(np.asarray(truth.data)):
        return np.asarray(binary_mask_from_volume(truth, threshold=0.5).data) > 0
    return np.asarray(binary_mask_from_volume(truth, label=label).data) > 0


def ground_truth_dice(result: Reconstruction | StructureSet, truth: Volume | None, threshold: float) -> float | None:
    """Dice of the thresholded mean against a ground truth (resampled onto its grid); None without one.

    Several structures: the mean of each structure's Dice against its label in the ground truth when the
    ground truth holds every label of the result, else the Dice of their union against all its labels."""
    if truth is None:
        return None
    results = result.results if isinstance(result, StructureSet) else {1: result}
    per_label = len(results) > 1 and not _is_continuous(np.asarray(truth.data))
    if per_label and set(results) <= set(list_labels(truth)):
        scores = []
        for label, part in sorted(results.items()):
            probs, _ = resample_onto(part.maps.mean, truth)
            scores.append(float(dice(probs >= threshold, _truth_mask(truth, label))))
        return float(np.mean(scores))
    mean = result.mean if isinstance(result, StructureSet) else result.maps.mean
    probs, _ = resample_onto(mean, truth)
    return float(dice(probs >= threshold, _truth_mask(truth)))


def round_of(result: Reconstruction | StructureSet, truth: Volume | None, threshold: float, n: int = 5) -> RoundOutput:
    """Suggestions (best first; ranked across structures), the expected error near the surface(s) and the Dice."""
    structures = result if isinstance(result, StructureSet) else combine_structures({1: result})
    parts = [structures.results[label] for label in structures.labels]
    first = parts[0]
    axis = first.reading.axis if first.reading is not None else None
    message = ""
    try:
        suggestions = suggest_slices(first, n) if len(parts) == 1 else suggest_structure_slices(structures, n)
    except InputError as error:
        suggestions, message = [], str(error)
    expected = expected_band_error(first) if len(parts) == 1 else structures_expected_error(structures)
    return RoundOutput(
        suggestions,
        expected,
        ground_truth_dice(first if len(parts) == 1 else structures, truth, threshold),
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
    steps: int | None = None  # fine-tuning steps of the round (None: core.refine.REFINE_STEPS)
    names: dict[int, str] = field(default_factory=dict)
    preview_interval_s: float = 0.0  # the live preview's interval (0: none)
    annotated_empty: tuple[int, ...] | None = None  # slices of the slice axis annotated as empty (None: the result's)


def refine_task(request: RefineRequest, cancel: CancelFlag) -> Generator[Progress, None, ReconstructOutput]:
    """One round: the observation read again (as the first run read it), each structure warm-started from its
    own members on its own mask (an unchanged structure kept), the layers made as a first run makes them."""
    started = time.perf_counter()
    yield Progress("prepare", 0, 1, message="reading the annotation")
    previous = request.previous.structures
    first = request.previous.request
    selection = None if first is None else first.selection
    image_threshold = None if first is None else first.image_threshold
    masks = observation_masks(request.volume, request.frame.name, selection, image_threshold)
    if len(previous.results) == 1 and len(masks) == 1:  # one structure: its mask, whatever its label
        masks = {previous.labels[0]: next(iter(masks.values()))}
    base = previous.results[previous.labels[0]].config
    config = dataclasses.replace(
        base, threshold=float(request.threshold), preview_interval_s=float(request.preview_interval_s)
    )
    if request.annotated_empty is not None:
        config = dataclasses.replace(config, annotated_empty=tuple(request.annotated_empty))
    check_cancel(cancel)
    with one_core_for_the_viewer():
        structures = yield from refine_structures_steps(previous, masks, config, steps=request.steps, cancel=cancel)
    yield Progress("layers", 0, 1, message="building layers")
    member = None if request.member is None else min(int(request.member), structures.members - 1)
    layer_data = reconstruction_to_layer_data(
        structures, request.frame, threshold=request.threshold, member=member, names=request.names
    )
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
