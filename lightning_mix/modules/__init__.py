"""LightningModules built from other models (prediction ensembles)."""

from lightning_mix.modules.ensemble import Ensemble

__all__ = ["Ensemble"]
