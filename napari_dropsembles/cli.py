"""``napari-dropsembles``: the headless command line over the core API.

Every user error (bad volume, bad parameter, bad checkpoint) prints one clear line and exits
with code 2, with nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .core.errors import Cancelled, ConfigError, DropsemblesError, InputError, word_settings
from .core.progress import Progress, drive

EXIT_USAGE = 2


class ProgressPrinter:
    """A progress bar on stderr: redrawn in a terminal, a line every 30 s in a log; silent with --quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.phase = ""
        self.started = time.perf_counter()
        self.interactive = _stderr_call("isatty", default=False)
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        new_phase = progress.phase != self.phase
        done = progress.step >= progress.total
        if not (new_phase or done or now - self._last > (0.1 if self.interactive else 30.0)):
            return
        if new_phase and self.phase and self.interactive:
            _say("", end="")
        self.phase = progress.phase
        self._last = now
        width = 30
        filled = int(width * min(progress.fraction, 1.0))
        loss = f" loss {progress.loss:.4f}" if progress.loss is not None else ""
        note = f" {progress.message}" if progress.message else ""
        line = (
            f"{progress.phase:>9} [{'#' * filled}{'.' * (width - filled)}] "
            f"{progress.step}/{progress.total}{loss}{note} {now - self.started:6.1f}s"
        )
        if self.interactive:
            _say("\r" + line, end="\n" if done else "")
        else:
            _say(line)


def _stderr_call(method: str, *args: object, default: object = None) -> object:
    """Call ``sys.stderr.method(*args)``; ``default`` when stderr is None, closed or broken (2>&-)."""
    stream = sys.stderr
    if stream is None:
        return default
    try:
        return getattr(stream, method)(*args)
    except (OSError, ValueError, AttributeError):
        return default


def _say(text: str, end: str = "\n") -> None:
    """A line on stderr when there is one; a run never fails because stderr is closed."""
    _stderr_call("write", text + end)
    _stderr_call("flush")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {value}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _label(text: str) -> int | str:
    if text in ("all", "each"):
        return text
    try:
        return int(text)
    except ValueError:
        if text.strip():
            return text.strip()  # a segment name of a .seg.nrrd or DICOM-SEG, resolved when the file is read
        raise argparse.ArgumentTypeError(
            f"--label takes an integer label, a segment name, 'all' or 'each', got {text!r}"
        ) from None


