"""Speed of napari-dropsembles on this machine, before and after the speed work, in ONE run.

Measures, on the bundled vertebra case and in the same process (same load) as the machine's own
float32 matmul rate:
  (a) fine-tuning time: M=1, M=4 batched, M=4 one after another (and the previous bmm formulation)
  (b) achieved GFLOP/s of fine-tuning and of prediction, as a share of the measured matmul GFLOP/s
  (c) dense vs adaptive 128^3 prediction: time, network queries, agreement (Dice of the mesh interior)
  (d) threshold-slider mesh update vs a bare ``skimage.measure.marching_cubes`` call on the same grid
  (e) peak memory of 128^3 / 256^3 predictions (RSS growth in a fresh process, minus the output maps)
  (f) the ``demo`` command end to end (a subprocess), and the previous pipeline in process
Prints a markdown table and a JSON line, and writes docs/PERFORMANCE.md.

FLOP count (per query point and member; multiply-adds x 2, biases/ReLU/masks/sigmoid not counted),
with H hidden units, K blocks, C feature channels, P extra point inputs:
  forward  F = 2 [ (3 + P) H + K (C H + 2 H^2) + H ]
  training T = 2 F + 2 (2 K H^2 + H)   (forward, weight gradients of every layer, and input
             gradients of the hidden and output layers; the point and feature layers need none)
Fine-tuning FLOPs = steps x points_per_step x M x T + held-out evaluations x held-out points x M x F.

Usage: OMP_NUM_THREADS=1 python bench/speed.py [--prior CKPT] [--quick] [--out docs/PERFORMANCE.md]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig  # noqa: E402
from napari_dropsembles.core.config.paths import bundled_prior_path, bundled_sample_paths  # noqa: E402
from napari_dropsembles.core.fitting.case import make_case  # noqa: E402
from napari_dropsembles.core.fitting.finetune import finetune_steps  # noqa: E402
from napari_dropsembles.core.fitting.methods import fit_steps  # noqa: E402
from napari_dropsembles.core.io.volumes import read_volume  # noqa: E402
from napari_dropsembles.core.networks import chunking, fused_decoder  # noqa: E402
from napari_dropsembles.core.networks.checkpoint import load_prior  # noqa: E402
from napari_dropsembles.core.networks.ensemble import EnsembleDecoder, sample_member_masks  # noqa: E402
from napari_dropsembles.core.networks.fused_decoder import FastEnsembleDecoder  # noqa: E402
from napari_dropsembles.core.networks.model import sample_features  # noqa: E402
from napari_dropsembles.core.querying.dense import grid_points_mm, run_to_end  # noqa: E402
from napari_dropsembles.core.querying.isosurface import IsoSurface, extract_mesh  # noqa: E402
from napari_dropsembles.core.querying.maps import MAP_NAMES, EnsembleMaps, ensemble_statistics  # noqa: E402
from napari_dropsembles.core.querying.predict import predict_grid_steps  # noqa: E402
from napari_dropsembles.core.volumes.masks import binary_mask_from_volume  # noqa: E402
from napari_dropsembles.core.volumes.volume import Volume  # noqa: E402

# --------------------------------------------------------------------------- helpers

CHUNK_NOTES = [  # measured with this script; moved here from the chunking/evaluate docstrings
    (
        'The fused formulation is flat from about 8192 points per call up on a quiet machine (it lost up to '
        '30% at 65536 under load); the batched one fell 4x from 1024 to 65536 points (65536 points x 4 '
        'members x 64 units are 67 MB per activation tensor, far beyond the caches). In the batched backward,'
        ' `select` zero-filled the full stacked gradient for every block and member: about a quarter of a '
        'training step, which the fused hand-written backward avoids. The chunk is chosen once per query, in '
        '`core/querying/predict` (and for the held-out loss in `core/fitting/finetune`); the decoder itself '
        'never splits a call.'
    ),
    "",
    (
        'Scoring against a ground truth (`core/scoring/evaluate.compare_steps`) queries adaptively with a stricter '
        'variance tolerance (1e-5, because AUROC ranks even tiny variances): on the bundled case 2.7x fewer '
        "network queries than dense (3.6 s -> 1.2 s), every metric equal to the dense query's to 1e-7 (1e-4 "
        'on a barely trained test prior).'
    ),
]

adaptive_grid = functools.partial(predict_grid_steps, adaptive=True, coarse_step=4)  # the measured setting


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    seconds, _ = best_of(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def decoder_flops(config) -> tuple[int, int]:
    """(forward, training) FLOPs per query point and member (see the module docstring)."""
    h, k, c, p = config.hidden, config.blocks, config.feature_channels, config.point_features
    forward = 2 * ((3 + p) * h + k * (c * h + 2 * h * h) + h)
    return forward, 2 * forward + 2 * (2 * k * h * h + h)


def busy_processes() -> list[str]:
    """Other processes using more than 20% of a core right now (the machine is shared)."""
    listing = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    busy = []
    for line in listing.splitlines()[1:]:
        pid, cpu, *args = line.split(None, 2) + [""]
        if pid.isdigit() and int(pid) != os.getpid() and float(cpu) > 20:
            busy.append(f"{' '.join(args).strip()[:60]} ({cpu}%)")
    return busy


def machine() -> dict:
    model = platform.processor() or platform.machine()
    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "x86_64", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    busy = subprocess.run(["pgrep", "-f", "cli pretrain"], capture_output=True, text=True).stdout.split()
    return {
        "cpu": model,
        "simd": [f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "pretraining_running": bool(busy),
        "busy_processes": busy_processes(),
    }


@contextlib.contextmanager
def before_the_speed_work():
    """The code paths as they were: bmm formulation everywhere and 65536-point decoder calls."""
    import napari_dropsembles.core.fitting.finetune as finetune
    import napari_dropsembles.core.fitting.fitted as fitted
    import napari_dropsembles.core.querying.dense as predict

    saved = fused_decoder.choose_formulation, fitted.choose_chunk, predict.choose_chunk, finetune.choose_chunk
    fused_decoder.choose_formulation = lambda device: "batched"
    fitted.choose_chunk = predict.choose_chunk = finetune.choose_chunk = lambda device, members, hidden: 65536
    try:
        yield
    finally:
        fused_decoder.choose_formulation, fitted.choose_chunk, predict.choose_chunk, finetune.choose_chunk = saved


def dense_before(fitted, affine, shape, chunk: int = 65536) -> EnsembleMaps:
    """The previous predict_grid_steps: 65536-point calls of the bmm decoder, no sub-batching."""
    decoder = FastEnsembleDecoder.wrap(fitted.decoder, "batched")
    total = int(np.prod(shape))
    maps = {name: np.zeros(total, dtype=np.float32) for name in MAP_NAMES}
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        points = torch.from_numpy(
            fitted.frame.to_normalised(grid_points_mm(affine, shape, start, stop)).astype(np.float32)
        )
        inside = (points.abs() < 0.5).all(-1)
        probs = torch.zeros(fitted.members, points.shape[0])
        inputs = torch.from_numpy(fitted.point_inputs(points[inside].numpy()))
        feats = sample_features(fitted.feature_grids, inputs[None].expand(fitted.feature_grids.shape[0], -1, -1))
        with torch.no_grad():
            probs[:, inside] = torch.sigmoid(decoder(inputs, feats[0] if feats.shape[0] == 1 else feats))
        for name, value in ensemble_statistics(probs).items():
            maps[name][start:stop] = value.numpy()
    return EnsembleMaps(
        **{n: Volume(v.reshape(shape), affine) for n, v in maps.items()}, queries=total * fitted.members
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


# --------------------------------------------------------------------------- measurements


def load_case(prior):
    sample = bundled_sample_paths()
    observation = binary_mask_from_volume(read_volume(sample["observation"]))
    case = make_case(observation, prior.config)
    return observation, case


def bench_finetune(prior, case, steps: int, repeats: int, peak: float) -> dict:
    model = prior.models[0]
    config = FinetuneConfig(steps=steps)
    with torch.no_grad():
        grid = model.encoder(torch.from_numpy(case.encoder_input)[None])
        points = torch.from_numpy(case.points)
        features = sample_features(grid, points[None])[0]
    labels = torch.from_numpy(case.labels)
    forward, train = decoder_flops(prior.config)
    n = points.shape[0]
    n_hold = int(n * config.holdout)
    evaluations = 1 + steps // config.eval_every + (1 if steps % config.eval_every else 0)
    batch = min(config.points_per_step, n - n_hold)

    def flops(members: int) -> float:
        return members * (steps * batch * train + evaluations * n_hold * forward)

    def run(members: int, formulation: str, seed: int) -> float:
        decoder = EnsembleDecoder.replicate(prior.config, model.decoder, members)
        decoder.set_masks(sample_member_masks(members, prior.config, torch.Generator().manual_seed(seed)))
        decoder = FastEnsembleDecoder.wrap(decoder, formulation)
        started = time.perf_counter()
        run_to_end(
            finetune_steps(
                decoder,
                features,
                points,
                labels,
                config,
                anchor=model.decoder,
                fisher=model.fisher,
                generator=torch.Generator().manual_seed(seed),
            )
        )
        return time.perf_counter() - started

    run(1, "fused", 0)  # warm-up
    rows = {}
    for formulation, tag in (("fused", "after"), ("batched", "before")):
        one = four = loop = float("inf")
        adjacent = 0.0
        for r in range(repeats):  # interleaved rounds: a load change hits all three alike
            one = min(one, run(1, formulation, r))
            matmul_before = matmul_gflops(repeats=3)
            seconds = run(4, formulation, r)
            reference = max(matmul_before, matmul_gflops(repeats=3))  # matmul measured right before and after
            four = min(four, seconds)
            adjacent = max(adjacent, flops(4) / seconds / 1e9 / reference)
            loop = min(loop, sum(run(1, formulation, 10 * r + m) for m in range(4)))
        rows[tag] = {
            "M=4 share of adjacent matmul": adjacent,
            "formulation": formulation,
            "M=1 s": one,
            "M=4 batched s": four,
            "M=4 one after another s": loop,
            "batched / loop": four / loop,
            "M=4 GFLOP/s": flops(4) / four / 1e9,
            "M=4 share of matmul": flops(4) / four / 1e9 / peak,
            "M=1 GFLOP/s": flops(1) / one / 1e9,
        }
    rows["workload"] = {
        "steps": steps,
        "points_per_step": batch,
        "observed_points": n,
        "holdout_points": n_hold,
        "evaluations": evaluations,
        "GFLOP M=4": flops(4) / 1e9,
    }
    return rows


def bench_cuda(prior, case, steps: int, device: str = "cuda") -> dict | None:
    """Fine-tuning M=1 and M=4 per precision on the GPU (``device="cpu"``: the same rows on the CPU, a dry
    run of bench/gpu_check.py)."""
    if device == "cuda" and not torch.cuda.is_available():
        return None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out = {}
    for precision in chunking.PRECISIONS:
        times = {}
        for members in (1, 4):
            config = ReconstructionConfig(
                members=members,
                method="dropsembles" if members > 1 else "single",
                finetune=FinetuneConfig(steps=steps),
                precision=precision,
            )
            run_to_end(fit_steps(case, prior, config, device=device))  # warm-up
            sync()
            started = time.perf_counter()
            run_to_end(fit_steps(case, prior, config, device=device))
            sync()
            times[members] = time.perf_counter() - started
        out[precision] = {"M=1 s": times[1], "M=4 s": times[4], "M=4 / M=1": times[4] / times[1]}
    return out


def _single_member(p: dict, mask: torch.Tensor, points: torch.Tensor, features: torch.Tensor, blocks: int):
    """One member's logits (the reference formulations below call it per member or under vmap)."""
    net = torch.addmm(p["fc_p_b"], points, p["fc_p_w"])
    for k in range(blocks):
        net = net + torch.addmm(p["fc_c_b"][k], features, p["fc_c_w"][k])
        hidden = torch.addmm(p["fc0_b"][k], torch.relu(net), p["fc0_w"][k])
        net = (net + torch.addmm(p["fc1_b"][k], torch.relu(hidden), p["fc1_w"][k])) * mask[k]
    return (torch.relu(net) @ p["out_w"] + p["out_b"])[:, 0]


