"""The batched decoder's fast CPU formulation: a fused forward with a hand-written backward.

:class:`FastEnsembleDecoder` is the :class:`~.ensemble.EnsembleDecoder` with a ``formulation``
switch. ``"batched"`` is the stacked-weight ``baddbmm`` forward with autograd (used on CUDA, where
one kernel per layer for all members keeps M=4 near the cost of one member, and where autocast
applies op by op). ``"fused"`` (the CPU default) loops over members with in-place ``addmm_`` and a
hand-written backward (:class:`_FusedDecoder`): biases ride in the matmuls as an extra ones column,
every member's activations stay cache-sized, and the parameter gradients are written once instead
of through ``select`` backward. Both give the same values up to float32 rounding
(``tests/core/networks/test_fused_decoder.py``); the measured speed-ups are in docs/PERFORMANCE.md.

The decoder runs whatever number of points it is given: the caller chooses the chunk
(:func:`~.chunking.choose_chunk`, used by ``core/predict`` and ``core/finetune``).
"""

from __future__ import annotations

import threading

import torch

from ..config.configs import ModelConfig
from .ensemble import EnsembleDecoder

FORMULATIONS = ("batched", "fused")


def choose_formulation(device: torch.device | str) -> str:
    """``fused`` on the CPU (measured fastest, see docs/PERFORMANCE.md), ``batched`` elsewhere."""
    return "fused" if torch.device(device).type == "cpu" else "batched"


def _ones_column(x: torch.Tensor) -> torch.Tensor:
    """``x`` [..., N, D] -> [..., N, D + 1] with a last column of ones (biases ride in the matmul)."""
    out = x.new_empty((*x.shape[:-1], x.shape[-1] + 1))
    out[..., :-1] = x
    out[..., -1] = 1.0
    return out


