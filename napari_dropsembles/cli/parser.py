"""The command line's options: their defaults and ranges read from the config fields, the configs built
from them, and how a core message names a setting (as its option).

Nothing here imports torch: ``--help`` and option errors answer at once.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import __version__
from ..core.config.budget import ENV_VAR
from ..core.config.configs import (
    DEVICE_CHOICES,
    EMPTY_SLICES,
    MEMBER_DIVERSITY,
    METHODS,
    REFINE_STEPS,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    ReconstructionConfig,
)
from ..core.config.errors import ConfigError
from ..core.config.validation import field_range

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


# -- option types ----------------------------------------------------------------------------------


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


def _within(config: type, name: str):
    """An option type for the number a config field takes, within the field's range (checked as it is parsed)."""
    bounds = field_range(config, name)

    def parse(text: str) -> float:
        value = float(text)
        low = bounds.lo is None or (value > bounds.lo if bounds.lo_open else value >= bounds.lo)
        high = bounds.hi is None or (value < bounds.hi if bounds.hi_open else value <= bounds.hi)
        if not (math.isfinite(value) and low and high):
            left, right = "(" if bounds.lo_open else "[", ")" if bounds.hi_open else "]"
            span = f"at least {bounds.lo:g}" if bounds.hi is None else f"in {left}{bounds.lo:g}, {bounds.hi:g}{right}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value

    return parse


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


def _slice_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs slice indices separated by commas, got {text!r}") from None


# -- the configs and the options that set them -------------------------------------------------------


def add_reconstruction_options(p: argparse.ArgumentParser) -> None:
    """The options of a :class:`ReconstructionConfig`; defaults and checks come from the config."""
    base = ReconstructionConfig()
    tune = base.finetune
    p.add_argument("--method", choices=METHODS, default=base.method)
    members = field_range(ReconstructionConfig, "members")
    p.add_argument(
        "--members",
        type=int,
        default=base.members,
        help=f"ensemble size M, {members.lo:g} to {members.hi:g} (default {base.members})",
    )
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


def config_from_args(args: argparse.Namespace, **more: object) -> ReconstructionConfig:
    """The :class:`ReconstructionConfig` of the options added by :func:`add_reconstruction_options`."""
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


def resume_changes(args: argparse.Namespace) -> dict[str, object]:
    """What a ``--resume`` run changes in the earlier result's settings: the device, the empty slices given."""
    changes: dict[str, object] = {"device": args.device}
    if args.annotated_empty is not None:
        changes["annotated_empty"] = args.annotated_empty
    return changes


def add_pretrain_options(p: argparse.ArgumentParser) -> None:
    """The options of :class:`PretrainConfig` and :class:`ModelConfig`; defaults and checks from the configs."""
    base, model = PretrainConfig(), ModelConfig()
    p.add_argument(
        "--procedural-share",
        type=float,
        default=base.procedural_share,
        help="with --data: share of training samples drawn from procedural vertebrae instead (0..1)",
    )
    p.add_argument(
        "--shapes",
        type=int,
        default=base.shapes,
        help="fixed pool of procedural shapes (0 = endless)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=base.samples,
        help="pool of training samples the steps draw from (each a shape with random slicing and corruption), "
        "each made when training first needs it: a short run makes only the ones its steps use",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="PRIOR",
        help="fine-tune this prior (e.g. the bundled one: 'bundled') on the data instead of starting from random "
        "weights; its architecture and dropout are kept (--grid/--hidden/--blocks/--dropout are ignored)",
    )
    p.add_argument(
        "--slice-axes",
        type=int,
        nargs="+",
        default=list(base.slice_axes),
        metavar="AXIS",
        help="voxel axes of the training shapes a random slicing may be thick along (0 1 2: every direction)",
    )
    p.add_argument(
        "--slice-factors",
        type=float,
        nargs=2,
        default=list(base.slice_factors),
        metavar=("LOW", "HIGH"),
        help="range of a training slicing's slice spacing, in multiples of its in-plane spacing",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        default=base.augment,
        help="with --data: mirror masks left-right (half of the samples) and scale them by 0.9-1.1",
    )
    p.add_argument("--steps", type=int, default=base.steps)
    p.add_argument("--batch-size", type=int, default=base.batch_size)
    p.add_argument("--lr", type=float, default=base.lr)
    dropout = field_range(ModelConfig, "dropout")
    p.add_argument(
        "--dropout",
        type=_within(ModelConfig, "dropout"),
        default=model.dropout,
        help=f"decoder dropout rate p in [{dropout.lo:g}, {dropout.hi:g})",
    )
    p.add_argument("--models", type=_positive_int, default=1, help="independent models (a deep-ensemble prior)")
    p.add_argument("--grid", type=int, default=model.grid_size, help="encoder grid")
    p.add_argument("--hidden", type=int, default=model.hidden, help="decoder width")
    p.add_argument("--blocks", type=int, default=model.blocks, help="decoder blocks")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")