def _output_arg(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a path, got an empty string")
    return Path(text)


def _memory_limit(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of GB, got {text}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# config field -> the option that sets it, where the two names differ (ConfigError messages name the
# option); any other field `some_name` is set by `--some-name`
CONFIG_OPTIONS = {
    "finetune.steps": "--steps",
    "finetune.ewc_lambda": "--ewc",
    "finetune.lr": "--lr",
    "resolution_mm": "--resolution",
    "threshold": "--level",
    "grid_size": "--grid",
    "input_threshold": "--threshold",
    "gt_spacing_mm": "--gt-spacing",
    "in_plane_mm": "--in-plane",
}


def config_option(field: str) -> str:
    """The command-line option that sets a config field."""
    return CONFIG_OPTIONS.get(field, "--" + field.replace("_", "-"))


def cli_wording(error: ConfigError) -> str:
    """A config error in the command line's words: the option in place of the field."""
    return error.worded(config_option(error.field))


def cli_setting(field: str, value: object) -> str:
    """A config field set to a value, as options (``--empty-slices background``)."""
    return f"{config_option(field)} {value}"


def cli_word(field: str, value: str | None) -> str:
    """A setting named in a core message, as its option (``--label 3``, ``--memory-limit GB``)."""
    return config_option(field) if value is None else cli_setting(field, value)


def add_reconstruction_options(p: argparse.ArgumentParser) -> None:
    """The options of a :class:`ReconstructionConfig`; defaults and checks come from the config."""
    from .core.config import MEMBER_DIVERSITY, ReconstructionConfig
    from .core.device import DEVICE_CHOICES
    from .core.methods import METHODS
    from .core.slice_field import EMPTY_SLICES

    base = ReconstructionConfig()
    tune = base.finetune
    p.add_argument("--method", choices=METHODS, default=base.method)
    p.add_argument("--members", type=int, default=base.members, help=f"ensemble size M (default {base.members})")
    p.add_argument("--steps", type=int, default=tune.steps, help=f"fine-tuning steps (default {tune.steps})")
    p.add_argument(
        "--ewc", type=float, default=tune.ewc_lambda, help=f"EWC strength lambda (0 = off; default {tune.ewc_lambda})"
    )
    p.add_argument("--lr", type=float, default=tune.lr, help=f"fine-tuning learning rate (default {tune.lr})")
    p.add_argument(
        "--resolution",
        type=float,
        default=base.resolution_mm,
        metavar="MM",
        help="output voxel size in mm (default: the observation's finest spacing)",
    )
    p.add_argument(
        "--level",
        type=float,
        default=base.threshold,
        metavar="L",
        help=f"surface level on the mean occupancy, in (0, 1) (default {base.threshold})",
    )
    p.add_argument(
        "--empty-slices",
        choices=EMPTY_SLICES,
        default=base.empty_slices,
        help="empty slices between labelled ones: not annotated (default) or true background",
    )
    p.add_argument(
        "--member-diversity",
        choices=MEMBER_DIVERSITY,
        default=base.member_diversity,
        help="slices (default): members read the slice interpolation shifted by the between-slice uncertainty "
        "learned from held-out slices; none: every member reads the same input",
    )
    p.add_argument(
        "--annotation-axis",
        type=int,
        choices=(0, 1, 2),
        default=base.annotation_axis,
        help="the axis a fine-grid scan was annotated along, every few slices: its empty slices are not annotated "
        "(default: the thick axis, else detected)",
    )
    p.add_argument(
        "--annotated-empty",
        type=_slice_list,
        default=None,
        metavar="I,J,...",
        help="slices of the annotation axis annotated as empty (background), not left out "
        "(with --resume: replaces the result's list, which is kept otherwise)",
    )
    p.add_argument("--device", choices=DEVICE_CHOICES, default=base.device)


def _slice_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs slice indices separated by commas, got {text!r}") from None


def config_from_args(args: argparse.Namespace, **more: object):
    """The :class:`ReconstructionConfig` of the options added by :func:`add_reconstruction_options`."""
    from .core.config import FinetuneConfig, ReconstructionConfig

    try:
        finetune = FinetuneConfig(steps=args.steps, ewc_lambda=args.ewc, lr=args.lr)
    except ConfigError as error:
        raise error.nested("finetune") from None
    return ReconstructionConfig(
        method=args.method,
        members=args.members,
        finetune=finetune,
        resolution_mm=args.resolution,
        threshold=args.level,
        empty_slices=args.empty_slices,
        member_diversity=args.member_diversity,
        annotation_axis=args.annotation_axis,
        annotated_empty=() if args.annotated_empty is None else args.annotated_empty,
        device=args.device,
        seed=args.seed,
        **more,
    )


def memory_option(p: argparse.ArgumentParser) -> None:
    from .core.budget import ENV_VAR

    p.add_argument(
        "--memory-limit",
        type=_memory_limit,
        default=None,
        metavar="GB",
        help=f"refuse work estimated to need more memory (default: ${ENV_VAR}, else 80%% of the RAM)",
    )


def resume_options(p: argparse.ArgumentParser) -> None:
    from .core.refine import REFINE_STEPS

    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="refine the result in DIR (written by reconstruct or suggest) with the updated observation: its members "
        "warm-start and its settings are kept (options of the first run are ignored, --device and --annotated-empty "
        "aside); a result of several structures (--label each) refines each from its own members with its label of "
        "the updated volume, keeping those whose label did not change",
    )
    p.add_argument(
        "--refine-steps",
        type=_non_negative_int,
        default=REFINE_STEPS,
        metavar="N",
        help=f"with --resume: fine-tuning steps of the round (default {REFINE_STEPS})",
    )


def build_parser() -> argparse.ArgumentParser:
    from .core.device import DEVICE_CHOICES

    parser = argparse.ArgumentParser(
        prog="napari-dropsembles",
        description="Reconstruct 3D shapes from sparse segmentations with calibrated uncertainty (Dropsembles).",
    )
    parser.add_argument("--version", action="version", version=f"napari-dropsembles {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        memory_option(p)

    rec = sub.add_parser("reconstruct", help="fine-tune a prior on one observation; write maps, mesh and report")
    rec.add_argument("observation", type=Path, help="segmentation volume (.nii/.nii.gz/.tif/.npy/.npz)")
    rec.add_argument("--out", type=_output_arg, required=True, help="output folder")
    rec.add_argument(
        "--prior",
        type=Path,
        action="append",
        help="prior .safetensors (default: the bundled one); repeat to combine single-model priors for a deep ensemble",
    )
    add_reconstruction_options(rec)
    resume_options(rec)
    rec.add_argument("--like", type=Path, default=None, help="write the outputs on this reference volume's grid")
    rec.add_argument(
        "--threshold",
        type=_finite_float,
        default=None,
        metavar="T",
        help="binarise a non-binary input: voxels >= T are the object",
    )
    rec.add_argument(
        "--label",
        type=_label,
        default=None,
        help="label to reconstruct in a multi-label volume: a number, a segment name (.seg.nrrd, DICOM-SEG), 'all' "
        "(merged into one object) or 'each' (every label separately: label<k>/ result folders, merged maps, "
        "segmentation and mesh, structures.json)",
    )
    rec.add_argument(
        "--ground-truth", type=Path, default=None, help="dense mask: add metrics and baselines to report.json"
    )
    rec.add_argument("--members-out", action="store_true", help="also write one mesh per member")
    rec.add_argument(
        "--max-voxels",
        type=_positive_int,
        default=None,
        metavar="N",
        help="refuse output grids with more voxels (default: $DROPSEMBLES_MAX_VOXELS, else 512^3)",
    )
    rec.add_argument(
        "--format",
        default=None,
        metavar="EXT[,EXT...]",
        help="output formats by extension: maps nii.gz|nrrd|mha|mhd|ome.zarr, segmentation seg.nrrd|dcm (DICOM-SEG), "
        "mesh vtp|vtk|ply|obj|stl|glb (LPS); default: the input's family (NIfTI maps and mesh.ply otherwise)",
    )
    common(rec)

    sug = sub.add_parser(
        "suggest",
        help="reconstruct (or refine --resume DIR) and rank the slices to annotate next; write suggestions.json",
    )
    sug.add_argument("observation", type=Path, help="segmentation volume, annotated every few slices")
    sug.add_argument("--out", type=_output_arg, required=True, help="output folder (the result and suggestions.json)")
    sug.add_argument("--prior", type=Path, action="append", help="prior .safetensors (default: the bundled one)")
    sug.add_argument("--n", type=_positive_int, default=5, help="how many slices to suggest (default 5)")
    sug.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="suggest along this voxel axis (default: the thick or annotation axis)",
    )
    add_reconstruction_options(sug)
    resume_options(sug)
    sug.add_argument(
        "--threshold",
        type=_finite_float,
        default=None,
        metavar="T",
        help="binarise a non-binary input: voxels >= T are the object",
    )
    sug.add_argument(
        "--label",
        type=_label,
        default=None,
        help="label to use in a multi-label volume ('each': every label separately, the slices ranked across them)",
    )
    common(sug)

    pre = sub.add_parser("pretrain", help="train a prior on procedural vertebrae (or a folder of dense masks)")
    pre.add_argument("--out", type=_output_arg, required=True, help="checkpoint path (.safetensors)")
    pre.add_argument("--data", type=Path, default=None, help="folder of dense mask volumes (default: procedural)")
    pre.add_argument(
        "--procedural-share",
        type=float,
        default=0.0,
        help="with --data: share of training samples drawn from procedural vertebrae instead (0..1)",
    )
    pre.add_argument(
        "--shapes", type=_non_negative_int, default=0, help="fixed pool of procedural shapes (0 = endless)"
    )
    pre.add_argument(
        "--samples",
        type=_positive_int,
        default=1024,
        help="training samples made up front (each a shape with random slicing and corruption)",
    )
    pre.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="PRIOR",
        help="fine-tune this prior (e.g. the bundled one: 'bundled') on the data instead of starting from random "
        "weights; its architecture and dropout are kept (--grid/--hidden/--blocks/--dropout are ignored)",
    )
    pre.add_argument(
        "--slice-axes",
        type=int,
        nargs="+",
        default=[2],
        metavar="AXIS",
        help="voxel axes of the training shapes a random slicing may be thick along (0 1 2: every direction)",
    )
    pre.add_argument("--steps", type=_positive_int, default=2000)
    pre.add_argument("--batch-size", type=_positive_int, default=8)
    pre.add_argument("--lr", type=_positive_float, default=1e-3)
    pre.add_argument("--dropout", type=_unit_interval, default=0.1, help="decoder dropout rate p in (0, 1)")
    pre.add_argument("--models", type=_positive_int, default=1, help="independent models (a deep-ensemble prior)")
    pre.add_argument("--grid", type=_positive_int, default=24, help="encoder grid size")
    pre.add_argument("--hidden", type=_positive_int, default=64, help="decoder width")
    pre.add_argument("--blocks", type=_positive_int, default=4, help="decoder ResNet blocks")
    pre.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    common(pre)

    ev = sub.add_parser("evaluate", help="score a reconstruction folder against a ground truth")
    ev.add_argument("prediction", type=Path, help="folder written by reconstruct (mean/variance/entropy .nii.gz)")
    ev.add_argument("ground_truth", type=Path, help="dense ground-truth mask")
    ev.add_argument(
        "--level", "--threshold", dest="level", type=_unit_interval, default=0.5, help="decision level on the mean"
    )
    ev.add_argument("--out", type=_output_arg, default=None, help="write the metrics JSON here (default: stdout only)")
    ev.add_argument("--quiet", action="store_true")
    memory_option(ev)

    sim = sub.add_parser("simulate", help="make a synthetic case: dense ground truth and a low-resolution observation")
    sim.add_argument("--out", type=_output_arg, required=True, help="output folder")
    sim.add_argument("--slice-factor", type=_positive_float, default=4.0, help="slice spacing / in-plane spacing")
    sim.add_argument("--in-plane", type=_positive_float, default=1.0, help="in-plane spacing of the observation (mm)")
    sim.add_argument("--axis", type=int, choices=(0, 1, 2), default=2, help="thick-slice axis")
    sim.add_argument("--erosion", type=int, choices=(-1, 0, 1), default=0, help="-1 erode, +1 dilate by one voxel")
    sim.add_argument("--noise", type=_non_negative_float, default=0.0, help="boundary label-flip probability")
    sim.add_argument("--missing", type=_non_negative_float, default=0.0, help="share of slices left empty")
    sim.add_argument("--gt-spacing", type=_positive_float, default=0.5, help="ground-truth voxel size (mm)")
    common(sim)

    many = sub.add_parser(
        "reconstruct-many",
        help="reconstruct a cohort (folder, glob or CSV manifest) on dask.distributed; resumable; one summary table",
    )
    many.add_argument("inputs", help="a folder, a glob pattern (quoted) or a CSV manifest (observation, ...)")
    many.add_argument(
        "--out", type=_output_arg, required=True, help="output folder (cases/, failed/, summary.csv/.parquet)"
    )
    many.add_argument("--prior", type=Path, action="append", help="prior .safetensors (default: the bundled one)")
    add_reconstruction_options(many)
    many.add_argument(
        "--labels",
        default=None,
        help="structures of cases whose manifest names none: 'each' label, 'all' merged, or '1,2,3' (default: binary)",
    )
    many.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="LocalCluster worker processes (default: sized to the machine; 0 = run in this process)",
    )
    many.add_argument("--scheduler", default=None, metavar="ADDRESS", help="use a running dask scheduler (tcp://...)")
    many.add_argument("--gpu", action="store_true", help="each task claims dask resource GPU=1 (workers declare it)")
    many.add_argument("--num-parts", type=_positive_int, default=1, help="split the manifest into N parts")
    many.add_argument("--part-id", type=_non_negative_int, default=0, help="run part I of --num-parts (0-based)")
    many.add_argument("--dashboard-address", default=":8787", help="LocalCluster dashboard address")
    common(many)

    demo = sub.add_parser("demo", help="the main job on the bundled sample: reconstruct, score, write outputs")
    demo.add_argument("--out", type=_output_arg, default=Path("dropsembles-demo"), help="output folder")
    demo.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    demo.add_argument(
        "--view",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="open napari with the sample, the result layers and the widget (default: when a display is present)",
    )
    common(demo)
    return parser


