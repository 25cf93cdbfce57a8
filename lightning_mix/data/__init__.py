"""Lightning data adapters: DataModules that wrap a user's DataModule to change how training batches are drawn."""

from lightning_mix.data.cmixup import CMixupDataModule

__all__ = ["CMixupDataModule"]
