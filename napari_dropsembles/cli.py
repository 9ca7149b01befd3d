"""``napari-dropsembles``: the headless command line over the core API.

Every user error (bad volume, bad parameter, bad checkpoint) prints one clear line and exits
with code 2, with nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

from . import __version__
from .core.errors import Cancelled, DropsemblesError, InputError
from .core.progress import Progress

EXIT_USAGE = 2


class ProgressPrinter:
    """A progress bar on stderr: redrawn in a terminal, a line every 30 s in a log; silent with --quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.phase = ""
        self.started = time.perf_counter()
        self.interactive = sys.stderr.isatty()
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
            sys.stderr.write("\n")
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
            sys.stderr.write("\r" + line + ("\n" if done else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def drive(steps: Generator, printer: Callable[[Progress], None]) -> object:
    """Run a progress generator to the end, printing as it goes; return its value."""
    while True:
        try:
            progress = next(steps)
        except StopIteration as done:
            return done.value
        printer(progress)


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
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--label takes an integer label or 'all', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .core.device import DEVICE_CHOICES
    from .core.methods import METHODS
    from .core.slice_field import EMPTY_SLICES

    parser = argparse.ArgumentParser(
        prog="napari-dropsembles",
        description="Reconstruct 3D shapes from sparse segmentations with calibrated uncertainty (Dropsembles).",
    )
    parser.add_argument("--version", action="version", version=f"napari-dropsembles {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--quiet", action="store_true", help="no progress output")

    rec = sub.add_parser("reconstruct", help="fine-tune a prior on one observation; write maps, mesh and report")
    rec.add_argument("observation", type=Path, help="segmentation volume (.nii/.nii.gz/.tif/.npy/.npz)")
    rec.add_argument("--out", type=Path, required=True, help="output folder")
    rec.add_argument(
        "--prior",
        type=Path,
        action="append",
        help="prior .safetensors (default: the bundled one); repeat to combine single-model priors for a deep ensemble",
    )
    rec.add_argument("--method", choices=METHODS, default="dropsembles")
    rec.add_argument("--members", type=_positive_int, default=4, help="ensemble size M (default 4)")
    rec.add_argument("--steps", type=_non_negative_int, default=60, help="fine-tuning steps (default 60)")
    rec.add_argument(
        "--ewc", type=_non_negative_float, default=0.1, help="EWC strength lambda (0 = off; default 0.1)"
    )
    rec.add_argument("--lr", type=_positive_float, default=1e-3, help="fine-tuning learning rate")
    rec.add_argument(
        "--resolution",
        type=_positive_float,
        default=None,
        metavar="MM",
        help="output voxel size in mm (default: the observation's finest spacing)",
    )
    rec.add_argument("--like", type=Path, default=None, help="write the outputs on this reference volume's grid")
    rec.add_argument(
        "--threshold",
        type=_unit_interval,
        default=None,
        help="mesh level on the mean (default 0.5); also binarises a non-binary input",
    )
    rec.add_argument(
        "--label", type=_label, default=None, help="label to reconstruct in a multi-label volume, or 'all'"
    )
    rec.add_argument(
        "--ground-truth", type=Path, default=None, help="dense mask: add metrics and baselines to report.json"
    )
    rec.add_argument(
        "--empty-slices",
        choices=EMPTY_SLICES,
        default="unobserved",
        help="empty slices between labelled ones: not annotated (default) or true background",
    )
    rec.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    rec.add_argument("--members-out", action="store_true", help="also write one mesh per member")
    common(rec)

    pre = sub.add_parser("pretrain", help="train a prior on procedural vertebrae (or a folder of dense masks)")
    pre.add_argument("--out", type=Path, required=True, help="checkpoint path (.safetensors)")
    pre.add_argument("--data", type=Path, default=None, help="folder of dense mask volumes (default: procedural)")
    pre.add_argument(
        "--shapes", type=_non_negative_int, default=0, help="fixed pool of procedural shapes (0 = endless)"
    )
    pre.add_argument(
        "--samples",
        type=_positive_int,
        default=1024,
        help="training samples made up front (each a shape with random slicing and corruption)",
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
    ev.add_argument("--threshold", type=_unit_interval, default=0.5)
    ev.add_argument("--out", type=Path, default=None, help="write the metrics JSON here (default: stdout only)")
    ev.add_argument("--quiet", action="store_true")

    sim = sub.add_parser("simulate", help="make a synthetic case: dense ground truth and a low-resolution observation")
    sim.add_argument("--out", type=Path, required=True, help="output folder")
    sim.add_argument("--slice-factor", type=_positive_float, default=4.0, help="slice spacing / in-plane spacing")
    sim.add_argument("--in-plane", type=_positive_float, default=1.0, help="in-plane spacing of the observation (mm)")
    sim.add_argument("--axis", type=int, choices=(0, 1, 2), default=2, help="thick-slice axis")
    sim.add_argument("--erosion", type=int, choices=(-1, 0, 1), default=0, help="-1 erode, +1 dilate by one voxel")
    sim.add_argument("--noise", type=_non_negative_float, default=0.0, help="boundary label-flip probability")
    sim.add_argument("--missing", type=_non_negative_float, default=0.0, help="share of slices left empty")
    sim.add_argument("--gt-spacing", type=_positive_float, default=0.5, help="ground-truth voxel size (mm)")
    common(sim)

    bench = sub.add_parser("bench", help="run a benchmark of the source checkout (bench/): 'paper' reproduces the "
                           "Dropsembles paper's experiments")
    bench.add_argument("name", choices=("paper",), help="which benchmark")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="its options, e.g. --quick")

    demo = sub.add_parser("demo", help="the main job on the bundled sample: reconstruct, score, write outputs")
    demo.add_argument("--out", type=Path, default=Path("dropsembles-demo"), help="output folder")
    demo.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    demo.add_argument("--view", action="store_true", help="open napari with the result layers")
    common(demo)
    return parser


def _load_observation(path: Path, label, threshold):
    from .core.io import binary_mask_from_volume, read_volume

    return binary_mask_from_volume(read_volume(path), label=label, threshold=threshold)


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


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .core.evaluate import compare_steps
    from .core.io import ensure_writable_dir, read_volume
    from .core.mesh import write_mesh
    from .core.pipeline import ReconstructionConfig, reconstruct_steps

    printer = ProgressPrinter(args.quiet)
    observation = _load_observation(args.observation, args.label, args.threshold)
    prior = _load_priors(args.prior)
    config = ReconstructionConfig(
        method=args.method,
        members=args.members,
        steps=args.steps,
        ewc=args.ewc,
        lr=args.lr,
        resolution_mm=args.resolution,
        threshold=args.threshold or 0.5,
        device=args.device,
        seed=args.seed,
        keep_members=args.members_out,
        empty_slices=args.empty_slices,
    )
    target = None
    if args.like is not None:
        reference = read_volume(args.like)
        target = (reference.affine, reference.shape)
    ground_truth = _load_observation(args.ground_truth, None, 0.5) if args.ground_truth else None
    config.validate()
    config.method_config().validate(prior)
    out = ensure_writable_dir(args.out)
    result = drive(reconstruct_steps(observation, prior, config, target=target), printer)
    if ground_truth is not None:
        tick = time.perf_counter()
        result.metrics = drive(
            compare_steps(
                result.fitted, observation, ground_truth, threshold=config.threshold, empty_slices=config.empty_slices
            ),
            printer,
        )
        result.timings["evaluate"] = time.perf_counter() - tick
    paths = result.save(out)
    if args.members_out:
        for m in range(result.fitted.members):
            member_mesh = result.member_mesh(m)
            if not member_mesh.is_empty:
                paths[f"member{m}"] = write_mesh(out / f"mesh_member{m}.ply", member_mesh)
    if not args.quiet:
        print(_summary(result))
        for name, path in paths.items():
            print(f"  {name:>18}: {path}")
    return 0


def _summary(result) -> str:
    t = result.timings
    lines = [
        f"{result.config.method} M={result.fitted.members} on {result.device}: fine-tune {t.get('finetune', 0):.1f}s, "
        f"predict {t.get('predict', 0):.1f}s ({result.maps.mean.shape} grid), total {t.get('total', 0):.1f}s"
    ]
    lines += [f"note: {note}" for note in result.notes()]
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
    from .core.device import resolve_device
    from .core.io import ensure_writable_dir
    from .core.pretrain import PretrainConfig, pretrain_steps, shapes_from_folder

    if args.out.suffix != ".safetensors":
        raise InputError(f"--out must end in .safetensors, got {args.out}")
    ensure_writable_dir(args.out.parent)
    shapes = shapes_from_folder(args.data) if args.data else None
    model_config = ModelConfig(grid_size=args.grid, hidden=args.hidden, blocks=args.blocks, dropout=args.dropout)
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        shapes=args.shapes,
        samples=args.samples,
        seed=args.seed,
    )
    device = resolve_device(args.device)
    prior = drive(
        pretrain_steps(model_config, config, models=args.models, shapes=shapes, device=device),
        ProgressPrinter(args.quiet),
    )
    prior.training["command"] = "napari-dropsembles " + " ".join(args.argv)
    save_prior(prior, args.out)
    if not args.quiet:
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {prior.training['wall_time_s']} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.evaluate import score_maps
    from .core.io import atomic_write_bytes, read_volume
    from .core.predict import EnsembleMaps

    folder = args.prediction
    needed = {name: folder / f"{name}.nii.gz" for name in ("mean", "variance", "entropy")}
    missing = [str(p) for p in needed.values() if not p.is_file()]
    if missing:
        raise InputError(f"{folder} is not a reconstruction folder: missing {', '.join(missing)}")
    volumes = {name: read_volume(path) for name, path in needed.items()}
    ground_truth = _load_observation(args.ground_truth, None, 0.5)
    if (
        volumes["mean"].shape != ground_truth.shape
        or not (abs(volumes["mean"].affine - ground_truth.affine) < 1e-4).all()
    ):
        raise InputError(
            "the prediction is not on the ground truth's grid; run reconstruct with --like GT (or --ground-truth GT)"
        )
    members = 1
    report = folder / "report.json"
    if report.is_file():
        members = int(json.loads(report.read_text()).get("members", 1))
    mi_path = folder / "mutual_information.nii.gz"
    mutual_information = read_volume(mi_path) if mi_path.is_file() else volumes["entropy"]
    maps = EnsembleMaps(
        mean=volumes["mean"],
        variance=volumes["variance"],
        entropy=volumes["entropy"],
        mutual_information=mutual_information,
    )
    metrics = score_maps(maps, ground_truth, members, args.threshold)
    text = json.dumps(metrics, indent=2)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .core.simulate import simulate_case

    case = simulate_case(
        args.out,
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
            print(f"  {name:>12}: {path}")
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
    if code == 0 and args.view:
        from ._viewer import show_result_folder

        show_result_folder(args.out, sample["observation"], sample["ground_truth"])
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks live in the repository's bench/ (not in the wheel): run them from a checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / args.name / "__main__.py").is_file():
        raise InputError(f"bench/{args.name} is part of the source checkout, not the installed package; "
                         "run this from a clone of the repository (pip install -e .)")
    sys.path.insert(0, str(root))
    import importlib

    module = importlib.import_module(f"bench.{args.name}.__main__")
    return int(module.main(args.options) or 0)


COMMANDS = {
    "bench": cmd_bench,
    "reconstruct": cmd_reconstruct,
    "pretrain": cmd_pretrain,
    "evaluate": cmd_evaluate,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return COMMANDS[args.command](args)
    except Cancelled:
        print("napari-dropsembles: cancelled", file=sys.stderr)
        return 130
    except DropsemblesError as error:
        print(f"napari-dropsembles {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("napari-dropsembles: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
