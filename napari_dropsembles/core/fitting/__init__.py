"""Fitting: the case a network sees, the methods as objects, fine-tuning on one case, the fitted
ensemble every query goes through, and pretraining a prior."""