def pretrain_configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, PretrainConfig]:
    """The architecture and the training settings of the options added by :func:`add_pretrain_options`."""
    model = ModelConfig(grid_size=args.grid, hidden=args.hidden, blocks=args.blocks, dropout=args.dropout)
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        shapes=args.shapes,
        samples=args.samples,
        seed=args.seed,
        procedural_share=args.procedural_share,
        slice_axes=tuple(args.slice_axes),
        slice_factors=tuple(args.slice_factors),
        augment=args.augment,
    )
    return model, config


def memory_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--memory-limit",
        type=_memory_limit,
        default=None,
        metavar="GB",
        help=f"refuse work estimated to need more memory (default: ${ENV_VAR}, else 80%% of the RAM)",
    )


def resume_options(p: argparse.ArgumentParser) -> None:
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


def _observation_options(p: argparse.ArgumentParser, label_help: str) -> None:
    p.add_argument(
        "--threshold",
        type=_finite_float,
        default=None,
        metavar="T",
        help="binarise a non-binary input: voxels >= T are the object",
    )
    p.add_argument("--label", type=_label, default=None, help=label_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-dropsembles",
        description="Reconstruct 3D shapes from sparse segmentations with calibrated uncertainty (Dropsembles).",
    )
    parser.add_argument("--version", action="version", version=f"napari-dropsembles {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seed = ReconstructionConfig().seed

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
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
    _observation_options(
        rec,
        "label to reconstruct in a multi-label volume: a number, a segment name (.seg.nrrd, DICOM-SEG), 'all' "
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
    _observation_options(
        sug, "label to use in a multi-label volume ('each': every label separately, the slices ranked across them)"
    )
    common(sug)

    pre = sub.add_parser("pretrain", help="train a prior on procedural vertebrae (or a folder of dense masks)")
    pre.add_argument("--out", type=_output_arg, required=True, help="checkpoint path (.safetensors)")
    pre.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=None,
        metavar="PATH",
        help="mask volumes and folders of them (default: procedural vertebrae); a mask with thick slices is "
        "trained on where it was drawn only",
    )
    add_pretrain_options(pre)
    common(pre)

    ev = sub.add_parser("evaluate", help="score a reconstruction folder against a ground truth")
    ev.add_argument("prediction", type=Path, help="folder written by reconstruct (mean/variance/entropy .nii.gz)")
    ev.add_argument("ground_truth", type=Path, help="dense ground-truth mask")
    ev.add_argument(
        "--level",
        "--threshold",
        dest="level",
        type=_within(ReconstructionConfig, "threshold"),
        default=ReconstructionConfig().threshold,
        help="decision level on the mean",
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

    demo = sub.add_parser("demo", help="the main job on a bundled sample: reconstruct, score, write outputs")
    demo.add_argument(
        "--sample",
        choices=("vertebra", "mri"),
        default="vertebra",
        help="vertebra: a procedural vertebra at 1 x 1 x 4 mm, scored against its ground truth; mri: a real sagittal "
        "T2w lumbar MRI segmentation (3.3 mm slices, T11-L5 and the sacrum), every vertebra reconstructed",
    )
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
