"""Jobs: each one call from a request to its outputs (reconstruct, refine, suggest, evaluate, pretrain)."""
