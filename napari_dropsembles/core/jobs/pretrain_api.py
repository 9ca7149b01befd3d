"""The pretrain job, one call from a request to its output: train a prior and write its checkpoint.

Under ``torchrun`` each process is one rank of a DDP run (core/fitting/distributed) and the first
rank writes the one checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config.configs import ModelConfig, PretrainConfig
from ..config.progress import CancelFlag, Progress, check_cancel, drive, relay
from ..fitting.distributed import init_distributed, shutdown
from ..fitting.pretrain import pretrain_steps, training_shapes
from ..io.atomic import ensure_writable_dir
from ..io.output_paths import check_output_path
from ..networks.checkpoint import Prior, save_prior
from .inputs import PathLike, load_prior_file

BUNDLED = "bundled"  # ``init``: the bundled prior


@dataclass(frozen=True, eq=False)
class PretrainRequest:
    out: PathLike  # the checkpoint (.safetensors)
    model_config: ModelConfig = field(default_factory=ModelConfig)  # ignored with ``init`` (its own is kept)
    config: PretrainConfig = field(default_factory=PretrainConfig)
    models: int = 1  # independent networks (a deep-ensemble prior)
    data: PathLike | Sequence[PathLike] | None = None  # masks and folders of them (None: procedural vertebrae)
    init: Prior | PathLike | None = None  # fine-tune this prior ("bundled": the bundled one) instead of starting afresh
    device: str = "auto"
    workers: int = 0  # training-sample worker processes (0: chosen for the machine; 1: none)
    provenance: Mapping[str, str] = field(default_factory=dict)  # added to the checkpoint's training record


@dataclass(eq=False)
class PretrainOutput:
    prior: Prior
    path: Path | None  # None on the ranks of a DDP run that do not write
    device: str


def pretrain_job_steps(
    request: PretrainRequest, cancel: CancelFlag | None = None
) -> Generator[Progress, None, PretrainOutput]:
    """Run the job; yields Progress (``extra["overall"]``: the share of the whole run done)."""
    init = request.init
    if init is not None and not isinstance(init, Prior):
        init = load_prior_file(None if str(init) == BUNDLED else init)
    data = request.data
    data = [] if data is None else [data] if isinstance(data, (str, os.PathLike)) else list(data)
    inputs = {f"--data {i + 1}": Path(path) for i, path in enumerate(data)}
    if init is not None and init.path is not None:
        inputs["--init prior"] = init.path
    out = check_output_path(Path(os.fspath(request.out)).expanduser(), suffix=".safetensors", inputs=inputs)
    ensure_writable_dir(out.parent)
    yield Progress("prepare", 0, 1, message="preparing the training data")
    shapes = training_shapes(data) if data else None
    model_config = init.config if init is not None else request.model_config
    dist, device = init_distributed(request.device)  # under torchrun: one rank of a DDP run
    steps = pretrain_steps(
        model_config,
        request.config,
        models=request.models,
        shapes=shapes,
        device=device,
        workers=request.workers,
        cancel=cancel,
        dist=dist,
        init=init,
    )
    try:
        prior = yield from relay(steps, _overall(request.models))
    finally:
        shutdown()
    check_cancel(cancel)
    if not dist.is_main:
        return PretrainOutput(prior, None, str(device))  # the first rank writes the one checkpoint
    prior.training.update(request.provenance)
    save_prior(prior, out)
    return PretrainOutput(prior, out, str(device))


# share of one network's run; "data": the first batch (the rest is made while training runs)
PHASES = {"data": (0.0, 0.02), "pretrain": (0.02, 0.97), "fisher": (0.97, 1.0)}


def _overall(models: int) -> Callable[[Progress], None]:
    def overall(progress: Progress) -> None:
        lo, hi = PHASES.get(progress.phase, (0.0, 1.0))
        within = lo + (hi - lo) * min(progress.fraction, 1.0)
        progress.extra["overall"] = (progress.extra.get("model", 0) + within) / models

    return overall


def run_pretrain(
    request: PretrainRequest,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> PretrainOutput:
    """Run :func:`pretrain_job_steps` to the end."""
    return drive(pretrain_job_steps(request, cancel), on_progress)
