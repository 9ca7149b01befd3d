"""Scoring: metrics, scores against a ground truth beside the interpolation baselines, and the held-out
slice check."""
