"""Losses (torch only): soft-target cross-entropy, calibration losses, mixing-aware losses."""

from lightning_mix.losses.soft_target import soft_cross_entropy

__all__ = ["soft_cross_entropy"]
