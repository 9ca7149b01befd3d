"""Slices and interpolation: how the slices of an observation are read, shape-based interpolation as a
field, the between-slice uncertainty learned from held-out slices, and the plain interpolation baselines."""