def _load_observation(path: Path, label, threshold):
    from .core.io import binary_mask_from_volume, read_volume

    volume = read_volume(path)
    if isinstance(label, str) and label != "all":  # a segment name (core/formats)
        from .core.formats import find_segment

        label = find_segment(path, label).label
    elif label is None and threshold is None:
        from .core.formats import can_read, read_segments

        segments = read_segments(path).segments if can_read(path) else ()
        if len(segments) > 1:
            names = ", ".join(repr(s.name) for s in segments)
            raise InputError(
                f"{path}: holds several segments ({names}); choose one with --label NAME, "
                f'e.g. --label "{segments[0].name}", or merge them with --label all'
            )
    return binary_mask_from_volume(volume, label=label, threshold=threshold)


def _load_priors(paths: Sequence[Path] | None):
    from .core.checkpoint import Prior, load_prior

    if not paths:
        return load_prior(None)
    priors = [load_prior(p) for p in paths]
    if len(priors) == 1:
        return priors[0]
    first = priors[0]
    for other in priors[1:]:
        if other.config != first.config:
            raise InputError(f"priors {first.name} and {other.name} have different architectures")
    return Prior(
        config=first.config, models=[m for p in priors for m in p.models], training=first.training, path=first.path
    )


def _fit(args: argparse.Namespace, prior, observation, target, printer):
    """Reconstruct, or with ``--resume`` refine the earlier result; the config comes from the options or the result."""
    from .core.pipeline import reconstruct_steps

    if args.resume is None:
        config = config_from_args(args, keep_members=getattr(args, "members_out", False))
        return drive(reconstruct_steps(observation, prior, config, target=target), printer)

    from .core.refine import read_warm_start, refine_steps

    start = read_warm_start(args.resume, prior)
    config = _resume_config(args, start.config)
    return drive(refine_steps(start, observation, config, steps=args.refine_steps, target=target), printer)