def _augmented(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """weight [..., D, H] and bias [..., H] -> [..., D + 1, H]."""
    return torch.cat([weight, bias.unsqueeze(-2)], dim=-2).contiguous()


def _member(x: torch.Tensor, m: int) -> torch.Tensor:
    """Shared [N, D] or per-member [M, N, D] input of member ``m``."""
    return x if x.dim() == 2 else x[m]


class _Workspace:
    """Activation buffers reused from one training step to the next.

    Fresh multi-megabyte buffers every step cost page faults and zeroing (about a tenth of a step
    here). A buffer is reused only once the backward that needed it has run; if a second forward
    comes first, it gets new buffers. Autograd's version counters would also catch any reuse of a
    tensor still saved for backward (an error, never wrong gradients).
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.busy: set[int] = set()

    def take(self, like: torch.Tensor, shape: tuple[int, int, int, int], save: bool) -> tuple[torch.Tensor, ...]:
        """Buffers A, R [shape] and A_out [shape[0], N, H + 1], the last column already ones."""
        key = (shape, like.dtype, like.device, threading.get_ident())  # threads never share buffers
        found = self.buffers.get(key)
        if found is None or id(found[0]) in self.busy:
            found = (like.new_empty(shape), like.new_empty(shape), like.new_empty((shape[0],) + shape[2:]))
            for buffer in found:
                buffer[..., -1] = 1.0  # the ones column that carries the biases
            if len(self.buffers) >= 4:
                self.buffers.clear()
            self.buffers[key] = found
        if save:
            self.busy.add(id(found[0]))
        return found

    def scratch(self, like: torch.Tensor, shape: tuple[int, int], count: int) -> tuple[torch.Tensor, ...]:
        """``count`` temporaries of ``shape`` for use within one forward or backward call (this thread)."""
        key = ("scratch", shape, count, like.dtype, like.device, threading.get_ident())
        found = self.buffers.get(key)
        if found is None:
            found = tuple(like.new_empty(shape) for _ in range(count))
            if len(self.buffers) >= 6:
                self.buffers.clear()
            self.buffers[key] = found
        return found

    def __getstate__(self) -> dict:  # copies and pickles carry no buffers
        return {"buffers": {}, "busy": set()}

    def release(self, a_all: torch.Tensor) -> None:
        self.busy.discard(id(a_all))

    def clear(self) -> None:
        self.buffers.clear()
        self.busy.clear()


class _FusedDecoder(torch.autograd.Function):
    """Forward and hand-written backward of all members; see the module docstring.

    Per member and block k (A, R with a trailing ones column, W* with the bias as last row)::

        u = net + F @ Wc[k];  A = relu(u);  R = relu(A @ W0[k]);  net = (u + R @ W1[k]) * mask[k]
    """

    @staticmethod
    def forward(ctx, workspace, save, masks, points, features, wp, wc, w0, w1, wout):
        members, blocks, hidden = masks.shape
        n = points.shape[-2]
        pts, feats = _ones_column(points), _ones_column(features)
        shape = (members, blocks, n, hidden + 1) if save else (1, 1, n, hidden + 1)
        a_all, r_all, a_out = workspace.take(pts, shape, save)
        net, h = workspace.scratch(pts, (n, hidden), 2)
        logits = pts.new_empty((members, n))
        for m in range(members):
            torch.mm(_member(pts, m), wp[m], out=net)
            f_m = _member(feats, m)
            for k in range(blocks):
                a = a_all[m, k] if save else a_all[0, 0]
                r = r_all[m, k] if save else r_all[0, 0]
                net.addmm_(f_m, wc[m, k])
                torch.clamp_min(net, 0, out=a[:, :hidden])
                torch.mm(a, w0[m, k], out=h)
                torch.clamp_min(h, 0, out=r[:, :hidden])
                net.addmm_(r, w1[m, k])
                net.mul_(masks[m, k])
            out = a_out[m] if save else a_out[0]
            torch.clamp_min(net, 0, out=out[:, :hidden])
            torch.mv(out, wout[m], out=logits[m])
        if save:
            ctx.save_for_backward(masks, pts, feats, wp, wc, w0, w1, wout, a_all, r_all, a_out)
            ctx.workspace = workspace
        return logits

    @staticmethod
    def backward(ctx, grad_logits):
        masks, pts, feats, wp, wc, w0, w1, wout, a_all, r_all, a_out = ctx.saved_tensors
        members, blocks, hidden = masks.shape
        relu_grad = torch.ops.aten.threshold_backward.grad_input  # out= variant; in place when out is grad
        g_wp, g_wc = torch.empty_like(wp), torch.empty_like(wc)
        g_w0, g_w1, g_wout = torch.empty_like(w0), torch.empty_like(w1), torch.empty_like(wout)
        grad_logits = grad_logits.contiguous()
        g_net, g_h, g_a = ctx.workspace.scratch(pts, (pts.shape[-2], hidden), 3)
        for m in range(members):
            g = grad_logits[m]
            torch.mv(a_out[m].t(), g, out=g_wout[m])
            torch.outer(g, wout[m, :hidden], out=g_net)
            relu_grad(g_net, a_out[m, :, :hidden], 0, grad_input=g_net)
            f_m = _member(feats, m)
            for k in reversed(range(blocks)):
                a, r = a_all[m, k], r_all[m, k]
                g_net.mul_(masks[m, k])  # gradient at u + R @ W1
                torch.mm(r.t(), g_net, out=g_w1[m, k])
                torch.mm(g_net, w1[m, k, :hidden].t(), out=g_h)
                relu_grad(g_h, r[:, :hidden], 0, grad_input=g_h)
                torch.mm(a.t(), g_h, out=g_w0[m, k])
                torch.mm(g_h, w0[m, k, :hidden].t(), out=g_a)
                relu_grad(g_a, a[:, :hidden], 0, grad_input=g_a)
                g_net.add_(g_a)  # gradient at u
                torch.mm(f_m.t(), g_net, out=g_wc[m, k])
            torch.mm(_member(pts, m).t(), g_net, out=g_wp[m])
        ctx.workspace.release(a_all)
        return None, None, None, None, None, g_wp, g_wc, g_w0, g_w1, g_wout


class FastEnsembleDecoder(EnsembleDecoder):
    """:class:`EnsembleDecoder` whose forward is chosen per device (``formulation``)."""

    def __init__(
        self,
        config: ModelConfig,
        members: int = 1,
        generator: torch.Generator | None = None,
        formulation: str = "batched",
    ) -> None:
        super().__init__(config, members, generator)
        self.formulation = formulation
        self._workspace = _Workspace()

    def train(self, mode: bool = True) -> FastEnsembleDecoder:
        """``eval()`` also frees the training buffers of the fused formulation."""
        if not mode:
            self._workspace.clear()
        return super().train(mode)

    @property
    def formulation(self) -> str:
        return self._formulation

    @formulation.setter
    def formulation(self, value: str) -> None:
        if value not in FORMULATIONS:
            raise ValueError(f"unknown formulation {value!r}; choose one of {', '.join(FORMULATIONS)}")
        self._formulation = value

    @classmethod
    def wrap(cls, decoder: EnsembleDecoder, formulation: str) -> FastEnsembleDecoder:
        """The same members (copied parameters, masks, device) with the given formulation."""
        fast = cls(decoder.config, decoder.members, torch.Generator().manual_seed(0), formulation)
        fast.load_state_dict(decoder.state_dict())
        return fast.to(decoder.fc_p_w.device)

    def _fused_ok(self, points: torch.Tensor, features: torch.Tensor, random_dropout: float) -> bool:
        return (
            self.formulation == "fused"
            and random_dropout <= 0
            and points.device.type == "cpu"
            and points.dtype == features.dtype == self.fc_p_w.dtype == torch.float32
            and not points.requires_grad
            and not features.requires_grad
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, points: torch.Tensor, features: torch.Tensor, random_dropout: float = 0.0) -> torch.Tensor:
        if not self._fused_ok(points, features, random_dropout):
            return super().forward(points, features, random_dropout)
        wp = _augmented(self.fc_p_w, self.fc_p_b)
        wc = _augmented(self.fc_c_w, self.fc_c_b)
        w0 = _augmented(self.fc0_w, self.fc0_b)
        w1 = _augmented(self.fc1_w, self.fc1_b)
        wout = _augmented(self.out_w, self.out_b)[..., 0]
        save = torch.is_grad_enabled() and any(p.requires_grad for p in (wp, wc, w0, w1, wout))
        points, features = points.contiguous(), features.contiguous()
        return _FusedDecoder.apply(self._workspace, save, self.member_masks, points, features, wp, wc, w0, w1, wout)


def fast_decoder(decoder: EnsembleDecoder, device: torch.device | str) -> FastEnsembleDecoder:
    """``decoder`` with the formulation chosen for ``device``."""
    return FastEnsembleDecoder.wrap(decoder, choose_formulation(device))
