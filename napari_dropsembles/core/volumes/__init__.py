"""Volumes and frames: a grid with its affine in world mm, a mesh, the masks read from a label map or
an image, and the normalised frame (unit cube) of one case."""
