"""Pick the torch device: CUDA, then MPS, then CPU."""

from __future__ import annotations

import torch

from ..config.configs import DEVICE_CHOICES
from ..config.errors import InputError, setting


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the fastest available device; an explicit name must be available."""
    if name not in DEVICE_CHOICES:
        raise InputError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device 'cuda' was requested but CUDA is not available; use {setting('device', 'auto')} or cpu"
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device 'mps' was requested but MPS is not available; use {setting('device', 'auto')} or cpu")
    return torch.device(name)