def _loop_forward(decoder, points, features):
    params = decoder.parameter_dict()
    blocks = decoder.config.blocks
    return torch.stack(
        [
            _single_member({n: v[m] for n, v in params.items()}, decoder.member_masks[m], points, features, blocks)
            for m in range(decoder.members)
        ]
    )


def _vmap_forward(decoder, points, features):
    from torch.func import vmap

    blocks = decoder.config.blocks
    return vmap(lambda p, mask: _single_member(p, mask, points, features, blocks))(
        decoder.parameter_dict(), decoder.member_masks
    )


def _block_diagonal_forward(decoder, points, features):
    """Members side by side ([N, M*H]); hidden layers as one block-diagonal matmul (M x the FLOPs)."""
    m, h = decoder.members, decoder.config.hidden
    net = points @ decoder.fc_p_w.permute(1, 0, 2).reshape(points.shape[1], m * h) + decoder.fc_p_b.reshape(-1)
    for k in range(decoder.config.blocks):
        cond = features @ decoder.fc_c_w[:, k].permute(1, 0, 2).reshape(features.shape[1], m * h)
        net = net + cond + decoder.fc_c_b[:, k].reshape(-1)
        hidden = torch.relu(net) @ torch.block_diag(*decoder.fc0_w[:, k]) + decoder.fc0_b[:, k].reshape(-1)
        net = net + torch.relu(hidden) @ torch.block_diag(*decoder.fc1_w[:, k]) + decoder.fc1_b[:, k].reshape(-1)
        net = net * decoder.member_masks[:, k].reshape(-1)
    return (torch.relu(net) @ torch.block_diag(*decoder.out_w) + decoder.out_b.reshape(-1)).T


