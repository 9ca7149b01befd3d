"""Pretraining on dataset A (procedural vertebrae or dense masks), then the EWC Fisher.

Each sample is made exactly as a case is at reconstruction time (:func:`make_case` on a
simulated, randomly sliced and corrupted observation), so the prior learns to complete sparse
inputs (DESIGN section 7: priors trained on dense inputs collapse on sliced data).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..config.budget import check_pretrain
from ..config.configs import ModelConfig, PretrainConfig
from ..config.errors import InputError, setting
from ..config.progress import CancelFlag, Progress, check_cancel, relay
from ..data import (
    AugmentedShape,
    Corruption,
    MaskShape,
    Shape,
    near_surface_points,
    random_corruption,
    random_vertebra,
    simulate_observation,
)
from ..io.volumes import all_volume_suffixes, is_volume_path, read_volume
from ..networks.checkpoint import PretrainedModel, Prior
from ..networks.ensemble import EnsembleDecoder
from ..networks.ewc import diagonal_fisher
from ..networks.model import VoxelEncoder, sample_features
from ..slices.unusual_shape import DESCRIPTORS, ShapeReference, shape_descriptors
from ..volumes.masks import binary_mask_from_volume
from .case import make_case
from .distributed import DistContext, TrainingNet, local_batch_size, mean_over_ranks, shard_indices, train_step, wrap
from .sample_stream import BatchSchedule, Sample, SampleStream

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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(encoder input [2,G,G,G], decoder inputs at query points [P, 3 + k], occupancy [P], the observation's
    shape descriptors [D] (NaN when it has none; core/slices/unusual_shape)).

    A random slicing that keeps no foreground voxel (a small or partial mask seen through thick
    slices) is drawn again, up to ``SLICING_ATTEMPTS`` times. A mask that is itself thick-sliced is
    queried only on its own slice planes (``snap_to_observed``): its labels are known nowhere else.
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
    world = case.frame.to_world(points)
    snap = getattr(shape, "snap_to_observed", None)
    if snap is not None:
        world = snap(world)
        points = case.frame.to_normalised(world)
    labels = shape.occupancy(world).astype(np.float32)
    descriptors = shape_descriptors(observation)
    descriptors = np.full(len(DESCRIPTORS), np.nan) if descriptors is None else descriptors
    return case.encoder_input, case.point_inputs(points), labels, descriptors


_POOL_SHAPES: Sequence[Shape] | None = None  # the training shapes, set in every sample worker by _init_pool
SCHEDULE_SEED = 1  # the batch schedule's own random stream (beside the sample index and the point picks)


def _init_pool(shapes: Sequence[Shape] | None) -> None:
    global _POOL_SHAPES
    _POOL_SHAPES = shapes


def _pool_sample(index: int, seed: int, pool: int, model_config: ModelConfig, config: PretrainConfig) -> Sample:
    """Training sample ``index`` of a run: the same wherever and whenever it is made."""
    rng = np.random.default_rng([seed, index])
    shape = shape_source(_POOL_SHAPES, pool, seed, config.procedural_share, config.augment)(rng)
    grid, points, labels, descriptors = make_training_sample(shape, rng, model_config, config)
    return grid.astype(np.float16), points, labels.astype(np.uint8), descriptors


def training_stream(
    model_config: ModelConfig,
    config: PretrainConfig,
    *,
    shapes: Sequence[Shape] | None = None,
    workers: int = 0,
    dist: DistContext = DistContext(),
) -> SampleStream:
    """The samples this rank trains on, made as training first needs them (core/fitting/sample_stream):
    its shard of ``config.samples``, each step's ``batch_size / world_size`` of them drawn from seed and rank."""
    _init_pool(shapes)  # samples made in this process read them too
    shard = shard_indices(config.samples, dist)
    schedule = BatchSchedule(
        len(shard),
        local_batch_size(config.batch_size, dist),
        config.steps,
        seed=[config.seed, dist.rank, SCHEDULE_SEED],
    )
    return SampleStream(
        _pool_sample,
        lambda position: (shard[position], config.seed, config.shapes, model_config, config),
        schedule,
        workers=workers,
        initializer=_init_pool,
        initargs=(shapes,),
    )


def shapes_from_folder(folder: str | os.PathLike) -> list[Shape]:
    """Every volume file of a folder of dense masks as a training shape (all labels merged)."""
    return training_shapes([folder])


