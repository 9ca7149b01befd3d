"""Files in and out, every format: volumes, meshes, segmentations, output paths, one atomic-write helper
and one one-line-message helper."""