def bench_formulations(prior, peak: float, repeats: int, points_per_step: int = 4096) -> dict:
    """One fine-tuning step's forward + backward for M=4 in each formulation (same inputs)."""
    model = prior.models[0]
    base = EnsembleDecoder.replicate(prior.config, model.decoder, 4)
    base.set_masks(sample_member_masks(4, prior.config, torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(points_per_step, 3 + prior.config.point_features, generator=gen) - 0.5
    features = torch.randn(points_per_step, prior.config.feature_channels, generator=gen)
    labels = (torch.rand(points_per_step, generator=gen) > 0.5).float()
    _, train = decoder_flops(prior.config)
    candidates = {
        "bmm (stacked weights, autograd; before)": lambda d: d(points, features),
        "loop of addmm per member (autograd)": lambda d: _loop_forward(d, points, features),
        "vmap over members (torch.func)": lambda d: _vmap_forward(d, points, features),
        "block-diagonal matmul (autograd)": lambda d: _block_diagonal_forward(d, points, features),
        "fused per-member, hand-written backward (after, CPU)": None,
    }
    reference = None
    out = {}
    for name, forward in candidates.items():
        decoder = FastEnsembleDecoder.wrap(base, "fused" if forward is None else "batched")
        run = forward or (lambda d: d(points, features))

        def step(decoder=decoder, run=run):
            decoder.zero_grad(set_to_none=True)
            logits = run(decoder)
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.expand_as(logits)).backward()
            return logits.detach(), decoder.fc0_w.grad.clone()

        step()
        seconds, (logits, grad) = best_of(step, 5 * repeats)
        if reference is None:
            reference = (logits, grad)
        agree = bool(
            torch.allclose(logits, reference[0], atol=1e-4) and torch.allclose(grad, reference[1], rtol=1e-3, atol=1e-7)
        )
        gflops = 4 * points_per_step * train / seconds / 1e9
        out[name] = {"ms": seconds * 1e3, "GFLOP/s": gflops, "share of matmul": gflops / peak, "agrees": agree}
    return out


def bench_chunk_sizes(prior, peak: float, repeats: int) -> dict:
    """No-grad decoder time per point for several points-per-call (justifies chunking.CPU_CHUNK)."""
    model = prior.models[0]
    decoder = EnsembleDecoder.replicate(prior.config, model.decoder, 4)
    gen = torch.Generator().manual_seed(0)
    n = 65536
    points = torch.rand(n, 3 + prior.config.point_features, generator=gen) - 0.5
    features = torch.randn(n, prior.config.feature_channels, generator=gen)
    forward, _ = decoder_flops(prior.config)
    out = {}
    for formulation in ("fused", "batched"):
        fast = FastEnsembleDecoder.wrap(decoder, formulation)
        for size in (1024, 4096, 8192, 16384, 65536):

            def run(size=size, fast=fast):
                with torch.no_grad():
                    for start in range(0, n, size):
                        fast(points[start : start + size], features[start : start + size])

            run()
            seconds, _ = best_of(run, repeats + 1)
            out[f"{formulation} {size}"] = {"s": seconds, "GFLOP/s": 4 * n * forward / seconds / 1e9}
    return out


def fit(prior, case, device: str = "cpu"):
    started = time.perf_counter()
    fitted = run_to_end(fit_steps(case, prior, ReconstructionConfig(members=4), device=device))
    return fitted, time.perf_counter() - started


def bench_predict(fitted, size: int, peak: float, with_before: bool) -> tuple[dict, EnsembleMaps]:
    affine, shape = fitted.frame.box_affine(fitted.frame.scale_mm / size)
    forward, _ = decoder_flops(fitted.decoder.config)
    out = {"grid": list(shape), "voxels": int(np.prod(shape))}
    if with_before:
        seconds, before = best_of(lambda: dense_before(fitted, affine, shape), 1)
        out["before dense s"] = seconds
        out["before queries"] = before.queries
    matmul_before = matmul_gflops(repeats=3)
    seconds, dense = best_of(lambda: run_to_end(predict_grid_steps(fitted, affine, shape, chunk=None)), 1)
    reference = max(matmul_before, matmul_gflops(repeats=3))
    out["dense share of adjacent matmul"] = dense.queries * forward / seconds / 1e9 / reference
    out["dense s"] = seconds
    out["dense queries"] = dense.queries
    out["dense GFLOP/s"] = dense.queries * forward / seconds / 1e9
    out["dense share of matmul"] = out["dense GFLOP/s"] / peak
    seconds, adaptive = best_of(lambda: run_to_end(adaptive_grid(fitted, affine, shape)), 1)
    out["adaptive s"] = seconds
    out["adaptive queries"] = adaptive.queries
    out["fewer queries x"] = dense.queries / max(1, adaptive.queries)
    a, d = adaptive.mean.data >= 0.5, dense.mean.data >= 0.5
    out["dice adaptive vs dense"] = dice(a, d)
    queried = queried_voxels(fitted, affine, shape)
    out["share of voxels queried"] = float(queried.mean())
    for name in MAP_NAMES:
        diff = np.abs(getattr(adaptive, name).data - getattr(dense, name).data)
        out[f"max |{name} diff| where queried"] = float(diff[queried].max())
        out[f"max |{name} diff| interpolated"] = float(diff[~queried].max(initial=0))
    if with_before:
        out["before vs dense max |mean diff|"] = float(np.abs(before.mean.data - dense.mean.data).max())
    return out, dense


def queried_voxels(fitted, affine: np.ndarray, shape) -> np.ndarray:
    """The voxels an adaptive run queries (its network calls recorded, mapped back to the grid)."""
    seen = []
    original = fitted.predict_normalised

    def recording(points):
        seen.append(points.cpu().numpy())
        return original(points)

    fitted.predict_normalised = recording
    try:
        run_to_end(adaptive_grid(fitted, affine, shape))
    finally:
        del fitted.predict_normalised
    world = fitted.frame.to_world(np.concatenate(seen).astype(np.float64))
    inverse = np.linalg.inv(affine)
    index = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(index.T)] = True
    return mask


