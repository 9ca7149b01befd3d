"""The GPU check, ready to run where a CUDA device is lent (bench/gpu_check.sh: at most 5 minutes).

    python bench/gpu_check.py [--out docs/gpu_check]        # on a machine with CUDA
    python bench/gpu_check.py --device cpu --quick           # a dry run of the same steps on the CPU

1. The CUDA rows of bench/speed.py: fine-tuning M=1 and M=4 (60 steps, the bundled case) per precision,
   and their ratio.
2. A 256^3 prediction of the fitted M=4 ensemble (adaptive grid, the default).
3. ``napari-dropsembles reconstruct`` of the bundled sample on the GPU and on the CPU (same seed), and
   whether the four maps agree to 1e-4.
4. Peak GPU memory of each step.

Without CUDA it prints one line and exits 0. Prints Markdown and JSON; writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_case import ROOT  # noqa: E402

MAPS = ("mean", "variance", "entropy", "mutual_information")
TOLERANCE = 1e-4
BUDGET_S = 300


def no_cuda_line() -> str | None:
    """One line saying why nothing runs, or None when a CUDA device is there."""
    import torch

    if torch.cuda.is_available():
        return None
    return (f"gpu_check: no CUDA device here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}): nothing was run")  # fmt: skip


class Device:
    """Synchronise and read the peak memory of ``name`` (no-ops on the CPU)."""

    def __init__(self, name: str) -> None:
        import torch

        self.name, self.torch = name, torch
        self.cuda = name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / 2**20, 1) if self.cuda else None

    def describe(self) -> dict:
        torch = self.torch
        info = {"device": self.name, "torch": torch.__version__, "cuda": torch.version.cuda}
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            info.update(card=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                        capability=f"{props.major}.{props.minor}")  # fmt: skip
        return info


def compare_maps(first: Path, second: Path, tolerance: float = TOLERANCE) -> dict:
    """Per map: the largest difference and the share of voxels differing by more than ``tolerance``."""
    import nibabel as nib

    out = {}
    for name in MAPS:
        a = np.asarray(nib.load(first / f"{name}.nii.gz").dataobj, dtype=np.float64)
        b = np.asarray(nib.load(second / f"{name}.nii.gz").dataobj, dtype=np.float64)
        if a.shape != b.shape:
            out[name] = {"error": f"shapes differ: {a.shape} vs {b.shape}"}
            continue
        diff = np.abs(a - b)
        out[name] = {"max_abs_diff": float(diff.max()), "share_over_tolerance": float((diff > tolerance).mean())}
    out["equal_to_tolerance"] = all("error" not in v and v["max_abs_diff"] <= tolerance for v in out.values())
    return out


def finetune_rows(prior, case, steps: int, device: Device) -> dict:
    from speed import bench_cuda

    device.reset_peak()
    rows = bench_cuda(prior, case, steps, device=device.name)
    return {"rows": rows, "peak_mb": device.peak_mb()}


def prediction(prior, case, size: int, device: Device) -> dict:
    from napari_dropsembles.core.config.configs import ReconstructionConfig
    from napari_dropsembles.core.fitting.methods import fit_steps
    from napari_dropsembles.core.querying.dense import run_to_end
    from napari_dropsembles.core.querying.predict import predict_grid_steps

    fitted = run_to_end(fit_steps(case, prior, ReconstructionConfig(members=4), device=device.name))
    affine, shape = fitted.frame.box_affine(fitted.frame.scale_mm / size)
    run_to_end(predict_grid_steps(fitted, affine, (24, 24, 24)))  # warm-up
    device.sync()
    device.reset_peak()
    tick = time.perf_counter()
    maps = run_to_end(predict_grid_steps(fitted, affine, shape))
    device.sync()
    return {"grid": list(shape), "seconds": round(time.perf_counter() - tick, 3), "queries": int(maps.queries),
            "peak_mb": device.peak_mb()}  # fmt: skip


def reconstruct(folder: Path, device: Device, steps: int | None) -> dict:
    """The command in this process (its peak memory is readable here) on ``device``, then on the CPU; the maps
    compared (a dry run on the CPU compares two CPU runs: the same seed gives the same maps)."""
    from napari_dropsembles.cli import main
    from napari_dropsembles.core.config.paths import bundled_sample_paths

    observation = str(bundled_sample_paths()["observation"])
    extra = ["--steps", str(steps)] if steps else []
    out = {}
    for side, name in (("device", device.name), ("cpu", "cpu")):
        device.reset_peak()
        tick = time.perf_counter()
        command = ["reconstruct", observation, "--out", str(folder / side), "--device", name, "--seed", "0"]
        code = main([*command, "--quiet", *extra])
        device.sync()
        out[side] = {"exit": code, "seconds": round(time.perf_counter() - tick, 2)}
        if side == "device":
            out[side]["peak_mb"] = device.peak_mb()
    if all(row["exit"] == 0 for row in out.values()):
        out["maps"] = compare_maps(folder / "device", folder / "cpu")
    return out


def markdown(results: dict) -> str:
    info, ft, pr, rc = results["device"], results["finetune"], results["prediction"], results["reconstruct"]
    card = info.get("card", info["device"])
    lines = [f"Card: {card}; torch {info['torch']}, CUDA {info['cuda']}; {results['date']}; "
             f"whole check {results['seconds']:.0f} s (budget {BUDGET_S} s).", "",
             "| measure | value |", "|---|---|"]  # fmt: skip
    for precision, row in (ft["rows"] or {}).items():
        lines.append(f"| fine-tune {precision}: M=1 / M=4 (s), ratio | {row['M=1 s']:.2f} / {row['M=4 s']:.2f}, "
                     f"{row['M=4 / M=1']:.2f} |")  # fmt: skip
    lines += [
        f"| {' x '.join(map(str, pr['grid']))} prediction, M=4, adaptive (s) | {pr['seconds']:.2f} "
        f"({pr['queries']:,} point x member queries) |",
        f"| peak GPU memory (MB): fine-tuning / prediction / reconstruct | {ft['peak_mb']} / {pr['peak_mb']} / "
        f"{rc['device'].get('peak_mb')} |",
        f"| reconstruct (bundled sample), {info['device']} / cpu (s) | {rc['device']['seconds']} / "
        f"{rc['cpu']['seconds']} |",
    ]
    maps = rc.get("maps")
    if maps:
        worst = max(v["max_abs_diff"] for k, v in maps.items() if k in MAPS and "error" not in v)
        lines.append(f"| the same maps as the CPU to {TOLERANCE:g} | {'yes' if maps['equal_to_tolerance'] else 'no'} "
                     f"(largest difference {worst:.1e}) |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the steps")
    parser.add_argument("--quick", action="store_true", help="10 steps and a 64^3 grid (a smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu_check")
    args = parser.parse_args(argv)
    if args.device == "cuda" and (reason := no_cuda_line()):
        print(reason)
        return 0
    from speed import load_case

    from napari_dropsembles.core.config.paths import bundled_prior_path
    from napari_dropsembles.core.networks.checkpoint import load_prior

    started = time.perf_counter()
    device = Device(args.device)
    prior = load_prior(bundled_prior_path())
    _observation, case = load_case(prior)
    steps = 10 if args.quick else 60
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "device": device.describe()}
    results["finetune"] = finetune_rows(prior, case, steps, device)
    results["prediction"] = prediction(prior, case, 64 if args.quick else 256, device)
    with tempfile.TemporaryDirectory() as tmp:
        results["reconstruct"] = reconstruct(Path(tmp), device, steps if args.quick else None)
    results["seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(results)
    print(text)
    print(json.dumps(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(f"# GPU check\n\n{text}\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return 0 if results["reconstruct"].get("maps", {}).get("equal_to_tolerance") else 1


if __name__ == "__main__":
    raise SystemExit(main())
