"""Pretraining on dataset A (procedural vertebrae or dense masks), then the EWC Fisher.

Each sample is made exactly as a case is at reconstruction time (:func:`make_case` on a
simulated, randomly sliced and corrupted observation), so the prior learns to complete sparse
inputs (DESIGN section 7: priors trained on dense inputs collapse on sliced data).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict

import numpy as np
import torch

from .budget import check_pretrain
from .checkpoint import PretrainedModel, Prior
from .config import ModelConfig, PretrainConfig
from .data import Corruption, Shape, near_surface_points, random_corruption, random_vertebra, simulate_observation
from .distributed import DistContext, TrainingNet, local_batch_size, mean_over_ranks, shard_indices, train_step, wrap
from .ensemble import EnsembleDecoder
from .errors import InputError, setting
from .ewc import diagonal_fisher
from .frame import make_case
from .model import VoxelEncoder, sample_features
from .progress import CancelFlag, Progress, check_cancel, relay

SLICING_ATTEMPTS = 50  # random slicings tried before a shape is declared too small to train on


def random_training_corruption(rng: np.random.Generator, config: PretrainConfig) -> Corruption:
    corruption = random_corruption(
        rng,
        slice_factors=config.slice_factors,
        erosion_prob=0.25,
        noise_prob=0.25,
        missing_prob=0.1,
        slice_axes=config.slice_axes,
    )
    in_plane = float(rng.uniform(*config.in_plane_mm))
    return Corruption(**{**asdict(corruption), "in_plane_mm": in_plane})


def make_training_sample(
    shape: Shape, rng: np.random.Generator, model_config: ModelConfig, config: PretrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(encoder input [2,G,G,G], decoder inputs at query points [P, 3 + k], exact occupancy [P]).

    A random slicing that keeps no foreground voxel (a small or partial mask seen through thick
    slices) is drawn again, up to ``SLICING_ATTEMPTS`` times.
    """
    for _ in range(SLICING_ATTEMPTS):
        observation = simulate_observation(shape, random_training_corruption(rng, config), rng)
        if np.asarray(observation.data).any():
            break
    else:
        name = getattr(shape, "name", None) or type(shape).__name__
        raise InputError(
            f"{name}: none of {SLICING_ATTEMPTS} random thick-slice observations of this shape kept a foreground "
            "voxel; it is too small for the slice spacings asked for (remove it or lower the slice factors)"
        )
    case = make_case(observation, model_config)
    n_uniform = config.points_per_sample // 2
    uniform = rng.uniform(-0.5, 0.5, size=(n_uniform, 3))
    sigma_mm = config.surface_sigma * case.frame.scale_mm
    surface = case.frame.to_normalised(near_surface_points(shape, config.points_per_sample - n_uniform, sigma_mm, rng))
    points = np.clip(np.concatenate([uniform, surface]), -0.5, 0.5)
    labels = shape.occupancy(case.frame.to_world(points)).astype(np.float32)
    return case.encoder_input, case.point_inputs(points), labels


_POOL_SHAPES: Sequence[Shape] | None = None  # the training shapes, set in every pool worker by _init_pool
POOL_MIN_TASKS = 64  # fewer samples are made in this process: starting worker processes would cost more


def _init_pool(shapes: Sequence[Shape] | None) -> None:
    global _POOL_SHAPES
    _POOL_SHAPES = shapes