def extract_mesh_before(volume: Volume, threshold: float, values: Volume) -> tuple:
    """The mesh update as it was: per call, range scan + padding, signed-volume orientation, trilinear values."""
    from scipy.ndimage import map_coordinates
    from skimage.measure import marching_cubes

    data = np.asarray(volume.data, dtype=np.float32)
    finite = np.isfinite(data)
    lo = float(data[finite].min())
    padded = np.pad(np.where(finite, data, lo), 1, mode="constant", constant_values=lo)
    verts, faces, _, _ = marching_cubes(padded, level=threshold, allow_degenerate=False)
    index = verts.astype(np.float64) - 1.0
    vertices_mm = volume.index_to_world(index)
    a, b, c = (vertices_mm[faces[:, i]] for i in range(3))
    if np.einsum("ij,ij->i", a, np.cross(b, c)).sum() < 0:
        faces = faces[:, ::-1].copy()
    vals = map_coordinates(np.asarray(values.data, dtype=np.float32), index.T, order=1, mode="nearest")
    return vertices_mm.astype(np.float32), faces.astype(np.int32), vals


def bench_mesh(maps: EnsembleMaps, repeats: int) -> dict:
    """Threshold-slider update vs bare marching cubes, interleaved (load changes cancel out).

    'mesh update' is what the slider runs (``Reconstruction.remesh``): an ``IsoSurface`` prepared
    once per result, then marching cubes + outward winding + per-vertex variance per threshold.
    'one-off extract_mesh' includes the preparation; 'before' is the previous per-call code.
    """
    from skimage.measure import marching_cubes

    data = maps.mean.data
    prepare_s, surface = best_of(lambda: IsoSurface(maps.mean, maps.variance), repeats)
    rows = {}
    for threshold in (0.3, 0.5, 0.7):
        candidates = {
            "mesh update s": lambda t=threshold: surface.extract(t),
            "one-off extract_mesh s": lambda t=threshold: extract_mesh(maps.mean, t, maps.variance),
            "before s": lambda t=threshold: extract_mesh_before(maps.mean, t, maps.variance),
            "bare marching_cubes s": lambda t=threshold: marching_cubes(data, level=t),
        }
        best = dict.fromkeys(candidates, float("inf"))
        for _ in range(repeats):
            for name, fn in candidates.items():
                started = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - started)
        bare = best["bare marching_cubes s"]
        rows[str(threshold)] = {
            **best,
            "ratio": best["mesh update s"] / bare,
            "one-off ratio": best["one-off extract_mesh s"] / bare,
            "before ratio": best["before s"] / bare,
        }
    return {
        "per threshold": rows,
        "worst ratio": max(r["ratio"] for r in rows.values()),
        "worst one-off ratio": max(r["one-off ratio"] for r in rows.values()),
        "worst before ratio": max(r["before ratio"] for r in rows.values()),
        "prepare s": prepare_s,
        "grid": list(data.shape),
    }


