"""Fine-tuning M decoders at once on one case (encoder frozen, features precomputed).

All members see the same mini-batch sequence; they stay independent: separate parameters,
separate Adam moments (element-wise), separate masks, and the loss is a sum of per-member losses.
A held-out share of the observed voxels selects each member's best step (early stopping).
"""

from __future__ import annotations

from collections.abc import Generator

import torch
from torch.nn import functional as F

from ..config.configs import FinetuneConfig
from ..config.progress import CancelFlag, Progress, check_cancel
from ..networks.chunking import choose_chunk
from ..networks.ensemble import DECODER_PARAMS, EnsembleDecoder
from ..networks.ewc import ewc_penalty


def _features(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a shared [N, C] or per-member [M, N, C] feature table."""
    return table[index] if table.dim() == 2 else table[:, index]


def _labels(labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Entries of shared [N] or per-member [M, N] labels."""
    return labels[index] if labels.dim() == 1 else labels[:, index]


def _member_bce(decoder: EnsembleDecoder, points, features, labels, dropout: float = 0.0) -> torch.Tensor:
    logits = decoder(points, features, random_dropout=dropout)
    target = labels.expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)


def finetune_steps(
    decoder: EnsembleDecoder,
    features: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor,
    config: FinetuneConfig,
    *,
    anchor: dict[str, torch.Tensor] | None = None,
    fisher: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, dict]:
    """Train ``decoder`` in place; yields Progress each step, returns a history dict.

    ``features`` is [N, C] or [M, N, C]; ``labels`` is [N] (all members) or [M, N] (per member).
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = points.shape[0]
    order = torch.randperm(n, generator=gen)
    n_hold = int(n * config.holdout) if config.holdout > 0 and n >= 50 else 0
    hold, train = order[:n_hold].to(points.device), order[n_hold:].to(points.device)
    train_cpu = train.cpu()
    fg = train_cpu[labels.cpu().reshape(-1, n).amax(0)[train_cpu] > 0.5]
    use_ewc = config.ewc_lambda > 0 and anchor is not None and fisher is not None
    optimiser = torch.optim.Adam(decoder.parameters(), lr=config.lr)
    history: dict = {"loss": [], "holdout": [], "best_step": [0] * decoder.members}
    best = torch.full((decoder.members,), float("inf"))
    best_state = {name: p.detach().clone() for name, p in decoder.parameter_dict().items()}

    chunk = choose_chunk(points.device, decoder.members, decoder.config.hidden)  # held-out points per call

    def evaluate(step: int) -> None:
        if n_hold == 0:
            return
        with torch.no_grad():
            losses = []
            for start in range(0, n_hold, chunk):
                idx = hold[start : start + chunk]
                losses.append(
                    _member_bce(decoder, points[idx], _features(features, idx), _labels(labels, idx)) * idx.numel()
                )
            loss = (torch.stack(losses).sum(0) / n_hold).cpu()
        history["holdout"].append([step, loss.tolist()])
        improved = loss < best
        if improved.any():
            best[improved] = loss[improved]
            for name, p in decoder.parameter_dict().items():
                best_state[name][improved] = p.detach()[improved.to(p.device)]
            for m in torch.nonzero(improved).flatten().tolist():
                history["best_step"][m] = step

    evaluate(0)
    for step in range(1, config.steps + 1):
        check_cancel(cancel)
        batch = min(config.points_per_step, train_cpu.numel())
        n_fg = int(batch * config.balance) if fg.numel() else 0
        pick = train_cpu[torch.randint(train_cpu.numel(), (batch - n_fg,), generator=gen)]
        if n_fg:
            pick = torch.cat([pick, fg[torch.randint(fg.numel(), (n_fg,), generator=gen)]])
        idx = pick.to(points.device)
        bce = _member_bce(decoder, points[idx], _features(features, idx), _labels(labels, idx), config.random_dropout)
        loss = bce
        if use_ewc:
            loss = bce + config.ewc_lambda * ewc_penalty(decoder, anchor, fisher)
        optimiser.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimiser.step()
        member_losses = bce.detach().cpu().tolist()
        history["loss"].append(member_losses)
        if step % config.eval_every == 0 or step == config.steps:
            evaluate(step)
        yield Progress("finetune", step, config.steps, float(sum(member_losses) / len(member_losses)), member_losses)
    if n_hold:
        with torch.no_grad():
            for name in DECODER_PARAMS:
                getattr(decoder, name).copy_(best_state[name])
    history["best_holdout"] = best.tolist()
    history["holdout_points"] = n_hold
    history["train_points"] = int(train_cpu.numel())
    return history