def _pool_sample(task: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index, seed, pool, model_config, config = task
    rng = np.random.default_rng([seed, index])
    shape = shape_source(_POOL_SHAPES, pool, seed, config.procedural_share)(rng)
    grid, points, labels = make_training_sample(shape, rng, model_config, config)
    return grid.astype(np.float16), points, labels.astype(np.uint8)


def build_training_pool(
    model_config: ModelConfig,
    config: PretrainConfig,
    *,
    shapes: Sequence[Shape] | None = None,
    workers: int = 0,
    cancel: CancelFlag | None = None,
    indices: Sequence[int] | None = None,
) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Make the training samples up front (deterministic per index, parallel): ``indices`` (default all)."""
    _init_pool(shapes)  # samples made in this process read them too
    indices = range(config.samples) if indices is None else indices
    tasks = [(i, config.seed, config.shapes, model_config, config) for i in indices]
    workers = workers or min(2, os.cpu_count() or 1)
    results = []
    if workers > 1 and len(tasks) >= POOL_MIN_TASKS:
        # Workers start from a clean server process, never forked from this one: a fork of a process
        # that runs threads (torch's, Qt's) can inherit a held lock and hang (seen in CI).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with context.Pool(workers, initializer=_init_pool, initargs=(shapes,)) as pool:
            for i, item in enumerate(pool.imap(_pool_sample, tasks, chunksize=8)):
                results.append(item)
                if (i + 1) % 32 == 0 or i + 1 == len(tasks):
                    check_cancel(cancel)
                    yield Progress("data", i + 1, len(tasks), message="making training samples")
    else:
        for i, task in enumerate(tasks):
            check_cancel(cancel)
            results.append(_pool_sample(task))
            yield Progress("data", i + 1, len(tasks), message="making training samples")
    grids, points, labels = zip(*results, strict=True)
    return torch.from_numpy(np.stack(grids)), torch.from_numpy(np.stack(points)), torch.from_numpy(np.stack(labels))


def shapes_from_folder(folder: str | os.PathLike) -> list[Shape]:
    """Every volume file of a folder of dense masks as a training shape (all labels merged)."""
    from pathlib import Path

    from .data import MaskShape
    from .io import all_volume_suffixes, binary_mask_from_volume, is_volume_path, read_volume

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the training data must be a folder of dense mask volumes, got {folder}")
    files = sorted(p for p in folder.iterdir() if is_volume_path(p))
    if not files:
        raise InputError(f"no volume files ({', '.join(all_volume_suffixes())}) in {folder}")
    shapes = []
    for path in files:
        try:
            shape = MaskShape(binary_mask_from_volume(read_volume(path), label="all"))
        except InputError as error:
            raise InputError(f"{path.name}: {error} (fix or remove this file from {folder})") from None
        shape.name = path.name
        shapes.append(shape)
    return shapes


def shape_source(
    shapes: Sequence[Shape] | None, pool: int, seed: int, procedural_share: float = 0.0
) -> Callable[[np.random.Generator], Shape]:
    """Draw training shapes: from given shapes (mixed with a ``procedural_share`` of fresh vertebrae),
    a fixed procedural pool, or fresh vertebrae."""
    if shapes:
        items = list(shapes)

        def draw(rng: np.random.Generator) -> Shape:
            if procedural_share > 0 and rng.random() < procedural_share:
                return random_vertebra(rng)
            return items[int(rng.integers(len(items)))]

        return draw
    if pool > 0:
        fixed = [random_vertebra(np.random.default_rng([seed, i])) for i in range(pool)]
        return lambda rng: fixed[int(rng.integers(len(fixed)))]
    return lambda rng: random_vertebra(rng)


def _start_from(encoder: VoxelEncoder, decoder: EnsembleDecoder, init: PretrainedModel) -> None:
    """Copy a trained network's weights into freshly built ones (shapes checked by torch)."""
    encoder.load_state_dict(init.encoder.state_dict())
    with torch.no_grad():
        for name, parameter in decoder.parameter_dict().items():
            parameter.copy_(init.decoder[name].to(parameter.device))


def check_init_prior(model_config: ModelConfig, init: Prior) -> None:
    """A prior to start from must have the architecture being trained (one line naming the difference)."""
    mine, theirs = asdict(model_config), asdict(init.config)
    differ = [f"{k} {theirs[k]} (asked {mine[k]})" for k in mine if k != "dropout" and mine[k] != theirs.get(k)]
    if differ:
        raise InputError(
            f"{init.name} has another architecture: {', '.join(differ)}; start from a prior of the same "
            "architecture or drop the starting prior"
        )


def pretrain_model_steps(
    model_config: ModelConfig,
    config: PretrainConfig,
    *,
    shapes: Sequence[Shape] | None = None,
    device: torch.device | str = "cpu",
    workers: int = 0,
    cancel: CancelFlag | None = None,
    dist: DistContext = DistContext(),
    init: PretrainedModel | None = None,
) -> Generator[Progress, None, PretrainedModel]:
    """Train one network with dropout; yields Progress; returns it with its Fisher.

    ``init``: start from this trained network's weights (fine-tune a prior on new shapes) instead
    of a random initialisation; its architecture must be ``model_config``'s.
    Under torchrun (``dist``, core/distributed) each rank makes and trains on its shard of the
    samples with ``batch_size / world_size`` of them a step; DDP averages the gradients.
    """
    if not 0 < model_config.dropout < 1:
        raise InputError(f"dropout rate must be in (0, 1), got {model_config.dropout}")
    if config.steps < 1:
        raise InputError(f"steps must be positive, got {config.steps}")
    check_pretrain(
        grid_size=model_config.grid_size,
        encoder_channels=model_config.encoder_channels,
        feature_channels=model_config.feature_channels,
        hidden=model_config.hidden,
        blocks=model_config.blocks,
        batch_size=config.batch_size,
        samples=config.samples,
        points_per_sample=config.points_per_sample,
    )
    device = torch.device(device)
    torch.manual_seed(config.seed)
    encoder = VoxelEncoder(model_config).to(device)
    decoder = EnsembleDecoder(model_config, 1, torch.Generator().manual_seed(config.seed)).to(device)
    if init is not None:
        _start_from(encoder, decoder, init)
    net = wrap(TrainingNet(encoder, decoder), dist, device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    batch_size = local_batch_size(config.batch_size, dist)
    warmup = max(1, min(100, config.steps // 20))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: min(1.0, (i + 1) / warmup) * (0.55 + 0.45 * np.cos(np.pi * min(i / config.steps, 1.0)))
    )
    pool_grids, pool_points, pool_labels = yield from build_training_pool(
        model_config, config, shapes=shapes, workers=workers, cancel=cancel,
        indices=shard_indices(config.samples, dist),
    )
    gen = torch.Generator().manual_seed(config.seed + 7919 * dist.rank)
    n_pool, n_points = pool_points.shape[0], pool_points.shape[1]
    half = n_points // 2
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        check_cancel(cancel)
        batch = torch.randint(n_pool, (batch_size,), generator=gen)
        pick = torch.randint(n_points, (batch_size, half), generator=gen)
        grids = pool_grids[batch].float().to(device)
        points = torch.gather(pool_points[batch], 1, pick[..., None].expand(-1, -1, pool_points.shape[-1])).to(device)
        labels = torch.gather(pool_labels[batch], 1, pick).float().to(device)
        loss, logits = train_step(net, optimiser, grids, points, labels, model_config.dropout)
        schedule.step()
        with torch.no_grad():
            accuracy = ((logits > 0) == (labels > 0.5)).float().mean().item()
        step_loss = mean_over_ranks(float(loss.item()), dist)  # the same on every rank: all stop together
        if not np.isfinite(step_loss):
            raise InputError(
                f"pretraining diverged: the loss became {step_loss} at step {step} of {config.steps}; "
                f"nothing was saved; lower the learning rate ({setting('lr')}, now {config.lr:g})"
            )
        yield Progress(
            "pretrain",
            step,
            config.steps,
            step_loss,
            extra={"accuracy": accuracy, "elapsed_s": time.perf_counter() - started},
        )
    encoder.eval()
    fisher_batches = []
    with torch.no_grad():
        for i in range(min(config.fisher_samples, n_pool)):
            index = n_pool - 1 - i
            grid = pool_grids[index : index + 1].float().to(device)
            feats = sample_features(encoder(grid), pool_points[index : index + 1].to(device))
            fisher_batches.append((pool_points[index, ::4].to(device), feats[0, ::4]))
    yield Progress("fisher", 1, 1)
    decoder.eval()
    fisher = diagonal_fisher(decoder, fisher_batches)
    state = {name: p.detach().cpu().clone() for name, p in decoder.parameter_dict().items()}
    return PretrainedModel(encoder=encoder.cpu(), decoder=state, fisher={k: v.cpu() for k, v in fisher.items()})


def pretrain_steps(
    model_config: ModelConfig,
    config: PretrainConfig,
    *,
    models: int = 1,
    shapes: Sequence[Shape] | None = None,
    device: torch.device | str = "cpu",
    workers: int = 0,
    cancel: CancelFlag | None = None,
    dist: DistContext = DistContext(),
    init: Prior | None = None,
) -> Generator[Progress, None, Prior]:
    """Pretrain ``models`` independent networks (seeds seed, seed+1, ...): a prior for any method.

    ``init``: fine-tune from this prior's networks (model ``i`` starts from its model ``i`` modulo
    its count) instead of random weights.
    """
    if models < 1:
        raise InputError(f"models must be at least 1, got {models}")
    if init is not None:
        check_init_prior(model_config, init)
    started = time.perf_counter()
    trained = []
    for i in range(models):
        run = pretrain_model_steps(
            model_config,
            PretrainConfig(**{**asdict(config), "seed": config.seed + i}),
            shapes=shapes,
            device=device,
            workers=workers,
            cancel=cancel,
            dist=dist,
            init=None if init is None else init.models[i % len(init.models)],
        )

        def tag(progress: Progress, i: int = i) -> None:
            progress.extra["model"] = i
            progress.message = f"model {i + 1}/{models}"

        trained.append((yield from relay(run, tag)))
    training = {
        "data": "procedural lumbar vertebrae" if not shapes else f"{len(shapes)} dense masks",
        "pretrain": asdict(config),
        "models": models,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "device": str(device),
        "processes": dist.world_size,
    }
    if init is not None:
        training["started_from"] = init.name
    return Prior(config=model_config, models=trained, training=training)