PROBE = """
import os, sys, threading, time, tracemalloc, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import functools
from napari_dropsembles.core.querying.dense import run_to_end
from napari_dropsembles.core.querying.predict import predict_grid_steps
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
fitted = torch.load({path!r}, weights_only=False)
kind, size, chunk = {kind!r}, {size}, {chunk}
fn = functools.partial(predict_grid_steps, adaptive=kind == "adaptive", coarse_step=4)
affine, _ = fitted.frame.box_affine(fitted.frame.scale_mm / 24)
run_to_end(fn(fitted, affine, (24, 24, 24), chunk=chunk))  # warm-up: libraries, buffers
affine, shape = fitted.frame.box_affine(fitted.frame.scale_mm / size)
base = peak = rss()
done = threading.Event()
def sample():
    global peak
    while not done.is_set():
        peak = max(peak, rss())
        time.sleep(0.002)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
tracemalloc.start()
started = time.perf_counter()
maps = run_to_end(fn(fitted, affine, shape, chunk=chunk))
seconds = time.perf_counter() - started
traced = tracemalloc.get_traced_memory()[1]
done.set()
thread.join()
peak = max(peak, rss())
print(seconds, peak - base, traced, 4 * 4 * maps.mean.data.size, maps.queries)
"""


def bench_memory(fitted, jobs: list[tuple[str, int, int | None]]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fitted.pt")
        torch.save(fitted, path)
        for kind, size, chunk in jobs:
            code = PROBE.format(root=str(ROOT), path=path, kind=kind, size=size, chunk=chunk)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if done.returncode:
                rows.append({"kind": kind, "size": size, "error": done.stderr.strip().splitlines()[-1:]})
                continue
            seconds, rss, traced, outputs, queries = (float(x) for x in done.stdout.split())
            rows.append(
                {
                    "kind": kind,
                    "grid": f"{size}^3",
                    "chunk": chunk or chunking.choose_chunk("cpu", 4, 64),
                    "seconds": seconds,
                    "peak RSS growth MB": rss / 2**20,
                    "output maps MB": outputs / 2**20,
                    "working memory MB": max(0.0, rss - outputs) / 2**20,
                    "numpy peak (tracemalloc) MB": traced / 2**20,
                    "queries": int(queries),
                }
            )
    return rows


def bench_demo(prior_path: Path | None) -> dict:
    out = tempfile.mkdtemp(prefix="dropsembles-demo-")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = shutil.which("napari-dropsembles")
    command = [script] if script else [sys.executable, "-m", "napari_dropsembles.cli"]
    sample = bundled_sample_paths()
    if bundled_prior_path().is_file() and prior_path in (None, bundled_prior_path()):
        argv = command + ["demo", "--out", out, "--quiet"]
    else:  # the demo's own steps with an explicit prior (the bundled one is not there yet)
        argv = command + [
            "reconstruct",
            str(sample["observation"]),
            "--out",
            out,
            "--quiet",
            "--ground-truth",
            str(sample["ground_truth"]),
            "--prior",
            str(prior_path),
        ]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(ROOT))
    seconds = time.perf_counter() - started
    result = {
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv)),
        "seconds": seconds,
        "returncode": done.returncode,
    }
    report = Path(out) / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        result["timings_s"] = data.get("timings_s")
        result["dice"] = (data.get("metrics") or {}).get("dropsembles", {}).get("dice")
        result["network_queries"] = data.get("network_queries")
    if done.returncode:
        result["stderr"] = done.stderr.strip().splitlines()[-3:]
    shutil.rmtree(out, ignore_errors=True)
    return result


