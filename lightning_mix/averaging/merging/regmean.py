"""RegMean (Jin et al. 2023): merge linear layers by regression on their inputs.

For a linear layer ``y = W x`` fine-tuned into ``W_i`` on data ``X_i``, the merged ``W`` minimising
``sum_i ||X_i W^T - X_i W_i^T||^2`` is ``W^T = (sum_i G_i)^-1 sum_i G_i W_i^T`` with the Gram matrices
``G_i = X_i^T X_i``. Scaling the off-diagonal entries of each ``G_i`` by ``alpha`` (0.95) moves the
solution towards the plain average and keeps the system well conditioned. Every other tensor is
averaged. :func:`regmean_grams` collects the Gram matrices with forward hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mix.averaging.merging.core import MergeError, Progress, merge_state_dicts
from lightning_mix.averaging.merging.io import StateDictLike

__all__ = ["regmean_grams", "regmean_merge"]


def _first(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def regmean_grams(
    module: nn.Module,
    batches: Iterable[Any],
    layers: Sequence[str] | None = None,
    num_batches: int | None = None,
    get_inputs: Callable[[Any], Any] = _first,
) -> dict[str, Tensor]:
    """Gram matrices ``X^T X`` of the inputs of ``module``'s ``nn.Linear`` layers.

    Args:
        layers: module names to collect (default: every ``nn.Linear``).
        num_batches: stop after this many batches (default: all).
        get_inputs: ``batch -> inputs`` passed to ``module`` (the first element by default).

    Returns:
        ``{"<layer>.weight": (in_features, in_features) float32 Gram}`` on the CPU; inputs of any
        shape ``(..., in_features)`` contribute every row.
    """
    targets = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    if layers is not None:
        missing = [n for n in layers if n not in targets]
        if missing:
            raise ValueError(f"{missing[0]!r} is not an nn.Linear of the module; linear layers: {sorted(targets)}")
        targets = {n: targets[n] for n in layers}
    grams = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float32, device=m.weight.device) for n, m in targets.items()}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            grams[name].addmm_(x.T, x)

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in targets.items()]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if num_batches is not None and i >= num_batches:
                    break
                module(get_inputs(batch))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return {f"{n}.weight" if n else "weight": g.cpu() for n, g in grams.items()}


def _solve(gram: Tensor, rhs: Tensor) -> Tensor:
    try:
        return torch.linalg.solve(gram, rhs)
    except RuntimeError:  # singular: inputs that never varied; the pseudo-inverse ignores those directions
        return torch.linalg.pinv(gram) @ rhs


def regmean_merge(
    models: Sequence[StateDictLike],
    grams: Sequence[Mapping[str, Tensor]],
    alpha: float = 0.95,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """RegMean merge: regression-mean for the weights that have a Gram in every model, average elsewhere.

    Args:
        grams: one ``{weight name: Gram}`` per model (:func:`regmean_grams`).
        alpha: scale of the Grams' off-diagonal entries (0.95); 1 is the exact least-squares
            solution, 0 a per-input-feature weighted average.
    """
    models = list(models)
    if len(grams) != len(models):
        raise MergeError(f"got {len(grams)} Gram sets for {len(models)} models; pass one per model")

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        if not all(name in g for g in grams) or ts[0].dim() != 2:
            return torch.stack(ts).mean(dim=0)
        a = float(p["alpha"])
        total_g = torch.zeros(ts[0].shape[1], ts[0].shape[1], dtype=torch.float32, device=ts[0].device)
        total_r = torch.zeros(ts[0].shape[1], ts[0].shape[0], dtype=torch.float32, device=ts[0].device)
        for g_map, w in zip(grams, ts):
            g = g_map[name].to(device=w.device, dtype=torch.float32)
            if g.shape != (w.shape[1], w.shape[1]):
                raise MergeError(f"Gram of {name!r} has shape {tuple(g.shape)}, expected {(w.shape[1], w.shape[1])}")
            g = a * g + (1 - a) * torch.diag(torch.diagonal(g))
            total_g += g
            total_r += g @ w.T
        return _solve(total_g, total_r).T

    return merge_state_dicts(
        models, combine, {"alpha": alpha}, include=include, exclude=exclude, overrides=overrides, dtype=dtype,
        device=device, progress=progress,
    )
