"""Dropsembles: calibrated 3D shape reconstruction from sparse segmentations."""

from .core.networks.threads import prepare_threads

__version__ = "0.1.0"

prepare_threads()  # before torch and numpy load: idle threads sleep, OpenBLAS on one thread (core/networks/threads)