def _resume_config(args: argparse.Namespace, config):
    """The earlier result's settings, on this run's --device, with --annotated-empty when given."""
    from dataclasses import replace

    config = replace(config, device=args.device)
    if args.annotated_empty is not None:
        config = replace(config, annotated_empty=args.annotated_empty)
    return config


# -- several structures (--label each) ----------------------------------------------------------------


def _several(args: argparse.Namespace) -> bool:
    """True for a run over every label (--label each, or --resume of a result of several structures)."""
    from .core.structures import is_structure_folder

    folder = args.resume is not None and is_structure_folder(args.resume)
    if folder and args.label not in (None, "each"):
        raise InputError(
            f"{args.resume} holds several structures and --resume refines every one of them: leave --label out"
        )
    if args.label == "each" and args.resume is not None and not folder:
        raise InputError(
            f"{args.resume} holds one structure (not written with --label each): resume it with the --label of "
            "its first run, or reconstruct with --label each again"
        )
    if (folder or args.label == "each") and args.threshold is not None:
        raise InputError("--threshold makes one object of an image; several structures need a label volume")
    return bool(folder) or args.label == "each"


def _structure_masks(path: Path):
    from .core.io import read_volume
    from .core.structures import structure_masks

    return structure_masks(read_volume(path))


def _fit_structures(args: argparse.Namespace, prior, masks, target, printer):
    """Reconstruct every label, or with ``--resume`` refine each structure of the earlier result."""
    from .core.budget import check_reconstruction_request
    from .core.methods import check_prior
    from .core.structures import read_structure_starts, reconstruct_structures_steps, refine_structures_steps

    if args.resume is None:
        config = config_from_args(args, keep_members=True)
        check_prior(config, prior)
        for mask in masks.values():
            check_reconstruction_request(mask, prior, config, target, None)
        return drive(reconstruct_structures_steps(masks, prior, config, target=target), printer)
    starts = read_structure_starts(args.resume, prior)
    config = _resume_config(args, starts[min(starts)].config)
    return drive(refine_structures_steps(starts, masks, config, steps=args.refine_steps, target=target), printer)


