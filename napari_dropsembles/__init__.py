"""Dropsembles: calibrated 3D shape reconstruction from sparse segmentations."""

__version__ = "0.1.0"
