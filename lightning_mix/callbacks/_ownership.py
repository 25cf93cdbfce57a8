"""Who puts its weights in the module at the end of fit: at most one averaging callback.

``EMA``, ``SWA`` and ``ModelSoup`` each can replace the trained weights with their own at the end
of fit. Two of them doing it in turn would leave whichever ran last, depending on the order of the
callbacks list, so the rule is checked once at setup:

- a callback with ``owns_final_weights=True`` wins; two such callbacks are an error;
- otherwise the one callback left at ``owns_final_weights=None`` (the default) wins; two or more
  are an error that names them and the parameter that settles it;
- a callback with ``owns_final_weights=False`` never puts its weights in the module (its average
  or soups stay available through its own attributes and files).
"""

from __future__ import annotations

import lightning.pytorch as pl

__all__ = ["WeightOwner", "resolve_weight_owner"]


class WeightOwner:
    """Marker base of callbacks that can put their weights in the module at the end of fit.

    Subclasses set ``self.owns_final_weights`` (``True``, ``False`` or ``None``) in ``__init__``.
    """

    owns_final_weights: bool | None = None


def _label(callback: WeightOwner) -> str:
    return type(callback).__name__


def resolve_weight_owner(trainer: pl.Trainer, callback: WeightOwner) -> bool:
    """Whether ``callback`` puts its weights in the module at the end of fit (raises on a conflict).

    Call it from ``setup`` (before any training step); every owner gets the same answer set.
    """
    owners = [cb for cb in trainer.callbacks if isinstance(cb, WeightOwner)]
    declared = [cb for cb in owners if cb.owns_final_weights is True]
    if len(declared) > 1:
        names = ", ".join(_label(cb) for cb in declared)
        raise ValueError(
            f"Several callbacks claim the module's final weights with owns_final_weights=True ({names}); "
            "set it on one of them only."
        )
    if declared:
        return declared[0] is callback
    undecided = [cb for cb in owners if cb.owns_final_weights is None]
    if len(undecided) > 1:
        names = " and ".join(_label(cb) for cb in undecided)
        raise ValueError(
            f"{names} would each put their weights in the module at the end of fit, and only one can. "
            "Say which one wins: owns_final_weights=True on it (the others keep their averages or soups "
            "on the side), or owns_final_weights=False on the others."
        )
    return bool(undecided) and undecided[0] is callback