def _structure_metrics(args: argparse.Namespace, structures, masks, printer) -> None:
    """--ground-truth with several structures: each compared with its own label of the ground truth."""
    from .core.evaluate import compare_steps
    from .core.io import binary_mask_from_volume, list_labels, read_volume

    truth = read_volume(args.ground_truth)
    held = set(list_labels(truth))
    missing = sorted(set(structures.labels) - held)
    if missing:
        raise InputError(
            f"the ground truth {args.ground_truth} holds no label {', '.join(map(str, missing))}: "
            "give one with the labels of the observation"
        )
    for label, result in structures.results.items():
        tick = time.perf_counter()
        result.metrics = drive(
            compare_steps(
                result.fitted,
                masks[label],
                binary_mask_from_volume(truth, label=label),
                threshold=result.config.threshold,
                empty_slices=result.config.empty_slices,
                reading=result.reading,
            ),
            printer,
        )
        result.timings["evaluate"] = time.perf_counter() - tick


def _structures_summary(structures) -> str:
    results = structures.results
    first = results[structures.labels[0]]
    total = sum(r.timings.get("total", 0.0) for r in results.values())
    round_text = f", refine round {structures.rounds}" if structures.rounds else ""
    kept = f" (label {', '.join(map(str, structures.kept))} unchanged: not fine-tuned)" if structures.kept else ""
    lines = [
        f"{first.config.method} M={structures.members} on {structures.device}: {len(results)} structures "
        f"(label {', '.join(map(str, structures.labels))}){round_text}{kept}, total {total:.1f}s",
        f"{'label':>6} {'volume ml':>10} {'+- ml':>8} {'band var':>10}  flag",
    ]
    for row in structures.table():
        lines.append(
            f"{row.label:>6} {row.volume_ml:>10.2f} {row.volume_ml_std:>8.2f} {row.band_variance:>10.5f}  "
            + (row.reason if row.flagged else "")
        )
    for label, result in sorted(results.items()):
        lines += [f"note (label {label}): {note}" for note in result.notes(cli_setting)]
        if result.metrics:
            lines.append(f"label {label}:\n" + _metrics_table(result.metrics))
    return "\n".join(lines)


def _reconstruct_structures(args: argparse.Namespace, printer) -> int:
    from .core.io import read_volume
    from .core.outputs import atomic_folder, check_output_folder
    from .core.structures import STRUCTURES, save_structures

    if args.resume is None:
        config_from_args(args, keep_members=True)  # option errors before any file is read
    inputs = _inputs(args, **{"ground truth": args.ground_truth, "--like volume": args.like})
    out = check_output_folder(args.out, inputs=inputs, names=(STRUCTURES,))
    formats = _output_formats(args)
    masks = _structure_masks(args.observation)
    target = None
    if args.like is not None:
        reference = read_volume(args.like)
        target = (reference.affine, reference.shape)
    prior = _load_priors(args.prior)
    structures = _fit_structures(args, prior, masks, target, printer)
    if args.ground_truth is not None:
        _structure_metrics(args, structures, masks, printer)
    with atomic_folder(out) as staging:
        paths = save_structures(structures, staging, formats, member_meshes=args.members_out)
    if not args.quiet:
        print(_structures_summary(structures))
        for name, path in paths.items():
            print(f"  {name:>18}: {out / Path(path).name}")
    return 0


def _check_request(args: argparse.Namespace, prior, observation, target, ground_truth) -> None:
    from .core.budget import check_reconstruction_request
    from .core.methods import check_prior

    if args.resume is not None:
        return  # the first run's settings: checked when it ran
    config = config_from_args(args, keep_members=getattr(args, "members_out", False))
    check_prior(config, prior)
    check_reconstruction_request(
        observation, prior, config, target, ground_truth.shape if ground_truth is not None else None
    )


def _inputs(args: argparse.Namespace, **more: Path | None) -> dict[str, Path | None]:
    inputs = {"observation": args.observation, **more}
    inputs.update({f"prior {p}": p for p in args.prior or ()})
    if args.resume is not None:
        for path in Path(args.resume).glob("*"):
            files = path.glob("*") if path.is_dir() and path.name.startswith("label") else [path]
            inputs.update({f"--resume file {p.relative_to(args.resume)}": p for p in files if p.is_file()})
    return inputs


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .core.evaluate import compare_steps
    from .core.io import read_volume
    from .core.mesh import write_mesh
    from .core.outputs import atomic_folder, check_output_folder

    printer = ProgressPrinter(args.quiet)
    if _several(args):
        return _reconstruct_structures(args, printer)
    if args.resume is None:
        config_from_args(args, keep_members=args.members_out)  # option errors before any file is read
    out = check_output_folder(
        args.out, inputs=_inputs(args, **{"ground truth": args.ground_truth, "--like volume": args.like})
    )
    formats = _output_formats(args)
    observation = _load_observation(args.observation, args.label, args.threshold)
    target = None
    if args.like is not None:
        reference = read_volume(args.like)
        target = (reference.affine, reference.shape)
    ground_truth = _load_observation(args.ground_truth, None, 0.5) if args.ground_truth else None
    prior = _load_priors(args.prior)
    _check_request(args, prior, observation, target, ground_truth)
    result = _fit(args, prior, observation, target, printer)
    config = result.config
    if ground_truth is not None:
        tick = time.perf_counter()
        result.metrics = drive(
            compare_steps(
                result.fitted,
                observation,
                ground_truth,
                threshold=config.threshold,
                empty_slices=config.empty_slices,
                reading=result.reading,
            ),
            printer,
        )
        result.timings["evaluate"] = time.perf_counter() - tick
    with atomic_folder(out) as staging:  # the previous result stays whole until the new one is
        paths = result.save(staging, formats=formats)
        if args.members_out:
            for m in range(result.fitted.members):
                member_mesh = result.member_mesh(m)
                if not member_mesh.is_empty:
                    paths[f"member{m}"] = write_mesh(staging / f"mesh_member{m}.ply", member_mesh)
    paths = {name: out / Path(path).name for name, path in paths.items()}
    if not args.quiet:
        print(_summary(result))
        for name, path in paths.items():
            print(f"  {name:>18}: {path}")
    return 0


