"""One function per subcommand: the options made into a request, one call into a core job, the printout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import cli as package  # its ``main``, looked up when the demo runs (a test may replace it)
from ..core.cohort import parse_labels, plan_tasks, read_manifest, run_cohort_steps, shard
from ..core.config.errors import InputError
from ..core.config.paths import bundled_mri_path, bundled_sample_paths
from ..core.config.progress import Progress, drive
from ..core.data.simulate import simulate_case
from ..core.fitting.distributed import context_from_env
from ..core.io.atomic import atomic_folder
from ..core.io.output_paths import check_output_folder
from ..core.jobs.evaluate_api import EvaluateRequest, run_evaluate
from ..core.jobs.pretrain_api import PretrainRequest, run_pretrain
from ..core.jobs.reconstruct_api import ReconstructRequest, run_reconstruct
from ..core.jobs.suggest_api import SUGGESTIONS, SuggestRequest, run_suggest
from ..core.networks.device import resolve_device
from .parser import config_from_args, pretrain_configs_from_args, resume_changes
from .printing import ProgressPrinter, suggestion_table, summary


def reconstruct_request(args: argparse.Namespace, keep_members: bool = False, **fields: object) -> ReconstructRequest:
    """The request of ``reconstruct`` / ``suggest`` (option errors first; with --resume the result's settings)."""
    config = {} if args.resume is not None else {"config": config_from_args(args, keep_members=keep_members)}
    return ReconstructRequest(
        observation=args.observation,
        prior=args.prior,
        label=args.label,
        threshold=args.threshold,
        resume=args.resume,
        resume_changes=resume_changes(args),
        refine_steps=args.refine_steps,
        **config,
        **fields,
    )


def cmd_reconstruct(args: argparse.Namespace) -> int:
    request = reconstruct_request(
        args,
        keep_members=args.members_out,
        target=args.like,
        ground_truth=args.ground_truth,
        out=args.out,
        formats=args.format,
        member_meshes=args.members_out,
    )
    output = run_reconstruct(request, ProgressPrinter(args.quiet))
    if not args.quiet:
        print(summary(output.structures))
        for name, path in output.paths.items():
            print(f"  {name:>18}: {path}")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    """Reconstruct (or refine with ``--resume``) and rank the slices to annotate next.

    With several structures (``--label each``, or ``--resume`` of such a result) the slices of the label
    volume are ranked across structures: a user annotates a whole slice, every label on it, so a slice's
    score is the sum of the mislabelled voxels annotating it is expected to remove from each structure,
    and each suggestion lists the ``labels`` it helps; the expected error is summed over the structures.
    """
    request = SuggestRequest(reconstruct_request(args), n=args.n, axis=args.axis, out=args.out)
    output = run_suggest(request, ProgressPrinter(args.quiet))
    if not args.quiet:
        found = output.found
        print(suggestion_table(found.suggestions, found.expected.text, output.structures.split))
        print(
            f"  suggestions: {args.out / SUGGESTIONS}; after annotating, refine with: napari-dropsembles reconstruct "
            f"OBS --resume {args.out} --out DIR"
        )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    model_config, config = pretrain_configs_from_args(args)
    request = PretrainRequest(
        out=args.out,
        model_config=model_config,
        config=config,
        models=args.models,
        data=args.data,
        init=args.init,
        device=args.device,
        provenance={"command": "napari-dropsembles " + " ".join(args.argv)},
    )
    output = run_pretrain(request, ProgressPrinter(args.quiet or not context_from_env().is_main))
    if output.path is not None and not args.quiet:
        size = output.path.stat().st_size / 1e6
        print(f"wrote {output.path} ({size:.1f} MB) in {output.prior.training['wall_time_s']} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    request = EvaluateRequest(args.prediction, args.ground_truth, threshold=args.level, out=args.out)
    print(json.dumps(run_evaluate(request).metrics, indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
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
    sample = bundled_sample_paths()
    if args.sample == "mri":
        sample = {"observation": bundled_mri_path(), "ground_truth": None}
    argv = ["reconstruct", str(sample["observation"]), "--out", str(args.out), "--device", args.device]
    argv += ["--seed", str(args.seed)]
    argv += ["--label", "each"] if args.sample == "mri" else ["--ground-truth", str(sample["ground_truth"])]
    argv += ["--quiet"] if args.quiet else []
    started = time.perf_counter()
    code = package.main(argv)
    if code == 0 and not args.quiet:
        print(f"demo finished in {time.perf_counter() - started:.1f} s; outputs in {args.out}")
    if code != 0:
        return code
    from .._viewer import show_result_folder, viewer_unavailable  # napari: only when the demo opens a window

    reason = viewer_unavailable()
    interactive = sys.stdin.isatty() and sys.stdout.isatty()  # a person at a terminal, not a script or a test
    view = args.view if args.view is not None else (interactive and not reason)
    if view and reason:
        raise InputError(f"cannot open napari: {reason}")
    if view:
        show_result_folder(args.out, sample["observation"], sample["ground_truth"], widget=True)
    elif not args.quiet:
        why = reason or ("--no-view" if args.view is False else "not run from a terminal")
        again = " --sample mri" if args.sample == "mri" else ""
        print(
            f"no napari window ({why}); to look at the result on a desktop: napari-dropsembles demo{again} --view, "
            f"or open {args.out}/mean.nii.gz, variance.nii.gz and mesh.ply in napari"
        )
    return code


def cmd_reconstruct_many(args: argparse.Namespace) -> int:
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
