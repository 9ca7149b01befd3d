"""Memory estimates checked before anything big is allocated.

A request (an input volume, an output grid, an ensemble, a pretraining run, a synthetic case) is
sized from its shapes alone, before the arrays exist; when the estimate passes the limit the
request is refused with one line giving the estimate, the limit and the option to change.

The limit is, in order: :func:`set_memory_limit` (the CLI's ``--memory-limit GB``), the environment
variable ``DROPSEMBLES_MEMORY_LIMIT_GB``, else 80% of the machine's physical memory.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

from .errors import InputError, setting

ENV_VAR = "DROPSEMBLES_MEMORY_LIMIT_GB"
LIMIT_HINT = f"raise the limit with {setting('memory_limit', 'GB')} (or the environment variable {ENV_VAR})"
_DEFAULT_SHARE = 0.8
_FALLBACK_BYTES = 8 * 1024**3
_override_bytes: int | None = None
VOXELS_ENV_VAR = "DROPSEMBLES_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 512**3
_max_voxels_override: int | None = None
TYPICAL_CHUNK = 16384  # points per network call when the device chooses (core/chunking keeps it near this)


def _parse_gb(value: object, source: str) -> int:
    try:
        gb = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{source} must be a number of GB, got {value!r}") from None
    if not math.isfinite(gb) or gb <= 0:
        raise InputError(f"{source} must be a positive, finite number of GB, got {value!r}")
    return int(gb * 1e9)


def set_memory_limit(gb: float | None) -> None:
    """Set the limit for this process (None: back to the environment variable or the default)."""
    global _override_bytes
    _override_bytes = None if gb is None else _parse_gb(gb, "the memory limit")


@contextlib.contextmanager
def memory_limit(gb: float | None) -> Iterator[None]:
    """Use ``gb`` as the limit inside the block (None: leave it as it is)."""
    global _override_bytes
    previous = _override_bytes
    if gb is not None:
        set_memory_limit(gb)
    try:
        yield
    finally:
        _override_bytes = previous


def max_output_voxels() -> int:
    """The largest output grid a reconstruction may ask for (voxels); ``DROPSEMBLES_MAX_VOXELS`` or 512^3."""
    if _max_voxels_override is not None:
        return _max_voxels_override
    env = os.environ.get(VOXELS_ENV_VAR, "").strip()
    if not env:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(env))
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise InputError(f"{VOXELS_ENV_VAR} must be a positive number of voxels, got {env!r}")
    return value


@contextlib.contextmanager
def output_voxel_limit(voxels: int | None) -> Iterator[None]:
    """Use ``voxels`` as the output grid limit inside the block (None: leave it as it is)."""
    global _max_voxels_override
    previous = _max_voxels_override
    if voxels is not None:
        if int(voxels) < 1:
            raise InputError(f"the output voxel limit must be positive, got {voxels}")
        _max_voxels_override = int(voxels)
    try:
        yield
    finally:
        _max_voxels_override = previous


def check_output_voxels(shape: Sequence[int], spacing_mm: float | None = None) -> None:
    """Refuse an output grid with more voxels than the limit (the time to query and write it grows with
    them: about a minute per 10^8 voxels on a CPU), naming a spacing that would fit."""
    voxels = _voxels(shape)
    limit = max_output_voxels()
    if voxels <= limit:
        return
    dims = "x".join(str(int(s)) for s in shape)
    fit = ""
    if spacing_mm:
        fit = f" (e.g. {setting('resolution_mm', f'{spacing_mm * (voxels / limit) ** (1 / 3) * 1.01:.3g}')})"
    raise InputError(
        f"an output grid of {dims} = {voxels:.3g} voxels is more than the limit of {limit:.3g} "
        f"(it would take long to compute and write); use a coarser output voxel size{fit}, or raise the limit "
        f"with {setting('max_voxels', 'N')} (or the environment variable {VOXELS_ENV_VAR})"
    )


def physical_memory_bytes() -> int:
    """Total physical memory of the machine (a fallback of 8 GiB when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_BYTES


def memory_limit_bytes() -> int:
    """The limit in bytes that every estimate is checked against."""
    if _override_bytes is not None:
        return _override_bytes
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _parse_gb(env, ENV_VAR)
    return int(physical_memory_bytes() * _DEFAULT_SHARE)


def format_bytes(n: float) -> str:
    if n >= 1e15:
        return f"{n / 1e12:.2g} TB"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_memory(what: str, estimate_bytes: float, change: str) -> None:
    """Raise InputError when ``estimate_bytes`` passes the limit.

    ``what`` names the request (with its sizes); ``change`` says which option makes it smaller.
    """
    limit = memory_limit_bytes()
    if not math.isfinite(estimate_bytes) or estimate_bytes > limit:
        shown = format_bytes(estimate_bytes) if math.isfinite(estimate_bytes) else "an unbounded amount"
        raise InputError(
            f"{what} needs about {shown} of memory, more than the limit of {format_bytes(limit)}; "
            f"{change}, or {LIMIT_HINT}"
        )


def _voxels(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


# --------------------------------------------------------------------------- estimates


def volume_bytes(shape: Sequence[int], itemsize: int) -> int:
    """An array of ``shape`` as read, plus the float copies the readers and masks make (x2 + 8 B)."""
    return _voxels(shape) * (2 * int(itemsize) + 8)


def check_volume(shape: Sequence[int], itemsize: int, name: str) -> None:
    """Refuse to read a volume whose array would not fit (checked from the file's header)."""
    dims = "x".join(str(int(s)) for s in shape)
    check_memory(f"{name} ({dims} voxels)", volume_bytes(shape, itemsize), "crop or downsample the volume")


def decoder_parameters(hidden: int, blocks: int, feature_channels: int = 32, point_inputs: int = 4) -> int:
    """Parameters of one decoder member (ResNet-FC blocks of width ``hidden``)."""
    h, k = int(hidden), int(blocks)
    return point_inputs * h + h + k * (2 * h * h + 2 * h + feature_channels * h + h) + h + 1


def finetune_bytes(members: int, hidden: int, blocks: int, points_per_step: int, feature_channels: int = 32) -> int:
    """Fine-tuning working set: members x (parameters x 6: value, grad, 2 Adam moments, anchor, Fisher)
    plus activations kept for backward (about 4 per block) of ``points_per_step`` points."""
    params = decoder_parameters(hidden, blocks, feature_channels) * 6 * 4
    activations = int(points_per_step) * int(hidden) * (4 * int(blocks) + 4) * 4
    return int(members) * (params + activations)


def grid_bytes(shape: Sequence[int], members: int, keep_members: bool, chunk: int, hidden: int) -> int:
    """Prediction: four float32 maps over the grid, optional float16 member maps, one chunk's activations."""
    voxels = _voxels(shape)
    maps = voxels * 4 * 4 + voxels * 4  # the maps, plus a float copy made on write
    member_maps = voxels * int(members) * 2 if keep_members else 0
    working = int(chunk) * int(members) * int(hidden) * 4 * 6
    return maps + member_maps + working


def check_grid(shape: Sequence[int], members: int, *, keep_members: bool, chunk: int, hidden: int) -> int:
    """Refuse an output grid whose maps would not fit (checked before they are allocated)."""
    dims = "x".join(str(int(s)) for s in shape)
    estimate = grid_bytes(shape, members, keep_members, chunk, hidden)
    check_memory(
        f"an output grid of {dims} voxels with {members} members",
        estimate,
        f"use a coarser output voxel size ({setting('resolution_mm', 'MM')})"
        + (f" or drop {setting('members_out')}" if keep_members else ""),
    )
    return estimate


def check_reconstruction(
    grid_shape: Sequence[int],
    *,
    members: int,
    hidden: int,
    blocks: int,
    points_per_step: int,
    keep_members: bool = False,
    chunk: int = TYPICAL_CHUNK,
    feature_channels: int = 32,
) -> int:
    """Refuse a reconstruction whose fine-tuning or output grid would not fit; return the estimate."""
    dims = "x".join(str(int(s)) for s in grid_shape)
    tune = finetune_bytes(members, hidden, blocks, points_per_step, feature_channels)
    check_memory(f"fine-tuning {members} members", tune, f"use fewer members ({setting('members')})")
    grid = grid_bytes(grid_shape, members, keep_members, chunk, hidden)
    check_memory(
        f"an output grid of {dims} voxels with {members} members",
        grid + tune,
        f"use a coarser output voxel size ({setting('resolution_mm', 'MM')})"
        + (f" or drop {setting('members_out')}" if keep_members else "")
        + f" or fewer members ({setting('members')})",
    )
    return grid + tune


def pretrain_bytes(
    *,
    grid_size: int,
    encoder_channels: Sequence[int],
    feature_channels: int,
    hidden: int,
    blocks: int,
    batch_size: int,
    samples: int,
    points_per_sample: int,
) -> int:
    """Pretraining: the sample pool, the encoder's activations per batch, the decoder's per point."""
    g3 = int(grid_size) ** 3
    pool = int(samples) * (2 * g3 * 2 + int(points_per_sample) * (4 * 4 + 1))
    channels = sum(int(c) for c in encoder_channels) * 2 + int(feature_channels)
    encoder = int(batch_size) * g3 * channels * 4 * 3  # forward activations, gradients, slack
    points = int(batch_size) * (int(points_per_sample) // 2)
    decoder = points * int(hidden) * (4 * int(blocks) + 4) * 4 + points * int(feature_channels) * 4 * 2
    params = decoder_parameters(hidden, blocks, feature_channels) * 4 * 4
    return pool + encoder + decoder + params


def check_pretrain(**sizes: int | Sequence[int]) -> int:
    """Refuse a pretraining run that would not fit (keywords of :func:`pretrain_bytes`)."""
    estimate = pretrain_bytes(**sizes)  # type: ignore[arg-type]
    check_memory(
        f"pretraining (grid {sizes['grid_size']}, hidden {sizes['hidden']}, batch {sizes['batch_size']}, "
        f"{sizes['samples']} samples)",
        estimate,
        f"lower {setting('hidden')}, {setting('batch_size')}, {setting('grid_size')} or {setting('samples')}",
    )
    return estimate


def encoder_bytes(grid_size: int, encoder_channels: Sequence[int], feature_channels: int) -> int:
    """One encoder forward pass (no gradients): its input and the activations alive at once."""
    g3 = int(grid_size) ** 3
    return g3 * 4 * (2 + 2 * sum(int(c) for c in encoder_channels) + int(feature_channels))