SUGGESTIONS = "suggestions.json"


def cmd_suggest(args: argparse.Namespace) -> int:
    """Reconstruct (or refine with ``--resume``) and rank the slices to annotate next.

    With several structures (``--label each``, or ``--resume`` of such a result) the slices of the label
    volume are ranked across structures: a user annotates a whole slice, every label on it, so a slice's
    score is the sum of the mislabelled voxels annotating it is expected to remove from each structure,
    and each suggestion lists the ``labels`` it helps; the expected error is summed over the structures.
    """
    from .core.annotate import expected_band_error, suggest_slices
    from .core.io import atomic_write_bytes
    from .core.outputs import atomic_folder, check_output_folder

    printer = ProgressPrinter(args.quiet)
    several = _several(args)
    if args.resume is None:
        config_from_args(args)
    names = (SUGGESTIONS, "structures.json") if several else (SUGGESTIONS,)
    out = check_output_folder(args.out, inputs=_inputs(args), names=names)
    prior = _load_priors(args.prior)
    if several:
        from .core.structures import save_structures, structures_expected_error, suggest_structure_slices

        structures = _fit_structures(args, prior, _structure_masks(args.observation), None, printer)
        result = structures.results[structures.labels[0]]
        suggestions = suggest_structure_slices(structures, args.n, axis=args.axis)
        expected = structures_expected_error(structures)
    else:
        observation = _load_observation(args.observation, args.label, args.threshold)
        _check_request(args, prior, observation, None, None)
        result = _fit(args, prior, observation, None, printer)
        suggestions = suggest_slices(result, args.n, axis=args.axis)
        expected = expected_band_error(result)
    content = {
        "observation": str(args.observation),
        "expected_error": {
            "voxels": round(expected.voxels, 2),
            "surface_voxels": expected.surface_voxels,
            "volume_ml": round(expected.volume_ml, 4),
            "text": expected.text,
        },
        "slice_axis": None if result.reading is None else result.reading.axis,
        "refine_rounds": structures.rounds if several else result.rounds,
        "suggestions": [
            {
                "rank": rank,
                "axis": s.axis,
                "index": s.index,
                "world_mm": round(s.world_mm, 3),
                "score": round(s.score, 3),
                "kind": s.kind,
                **({"labels": list(s.labels)} if several else {}),
            }
            for rank, s in enumerate(suggestions, 1)
        ],
    }
    if several:
        content["labels"] = structures.labels
    with atomic_folder(out) as staging:
        if several:
            save_structures(structures, staging)
        else:
            result.save(staging)
        atomic_write_bytes(staging / SUGGESTIONS, json.dumps(content, indent=2).encode())
    if not args.quiet:
        print(_suggestion_table(suggestions, expected.text))
        print(
            f"  suggestions: {out / SUGGESTIONS}; after annotating, refine with: napari-dropsembles reconstruct "
            f"OBS --resume {out} --out DIR"
        )
    return 0


def _suggestion_table(suggestions, expected: str) -> str:
    several = any(getattr(s, "labels", ()) for s in suggestions)
    header = f"{'rank':>4} {'axis':>4} {'index':>5} {'world mm':>9} {'score':>9}  kind"
    lines = [header + ("   labels" if several else "")]
    for rank, s in enumerate(suggestions, 1):
        labels = f"  {','.join(map(str, s.labels))}" if several else ""
        lines.append(f"{rank:>4} {s.axis:>4} {s.index:>5} {s.world_mm:>9.2f} {s.score:>9.2f}  {s.kind}{labels}")
    if not suggestions:
        lines.append("  (no slice left to suggest)")
    lines.append(f"expected error: {expected}")
    return "\n".join(lines)


def _output_formats(args: argparse.Namespace):
    """The output formats (--format, else the input's family); None: NIfTI maps and a RAS mesh.ply (the
    plain writers; report.json states the same outputs either way)."""
    from dataclasses import replace

    from .core.formats import find_segment
    from .core.formats.outputs import OutputFormats, output_formats

    formats = output_formats(args.format, args.observation)
    if isinstance(args.label, str) and args.label not in ("all", "each"):  # the output segment keeps its name, colour
        segment = find_segment(args.observation, args.label)
        formats = replace(formats, segment=replace(segment, label=1))
    return None if formats == OutputFormats() else formats


