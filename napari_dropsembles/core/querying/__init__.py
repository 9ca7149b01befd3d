"""Querying and meshes: the fitted ensemble queried on a grid (dense or coarse-to-fine), the ensemble
statistics, and the surface extracted from the mean."""
