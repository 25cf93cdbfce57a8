"""Lightning callbacks: thin adapters that decide *when* the torch-only layers act."""

from lightning_mix.callbacks.mixing import MixingCallback

__all__ = ["MixingCallback"]