def _summary(result) -> str:
    t = result.timings
    lines = [
        f"{result.config.method} M={result.fitted.members} on {result.device}: fine-tune {t.get('finetune', 0):.1f}s, "
        f"predict {t.get('predict', 0):.1f}s ({result.maps.mean.shape} grid), total {t.get('total', 0):.1f}s"
    ]
    lines += [f"note: {note}" for note in result.notes(cli_setting)]
    if result.metrics:
        lines.append(_metrics_table(result.metrics))
    return "\n".join(lines)


def _metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    keys = ["dice", "hd95_mm", "ece", "ece_band", "nll", "brier", "auroc", "auroc_band"]
    header = f"{'method':>14} " + " ".join(f"{k:>10}" for k in keys)
    rows = [header]
    for name, values in metrics.items():
        rows.append(f"{name:>14} " + " ".join(f"{values.get(k, float('nan')):>10.4f}" for k in keys))
    return "\n".join(rows)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .core.checkpoint import save_prior
    from .core.config import ModelConfig
    from .core.distributed import init_distributed, shutdown
    from .core.io import ensure_writable_dir
    from .core.outputs import check_output_path
    from .core.pretrain import PretrainConfig, pretrain_steps, shapes_from_folder

    init = None
    if args.init is not None:
        from .core.checkpoint import load_prior

        init = load_prior(None if str(args.init) == "bundled" else args.init)
    inputs = {"--data folder": args.data}
    if init is not None and init.path is not None:
        inputs["--init prior"] = init.path
    check_output_path(args.out, suffix=".safetensors", inputs=inputs)
    ensure_writable_dir(args.out.parent)
    shapes = shapes_from_folder(args.data) if args.data else None
    if init is not None:
        model_config = init.config
    else:
        model_config = ModelConfig(grid_size=args.grid, hidden=args.hidden, blocks=args.blocks, dropout=args.dropout)
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        shapes=args.shapes,
        samples=args.samples,
        seed=args.seed,
        procedural_share=args.procedural_share,
        slice_axes=tuple(args.slice_axes),
    )
    dist, device = init_distributed(args.device)  # under torchrun: one rank of a DDP run (core/distributed)
    try:
        prior = drive(
            pretrain_steps(
                model_config, config, models=args.models, shapes=shapes, device=device, dist=dist, init=init
            ),
            ProgressPrinter(args.quiet or not dist.is_main),
        )
    finally:
        shutdown()
    if not dist.is_main:
        return 0  # rank 0 writes the one checkpoint
    prior.training["command"] = "napari-dropsembles " + " ".join(args.argv)
    save_prior(prior, args.out)
    if not args.quiet:
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {prior.training['wall_time_s']} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.evaluate import score_maps
    from .core.io import atomic_write_bytes
    from .core.result import read_reconstruction

    if args.out is not None:
        from .core.outputs import check_output_path

        inputs = {"ground truth": args.ground_truth, "prediction folder": args.prediction}
        inputs.update({f"map {p.name}": p for p in Path(args.prediction).glob("*") if p.is_file()})
        check_output_path(args.out, option="--out", inputs=inputs)
    saved = read_reconstruction(args.prediction)
    maps = saved.maps()
    ground_truth = _load_observation(args.ground_truth, None, 0.5)
    if maps.mean.shape != ground_truth.shape or not (abs(maps.mean.affine - ground_truth.affine) < 1e-4).all():
        raise InputError(
            "the prediction is not on the ground truth's grid; run reconstruct with --like GT (or --ground-truth GT)"
        )
    metrics = score_maps(maps, ground_truth, saved.members, args.level)
    text = json.dumps(metrics, indent=2)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .core.outputs import atomic_folder, check_output_folder
    from .core.simulate import simulate_case

    out = check_output_folder(args.out)
    with atomic_folder(out) as staging:
        case = simulate_case(
            staging,
            seed=args.seed,
            slice_factor=args.slice_factor,
            in_plane_mm=args.in_plane,
            axis=args.axis,
            erosion=args.erosion,
            noise=args.noise,
            missing=args.missing,
            gt_spacing_mm=args.gt_spacing,
        )
    if not args.quiet:
        for name, path in case.items():
            print(f"  {name:>12}: {out / Path(path).name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .core.paths import bundled_sample_paths

    sample = bundled_sample_paths()
    argv = [
        "reconstruct",
        str(sample["observation"]),
        "--out",
        str(args.out),
        "--ground-truth",
        str(sample["ground_truth"]),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ] + (["--quiet"] if args.quiet else [])
    started = time.perf_counter()
    code = main(argv)
    if code == 0 and not args.quiet:
        print(f"demo finished in {time.perf_counter() - started:.1f} s; outputs in {args.out}")
    if code != 0:
        return code
    from ._viewer import show_result_folder, viewer_unavailable

    reason = viewer_unavailable()
    interactive = sys.stdin.isatty() and sys.stdout.isatty()  # a person at a terminal, not a script or a test
    view = args.view if args.view is not None else (interactive and not reason)
    if view and reason:
        raise InputError(f"cannot open napari: {reason}")
    if view:
        show_result_folder(args.out, sample["observation"], sample["ground_truth"], widget=True)
    elif not args.quiet:
        why = reason or ("--no-view" if args.view is False else "not run from a terminal")
        print(
            f"no napari window ({why}); to look at the result on a desktop: napari-dropsembles demo --view, "
            f"or open {args.out}/mean.nii.gz, variance.nii.gz and mesh.ply in napari"
        )
    return code


def cmd_reconstruct_many(args: argparse.Namespace) -> int:
    from .core.cohort import parse_labels, plan_tasks, read_manifest, run_cohort_steps, shard
    from .core.device import resolve_device

    config = config_from_args(args)
    local_gpu = args.scheduler is None and args.workers != 0 and resolve_device(args.device).type == "cuda"
    cases = read_manifest(args.inputs)
    tasks = plan_tasks(
        cases, config, priors=args.prior or (), labels=parse_labels(args.labels), gpu=args.gpu or local_gpu
    )
    part = shard(tasks, args.num_parts, args.part_id)
    printer = ProgressPrinter(args.quiet)
    if not args.quiet:
        where = f" (part {args.part_id + 1} of {args.num_parts})" if args.num_parts > 1 else ""
        print(f"{len(part)} task(s) from {len(cases)} case(s){where} -> {args.out}", file=sys.stderr)

    def report(progress: Progress) -> None:
        if "dashboard" in progress.extra and progress.extra["dashboard"] and not args.quiet:
            print(f"dask dashboard: {progress.extra['dashboard']}", file=sys.stderr)
        elif progress.message != "dashboard":
            printer(progress)

    result = drive(
        run_cohort_steps(
            part,
            args.out,
            manifest_tasks=tasks,
            workers=args.workers,
            scheduler=args.scheduler,
            dashboard_address=args.dashboard_address,
        ),
        report,
    )
    failed = [row for row in result.rows if row["status"] == "failed"]
    if not args.quiet:
        print(
            f"{result.count('done')} done ({len(result.skipped)} skipped as unchanged), {len(failed)} failed; "
            f"summary: {result.summary_csv} and {result.summary_parquet}"
        )
        for row in failed:
            print(f"  failed {row['task']}: {row['error']}")
    return 1 if failed else 0


COMMANDS = {
    "reconstruct": cmd_reconstruct,
    "suggest": cmd_suggest,
    "pretrain": cmd_pretrain,
    "evaluate": cmd_evaluate,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
    "reconstruct-many": cmd_reconstruct_many,
}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporaries are removed on the way out."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker (the training-sample pool): end as SIGTERM always did
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated()


def _prepare_process() -> object:
    """Closed standard descriptors (``2>&-``) get /dev/null, so that no file we open becomes fd 2 and
    takes stray library output; SIGTERM unwinds like Ctrl-C (temporaries removed, exit 143).
    Returns the SIGTERM handler it replaced (None when it did not replace one)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
    global _MAIN_PID
    if threading.current_thread() is threading.main_thread():
        _MAIN_PID = os.getpid()
        with contextlib.suppress(ValueError, OSError):
            return signal.signal(signal.SIGTERM, _on_sigterm)
    return None


def _os_error_line(error: OSError) -> str:
    """One line for a failed read or write, saying what to do (the output option is --out)."""
    from .core.faults import describe_fault

    return word_settings(describe_fault(error), cli_word).replace("write elsewhere", "write elsewhere (--out)")


def _broken_stdout() -> None:
    """The reader of stdout went away (``| head``): send what is left to /dev/null, quietly."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    previous = _prepare_process()
    try:
        return _main(argv)
    finally:  # main() called from Python (tests, demo, a notebook) leaves SIGTERM as it found it
        if previous is not None:
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    from .core.budget import memory_limit, output_voxel_limit

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    name = f"napari-dropsembles {args.command}"
    try:
        with memory_limit(getattr(args, "memory_limit", None)), output_voxel_limit(getattr(args, "max_voxels", None)):
            return COMMANDS[args.command](args)
    except Cancelled:
        _say("napari-dropsembles: cancelled")
        return 130
    except ConfigError as error:
        _say(f"{name}: error: {cli_wording(error)}")
        return EXIT_USAGE
    except DropsemblesError as error:
        _say(f"{name}: error: {error.in_words(cli_word)}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("napari-dropsembles: interrupted; the previous output is unchanged")
        return 130
    except Terminated:
        _say("napari-dropsembles: terminated (SIGTERM); the previous output is unchanged")
        return 143
    except BrokenPipeError:
        _broken_stdout()
        _say(f"{name}: the output pipe was closed; stopped writing to stdout (files were written)")
        return 141
    except MemoryError as error:
        from .core.faults import describe_fault

        _say(f"{name}: error: {word_settings(describe_fault(error), cli_word)}")
        return EXIT_USAGE
    except OSError as error:
        _say(f"{name}: error: {_os_error_line(error)}")
        return EXIT_USAGE
    except Exception as error:  # a bug: one line for unattended runs; the traceback on request
        if os.environ.get("DROPSEMBLES_DEBUG"):
            raise
        from .core.io import one_line

        _say(
            f"{name}: internal error ({type(error).__name__}: {one_line(error, 160)}); "
            "rerun with DROPSEMBLES_DEBUG=1 for the traceback and please report it"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