def demo_before_in_process(prior, observation) -> dict:
    """The demo's work (reconstruct 126^3 + evaluate on the GT grid + save) with the previous paths."""
    from napari_dropsembles.core.config.configs import ReconstructionConfig
    from napari_dropsembles.core.jobs.reconstruct import reconstruct
    from napari_dropsembles.core.scoring.evaluate import compare_steps

    sample = bundled_sample_paths()
    ground_truth = binary_mask_from_volume(read_volume(sample["ground_truth"]), threshold=0.5)
    out = tempfile.mkdtemp(prefix="dropsembles-before-")
    started = time.perf_counter()
    with before_the_speed_work():
        result = reconstruct(observation, prior, ReconstructionConfig(adaptive=False, chunk=65536, device="cpu"))
        result.metrics = run_to_end(compare_steps(result.fitted, observation, ground_truth))
        result.save(out)
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "dice": result.metrics.get("dropsembles", {}).get("dice"),
    }


# --------------------------------------------------------------------------- report


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: dict) -> str:
    ft, pr, mesh = results["finetune"], results["predict_128"], results["mesh"]
    mem, demo = results["memory"], results["demo"]
    before, after = ft["before"], ft["after"]
    peak = results["matmul_gflops"]
    rows = [
        ("float32 matmul 2048^2 (this run, 1 thread, best of 3 rounds)", "", f"{peak:.1f} GFLOP/s", "reference", ""),
        ("(a) fine-tune M=1 (s)", fmt(before["M=1 s"]), fmt(after["M=1 s"]), "", ""),
        ("(a) fine-tune M=4 batched (s)", fmt(before["M=4 batched s"]), fmt(after["M=4 batched s"]), "", ""),
        (
            "(a) fine-tune M=4 one after another (s)",
            fmt(before["M=4 one after another s"]),
            fmt(after["M=4 one after another s"]),
            "",
            "",
        ),
        (
            "(a) batched / one after another",
            fmt(before["batched / loop"]),
            fmt(after["batched / loop"]),
            "<= 1",
            "yes" if after["batched / loop"] <= 1.0 else "no",
        ),
        (
            "(b) fine-tune M=4 GFLOP/s (share of the run's best matmul; of the matmul measured beside it)",
            f"{before['M=4 GFLOP/s']:.1f} ({before['M=4 share of matmul']:.0%}; "
            f"{before['M=4 share of adjacent matmul']:.0%})",
            f"{after['M=4 GFLOP/s']:.1f} ({after['M=4 share of matmul']:.0%}; "
            f"{after['M=4 share of adjacent matmul']:.0%})",
            ">= 50%",
            "yes"
            if after["M=4 share of matmul"] >= 0.5
            else ("beside it" if after["M=4 share of adjacent matmul"] >= 0.5 else "no"),
        ),
        (
            "(b) prediction (dense 128^3) GFLOP/s (shares as above)",
            "-"
            if "before dense s" not in pr
            else f"{pr['before queries'] * results['forward_flops'] / pr['before dense s'] / 1e9:.1f} "
            f"({pr['before queries'] * results['forward_flops'] / pr['before dense s'] / 1e9 / peak:.0%})",
            f"{pr['dense GFLOP/s']:.1f} ({pr['dense share of matmul']:.0%}; "
            f"{pr['dense share of adjacent matmul']:.0%})",
            "",
            "",
        ),
        (
            "(c) 128^3 prediction time (s): dense before / dense / adaptive",
            fmt(pr.get("before dense s")),
            f"{pr['dense s']:.2f} / {pr['adaptive s']:.2f}",
            "",
            "",
        ),
        (
            "(c) 128^3 network queries (point x member)",
            fmt(pr.get("before queries")),
            f"{pr['dense queries']:,} / {pr['adaptive queries']:,} ({pr['fewer queries x']:.1f}x fewer)",
            ">= 5x",
            "yes" if pr["fewer queries x"] >= 5 else "no",
        ),
        (
            "(c) adaptive vs dense: Dice of mesh interior",
            "",
            f"{pr['dice adaptive vs dense']:.4f}",
            ">= 0.995",
            "yes" if pr["dice adaptive vs dense"] >= 0.995 else "no",
        ),
        (
            "(d) threshold-slider mesh update / bare marching_cubes (worst of 3 levels)",
            fmt(mesh.get("worst before ratio")) + "x",
            f"{mesh['worst ratio']:.2f}x ({mesh['per threshold']['0.5']['mesh update s'] * 1e3:.0f} ms vs "
            f"{mesh['per threshold']['0.5']['bare marching_cubes s'] * 1e3:.0f} ms at 0.5)",
            "<= 1.3x",
            "yes" if mesh["worst ratio"] <= 1.3 else "no",
        ),
    ]
    for row in mem:
        if "error" in row:
            rows.append((f"(e) {row['kind']} {row['size']}^3 memory", "", f"error {row['error']}", "", "no"))
            continue
        rows.append(
            (
                f"(e) {row['kind']} {row['grid']} peak RSS growth (MB)",
                "",
                f"{row['peak RSS growth MB']:.0f} = {row['output maps MB']:.0f} output maps + "
                f"{row['working memory MB']:.0f} working ({row['seconds']:.1f} s)",
                "working bounded by chunk",
                "",
            )
        )
    demo_before = results.get("demo_before")
    rows.append(
        (
            "(f) demo end to end (s)",
            fmt(demo_before["seconds"], 1) if demo_before else "-",
            f"{demo['seconds']:.1f}" + ("" if demo["returncode"] == 0 else f" (exit {demo['returncode']})"),
            "< 60",
            "yes" if demo["returncode"] == 0 and demo["seconds"] < 60 else "no",
        )
    )
    lines = ["| measure | before | after | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, results: dict, markdown: str) -> None:
    m = results["machine"]
    ft = results["finetune"]
    lines = [
        "# Performance",
        "",
        "Generated by `OMP_NUM_THREADS=1 python bench/speed.py` (one run; every number below comes from that run).",
        "",
        f"- Device: CPU `{m['cpu']}` ({', '.join(m['simd'])}), {m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} torch thread(s); CUDA: {m['cuda'] or 'none'}.",
        f"- Load: 1-min load average {m['load_average_1min']} at the start and "
        f"{results['load_average_end']} at the end; a pretraining job was "
        f"{'running' if m['pretraining_running'] else 'not running'}; other busy processes at the start: "
        f"{'; '.join(m['busy_processes']) or 'none'}; at the end: "
        f"{'; '.join(results['busy_processes_end']) or 'none'}. "
        f"Date: {results['date']}.",
        f"- Prior: `{results['prior']}`; case: the bundled vertebra observation "
        f"({ft['workload']['observed_points']:,} observed voxels in the box).",
        "- Before = the code as it was: stacked-weight `baddbmm` decoder with autograd for every member, "
        "65536-point decoder calls, every voxel queried. After = fused per-member CPU formulation with a "
        "hand-written backward, cache-sized decoder calls, adaptive (coarse-to-fine) grid evaluation.",
        "",
        markdown,
        "",
        "## How the numbers are counted",
        "",
        f"- FLOPs per query point and member (decoder hidden {results['config']['hidden']}, "
        f"{results['config']['blocks']} blocks, {results['config']['feature_channels']} feature channels): "
        f"forward {results['forward_flops']:,}, training step {results['train_flops']:,} (forward + weight "
        "gradients of every layer + input gradients of the hidden and output layers). Only matmul "
        "multiply-adds count; biases, ReLU, masks, the loss and Adam are overhead.",
        f"- Fine-tuning workload: {ft['workload']['steps']} Adam steps x {ft['workload']['points_per_step']} "
        f"points, plus {ft['workload']['evaluations']} held-out evaluations of {ft['workload']['holdout_points']:,} "
        f"points: {ft['workload']['GFLOP M=4']:.1f} GFLOP for M=4. Times are best of {results['repeats']}.",
        "- The matmul reference is a 2048x2048 float32 matmul on the same thread count, best of 7, measured "
        f"three times in this run ({', '.join(f'{g:.0f}' for g in results['matmul_gflops_runs'])} GFLOP/s); "
        "the highest is the reference, so shares are conservative on a machine whose load changes.",
        "- Adaptive evaluation: coarse lattice every 4th voxel, cells refined when their corner means reach "
        "[0.05, 0.95] or corner variance > 1e-3, dilated by one cell. 'Dice of mesh interior' compares "
        "`mean >= 0.5` of the adaptive and dense grids (what the mesh encloses). Voxels that were queried "
        "equal the dense result in all four maps (largest difference there: "
        f"{max(results['predict_128'][f'max |{n} diff| where queried'] for n in MAP_NAMES):.1e}; "
        f"{results['predict_128']['share of voxels queried']:.1%} of the voxels were queried); the rest are "
        "interpolated (largest mean difference there: "
        f"{results['predict_128']['max |mean diff| interpolated']:.1e}).",
        "- Memory: a fresh process per grid; growth of its peak RSS during the prediction. The four float32 "
        "output maps are the result itself (grow with the grid); the rest is working memory, bounded by "
        "the chunk (and, for adaptive, one slab of the grid).",
        "- Mesh update: what the threshold slider runs (`Reconstruction.remesh`: marching cubes on the cached "
        "mean, outward normals, per-vertex variance) vs `skimage.measure.marching_cubes` alone on the same "
        "grid. The padded grid, its value range and the winding are prepared once per result "
        f"(`IsoSurface`, {results['mesh']['prepare s'] * 1e3:.0f} ms); a one-off `extract_mesh`, preparation "
        f"included, is {results['mesh']['worst one-off ratio']:.2f}x the bare call. Before: the previous "
        "per-call code (range scan and padding every call, orientation from the signed volume, trilinear "
        "`map_coordinates` for the vertex values).",
        "",
        "## Choice of formulation (CPU, M=4, 4096 points, one step's forward + backward, same run)",
        "",
        "| formulation | ms per step | GFLOP/s | share of matmul | same result |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["formulations"].items():
        lines.append(
            f"| {name} | {row['ms']:.1f} | {row['GFLOP/s']:.1f} | {row['share of matmul']:.0%} | "
            f"{'yes' if row['agrees'] else 'NO'} |"
        )
    lines += [
        "",
        "Whole fine-tuning (60 steps + held-out evaluations), previous and chosen formulation:",
        "",
        "| formulation | M=1 (s) | M=4 batched (s) | M=4 one after another (s) | batched / loop |",
        "|---|---|---|---|---|",
    ]
    for tag in ("before", "after"):
        row = ft[tag]
        lines.append(
            f"| {row['formulation']} ({tag}) | {row['M=1 s']:.2f} | {row['M=4 batched s']:.2f} | "
            f"{row['M=4 one after another s']:.2f} | {row['batched / loop']:.2f} |"
        )
    lines += [
        "",
        "`fused` is chosen on the CPU, `batched` (one `baddbmm` per layer for all members, autocast-friendly) "
        "on CUDA; see `napari_dropsembles/core/networks/fused_decoder.py`.",
        "",
        "## Points per decoder call (CPU, M=4, no grad, 65536 points in total)",
        "",
        "| formulation | "
        + " | ".join(str(k.split()[1]) for k in results["chunk_sizes"] if k.startswith("fused"))
        + " |",
        "|---|" + "---|" * sum(k.startswith("fused") for k in results["chunk_sizes"]),
    ]
    for formulation in ("fused", "batched"):
        cells = [f"{v['GFLOP/s']:.1f}" for k, v in results["chunk_sizes"].items() if k.startswith(formulation)]
        lines.append(f"| {formulation} (GFLOP/s) | " + " | ".join(cells) + " |")
    lines += ["", f"`chunking.CPU_CHUNK` = {chunking.CPU_CHUNK} points for M=4 x 64 units (scaled for other widths)."]
    lines += ["", *CHUNK_NOTES]
    if results.get("cuda"):
        lines += [
            "",
            "## CUDA",
            "",
            "| precision | M=1 (s) | M=4 (s) | M=4 / M=1 (target <= 1.5) |",
            "|---|---|---|---|",
        ]
        for precision, row in results["cuda"].items():
            lines.append(f"| {precision} | {row['M=1 s']:.2f} | {row['M=4 s']:.2f} | {row['M=4 / M=1']:.2f} |")
    else:
        lines += [
            "",
            "No CUDA device in this run: the GPU path (autocast, chunks from free memory, "
            "out-of-memory halving) is covered by unit tests with mocks only.",
        ]
    lines += ["", "## Raw results", "", "```json", json.dumps(results, indent=1, default=str), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=Path, default=None, help="prior checkpoint (default: the bundled one)")
    parser.add_argument("--steps", type=int, default=FinetuneConfig().steps)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller grids, no 'before' runs (a smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prior_path = args.prior or bundled_prior_path()
    prior = load_prior(prior_path)
    results: dict = {
        "machine": machine(),
        "prior": prior_path.name,
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "config": dataclasses.asdict(prior.config),
    }
    forward, train = decoder_flops(prior.config)
    results["forward_flops"], results["train_flops"] = forward, train
    matmul_runs = [matmul_gflops()]
    peak = matmul_runs[0]
    observation, case = load_case(prior)
    steps = 10 if args.quick else args.steps
    repeats = 1 if args.quick else args.repeats

    def log(*words: object) -> None:
        print(*words, file=sys.stderr, flush=True)

    log("fine-tuning ...")
    results["finetune"] = bench_finetune(prior, case, steps, repeats, peak)
    results["cuda"] = bench_cuda(prior, case, steps)
    matmul_runs.append(matmul_gflops())
    results["formulations"] = bench_formulations(prior, peak, repeats)
    results["chunk_sizes"] = bench_chunk_sizes(prior, peak, repeats)
    fitted, results["fit_M4_s"] = fit(prior, case)
    size = 64 if args.quick else 128
    log(f"prediction {size}^3 ...")
    results["predict_128"], dense = bench_predict(fitted, size, peak, with_before=not args.quick)
    results["mesh"] = bench_mesh(dense, 3 if args.quick else 15)
    log("memory ...")
    jobs = [
        ("dense", 64 if args.quick else 128, None),
        ("adaptive", 64 if args.quick else 128, None),
        ("adaptive", 96 if args.quick else 256, None),
    ]
    results["memory"] = bench_memory(fitted, jobs)
    log("demo ...")
    results["demo"] = bench_demo(prior_path)
    results["demo_before"] = None if args.quick else demo_before_in_process(prior, observation)
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    results["busy_processes_end"] = busy_processes()
    matmul_runs.append(matmul_gflops())
    # The reference is the best matmul rate seen in this run (start, middle, end): the shares are conservative.
    results["matmul_gflops_runs"] = matmul_runs
    results["matmul_gflops"] = peak = max(matmul_runs)
    for row in (results["finetune"]["before"], results["finetune"]["after"]):
        row["M=4 share of matmul"] = row["M=4 GFLOP/s"] / peak
    for row in results["formulations"].values():
        row["share of matmul"] = row["GFLOP/s"] / peak
    results["predict_128"]["dense share of matmul"] = results["predict_128"]["dense GFLOP/s"] / peak
    markdown = table(results)
    print(markdown)
    print(json.dumps(results, default=str))
    write_markdown(args.out, results, markdown)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
