"""RegMean (Jin et al. 2023): merge linear layers by regression on their inputs.

For a linear layer ``y = W x`` fine-tuned into ``W_i`` on data ``X_i``, the merged ``W`` minimising
``sum_i ||X_i W^T - X_i W_i^T||^2`` is ``W^T = (sum_i G_i)^-1 sum_i G_i W_i^T`` with the Gram matrices
``G_i = X_i^T X_i``. Scaling the off-diagonal entries of each ``G_i`` by ``alpha`` (0.95) moves the
solution towards the plain average and keeps the system well conditioned. Every other tensor is
averaged. :func:`regmean_grams` collects the Gram matrices with forward hooks.

The authors (bloomberg/dataless-model-merging) normalise each Gram by its number of input rows,
``G_i = X_i^T X_i / N_i``, so a model seen on more data does not dominate the merge: that is the
default here (``regmean_grams(normalize=True)``). ``normalize=False`` keeps the sums ``X_i^T X_i``,
the exact least-squares solution over the pooled data (models weighted by their data size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike

__all__ = ["RegmeanParams", "regmean", "regmean_grams"]


def _first(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def regmean_grams(
    module: nn.Module,
    batches: Iterable[Any],
    layers: Sequence[str] | None = None,
    num_batches: int | None = None,
    get_inputs: Callable[[Any], Any] = _first,
    normalize: bool = True,
) -> dict[str, Tensor]:
    """Gram matrices ``X^T X / N`` (``normalize=False``: ``X^T X``) of the inputs of ``module``'s ``nn.Linear`` layers.

    Args:
        module: the model whose ``nn.Linear`` inputs are collected (run in eval mode).
        batches: an iterable of batches (a dataloader).
        layers: module names to collect (default: every ``nn.Linear``).
        num_batches: stop after this many batches (default: all).
        get_inputs: ``batch -> inputs`` passed to ``module`` (the first element by default).
        normalize: divide each Gram by its number of input rows ``N`` (the authors' rule).

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
    rows = dict.fromkeys(targets, 0)
    grams = {
        n: torch.zeros(m.in_features, m.in_features, dtype=torch.float32, device=m.weight.device)
        for n, m in targets.items()
    }

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            grams[name].addmm_(x.T, x)
            rows[name] += x.shape[0]

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
    if normalize:
        grams = {n: g / max(rows[n], 1) for n, g in grams.items()}
    return {f"{n}.weight" if n else "weight": g.cpu() for n, g in grams.items()}


def _solve(gram: Tensor, rhs: Tensor) -> Tensor:
    try:
        return torch.linalg.solve(gram, rhs)
    except RuntimeError:  # singular: inputs that never varied; the pseudo-inverse ignores those directions
        return torch.linalg.pinv(gram) @ rhs


@dataclass(frozen=True)
class RegmeanParams:
    """Parameters of :func:`regmean`."""

    alpha: float = param(0.95, "scale of the Grams' off-diagonal entries: 1 exact least squares, 0 diagonal only")

    def __post_init__(self) -> None:
        if not 0.0 <= finite("alpha", self.alpha) <= 1.0:
            raise MergeError(f"alpha must be in [0, 1], got {self.alpha}")


def _combine(inputs: TensorInputs, p: RegmeanParams) -> Tensor:
    ts = inputs.tensors
    grams = inputs.extra.get("grams")
    if grams is None or ts[0].dim() != 2:
        return torch.stack(ts).mean(dim=0)
    a = p.alpha
    total_g = torch.zeros(ts[0].shape[1], ts[0].shape[1], dtype=torch.float32, device=ts[0].device)
    total_r = torch.zeros(ts[0].shape[1], ts[0].shape[0], dtype=torch.float32, device=ts[0].device)
    for g, w in zip(grams, ts):
        if g.shape != (w.shape[1], w.shape[1]):
            raise MergeError(f"Gram of {inputs.name!r} has shape {tuple(g.shape)}, expected {(w.shape[1], w.shape[1])}")
        g = a * g + (1 - a) * torch.diag(torch.diagonal(g))
        total_g += g
        total_r += g @ w.T
    return _solve(total_g, total_r).T


METHOD = register(
    MergeMethod(
        name="regmean",
        summary="regression mean of linear layers (needs one Gram set per model: --grams)",
        reference="Jin et al. 2023, Dataless knowledge fusion (RegMean); bloomberg/dataless-model-merging",
        params=RegmeanParams,
        combine=_combine,
        needs_base=False,
        extra_inputs=("grams",),
    )
)


def regmean(
    models: Sequence[StateDictLike],
    grams: Sequence[Mapping[str, Tensor] | StateDictLike],
    alpha: float = 0.95,
    options: MergeOptions | None = None,
) -> dict[str, Tensor]:
    """RegMean: regression mean for the weights with a Gram in every model, plain average elsewhere.

    Args:
        models: the fine-tuned models' state dicts (or checkpoint paths).
        grams: one ``{weight name: Gram}`` per model (:func:`regmean_grams`, or files).
        alpha: scale of the Grams' off-diagonal entries (0.95).
        options: the shared merge options (:class:`~lightning_mix.merging.MergeOptions`).
    """
    return merge(METHOD, models, RegmeanParams(alpha), options, extra={"grams": list(grams)})