def training_shapes(paths: Sequence[str | os.PathLike]) -> list[Shape]:
    """Training shapes from mask files and folders of them (every volume file of a folder; all labels of a
    file merged). A mask with thick slices is trained on where it was drawn only (MaskShape.snap_to_observed)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if is_volume_path(p))
            if not found:
                raise InputError(f"no volume files ({', '.join(all_volume_suffixes())}) in {path}")
            files += found
        elif path.is_file() and is_volume_path(path):
            files.append(path)
        else:
            raise InputError(f"the training data must be mask volumes or folders of them, got {path}")
    shapes = []
    for path in files:
        try:
            shape = MaskShape(binary_mask_from_volume(read_volume(path), label="all"))
        except InputError as error:
            raise InputError(f"{path.name}: {error} (fix or remove this file from {path.parent})") from None
        shape.name = path.name
        shapes.append(shape)
    return shapes


def shape_source(
    shapes: Sequence[Shape] | None, pool: int, seed: int, procedural_share: float = 0.0, augment: bool = False
) -> Callable[[np.random.Generator], Shape]:
    """Draw training shapes: from given shapes (mixed with a ``procedural_share`` of fresh vertebrae; with
    ``augment``, mask shapes mirrored left-right half of the time and scaled by 0.9-1.1), a fixed procedural
    pool, or fresh vertebrae."""
    if shapes:
        items = list(shapes)

        def draw(rng: np.random.Generator) -> Shape:
            if procedural_share > 0 and rng.random() < procedural_share:
                return random_vertebra(rng)
            shape = items[int(rng.integers(len(items)))]
            if augment and isinstance(shape, MaskShape):
                return AugmentedShape(shape, mirror=bool(rng.random() < 0.5), scale=float(rng.uniform(0.9, 1.1)))
            return shape

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
) -> Generator[Progress, None, tuple[PretrainedModel, np.ndarray]]:
    """Train one network with dropout; yields Progress; returns it with its Fisher, and the shape descriptors
    of the observations it trained on ([samples, D], core/slices/unusual_shape).

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
    gen = torch.Generator().manual_seed(config.seed + 7919 * dist.rank)
    n_points = config.points_per_sample
    half = n_points // 2
    started = time.perf_counter()
    with training_stream(model_config, config, shapes=shapes, workers=workers, dist=dist) as stream:
        for step in range(1, config.steps + 1):
            check_cancel(cancel)
            waiting = stream.wait_for(step, cancel)
            if step == 1:
                yield from waiting  # the bar moves while the first batch is made
            else:
                for _ in waiting:
                    pass
            pool_grids, pool_points, pool_labels, _ = stream.batch(step)
            pick = torch.randint(n_points, (batch_size, half), generator=gen)
            grids = pool_grids.float().to(device)
            points = torch.gather(pool_points, 1, pick[..., None].expand(-1, -1, pool_points.shape[-1])).to(device)
            labels = torch.gather(pool_labels, 1, pick).float().to(device)
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
            elapsed = time.perf_counter() - started
            yield Progress(
                "pretrain",
                step,
                config.steps,
                step_loss,
                extra={"accuracy": accuracy, "elapsed_s": elapsed, "samples_made": len(stream.samples)},
            )
    made = len(stream.samples)  # the samples this run needed, the same on every run with this seed
    encoder.eval()
    fisher_batches = []
    with torch.no_grad():
        for row in range(made - 1, made - 1 - min(config.fisher_samples, made), -1):  # the last ones made
            grid, sample_points, _, _ = stream.stack([row])
            feats = sample_features(encoder(grid.float().to(device)), sample_points.to(device))
            fisher_batches.append((sample_points[0, ::4].to(device), feats[0, ::4]))
    yield Progress("fisher", 1, 1)
    decoder.eval()
    fisher = diagonal_fisher(decoder, fisher_batches)
    state = {name: p.detach().cpu().clone() for name, p in decoder.parameter_dict().items()}
    model = PretrainedModel(encoder=encoder.cpu(), decoder=state, fisher={k: v.cpu() for k, v in fisher.items()})
    return model, np.stack([sample[3] for sample in stream.samples])


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
    trained, descriptors = [], []
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

        model, seen = yield from relay(run, tag)
        trained.append(model)
        descriptors.append(seen)
    training = {
        "data": "procedural lumbar vertebrae" if not shapes else _describe_masks(shapes),
        "pretrain": asdict(config),
        "models": models,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "device": str(device),
        "processes": dist.world_size,
    }
    if init is not None:
        training["started_from"] = init.name
    reference = shape_reference_from(descriptors, shapes)
    return Prior(config=model_config, models=trained, training=training, shape_reference=reference)


def _describe_masks(shapes: Sequence[Shape]) -> str:
    thick = sum(getattr(shape, "observed_axis", None) is not None for shape in shapes)
    return (
        f"{len(shapes)} masks ({thick} with thick slices, trained where they were drawn)"
        if thick
        else (f"{len(shapes)} dense masks")
    )


def shape_reference_from(descriptors: list[np.ndarray], shapes: Sequence[Shape] | None) -> ShapeReference | None:
    """The unusual-shape reference of the observations a prior trained on (descriptor arrays [N, D] of
    :func:`make_training_sample`; None: too few to describe)."""
    vectors = [v for v in np.concatenate(descriptors) if np.isfinite(v).all()]
    source = "procedural vertebrae" if not shapes else f"{len(shapes)} mask shapes"
    try:
        return ShapeReference.fit(vectors, {"observations": len(vectors), "shapes": source})
    except ValueError:
        return None
