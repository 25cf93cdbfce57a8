"""Fisher merging (Matena and Raffel 2022) and the diagonal Fisher it needs.

``theta = sum_i F_i theta_i / sum_i F_i`` per entry, with ``F_i`` model ``i``'s diagonal Fisher
information: the mean over examples of the squared gradient of ``log p(y | x)``. Per-example gradients
come from ``torch.func`` (``vmap`` over ``grad`` of a ``functional_call``), not one backward per
example; ``y`` is sampled from the model's own prediction (the true Fisher) or taken from the data
(the "empirical" Fisher), or summed over every class weighted by its predicted probability
(``labels="exact"``: the expectation the sampled Fisher estimates, as the reference computes it).

The merge follows the reference (mmatena/model_merging@f2d1677, ``model_merging/merging.py``
``_merge_with_coeffs``; re-implemented in ``tests/references/fisher_reference.py``): with
``normalize_fishers=True`` each model's weight is divided by the global L2 norm of its Fisher
(over every tensor of the Fisher), and with ``favor_target_model=True`` only the first model's
Fisher is floored at ``floor`` (the others are not), so entries no example touched take the first
model's value. Both default to the reference's ``True``; with both ``False`` every Fisher is
floored and the weights are used as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mix.merging.core import MergeOptions, merge
from lightning_mix.merging.methods._common import finite, per_model
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, param, register
from lightning_mix.merging.sources import StateDictLike, StateDictSource

__all__ = ["FisherParams", "fisher", "fisher_information"]


def _first(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _second(batch: Any) -> Tensor:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError("labels='data' needs (inputs, labels) batches; pass get_labels= for other batch layouts")
    return batch[1]


def fisher_information(
    module: nn.Module,
    batches: Iterable[Any],
    num_examples: int = 256,
    labels: str = "sample",
    get_inputs: Callable[[Any], Tensor] = _first,
    get_labels: Callable[[Any], Tensor] = _second,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of a classifier (logits on the last dimension) over ``num_examples`` examples.

    Args:
        module: the model, run in eval mode (BatchNorm uses its running statistics; the mode is
            restored afterwards). Only parameters with ``requires_grad`` get a Fisher.
        batches: an iterable of batches (a dataloader); ``get_inputs(batch)`` gives the inputs.
        get_inputs: ``batch -> inputs`` of ``module`` (the first element of a tuple by default).
        get_labels: ``batch -> labels`` (class indices) for ``labels="data"`` (the second element by default).
        num_examples: examples used (256 in the paper); fewer if ``batches`` runs out.
        labels: ``"sample"`` draws one ``y`` per example from the model's softmax (a one-sample
            estimate of the Fisher), ``"exact"`` sums the squared gradients of every class
            weighted by its predicted probability (the Fisher itself, as the reference; one
            gradient pass per class), ``"data"`` uses ``get_labels(batch)`` (class indices; the
            empirical Fisher).
        generator: seeds the label sampling.

    Returns:
        ``{parameter name: mean squared per-example gradient}`` in float32 on the CPU.
    """
    from torch.func import functional_call, grad, vmap

    if labels not in ("sample", "exact", "data"):
        raise ValueError(f"labels must be 'sample', 'exact' or 'data', got {labels!r}")
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    buffers = dict(module.named_buffers())
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    def log_prob(prm: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(module, (prm, buffers), (x.unsqueeze(0),))
        return torch.log_softmax(logits.float(), dim=-1).reshape(-1).gather(0, y.reshape(1)).squeeze(0)

    per_example = vmap(grad(log_prob), in_dims=(None, 0, 0))
    was_training = module.training
    module.eval()
    seen = 0
    try:
        for batch in batches:
            x = get_inputs(batch)
            take = min(x.shape[0], num_examples - seen)
            x = x[:take]
            if labels == "exact":
                with torch.no_grad():
                    probs = torch.softmax(module(x).float(), dim=-1)
                for c in range(probs.shape[-1]):
                    y = torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
                    grads = per_example(params, x, y)
                    for n, g in grads.items():
                        w = probs[:, c].reshape(-1, *([1] * (g.dim() - 1)))
                        sums[n] += (w * g.float().pow(2)).sum(dim=0)
                seen += take
                if seen >= num_examples:
                    break
                continue
            if labels == "sample":
                with torch.no_grad():
                    probs = torch.softmax(module(x).float(), dim=-1)
                y = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(x.device)
            else:
                y = get_labels(batch)[:take].to(x.device)
            grads = per_example(params, x, y)
            for n, g in grads.items():
                sums[n] += g.float().pow(2).sum(dim=0)
            seen += take
            if seen >= num_examples:
                break
    finally:
        module.train(was_training)
    if seen == 0:
        raise ValueError("fisher_information got no examples; pass a non-empty dataloader")
    return {n: (s / seen).cpu() for n, s in sums.items()}


@dataclass(frozen=True)
class FisherParams:
    """Parameters of :func:`fisher`."""

    weights: tuple[float, ...] | None = param(None, "per-model weights (equal by default)")
    floor: float = param(1e-6, "lower bound on Fisher values (the reference's fisher_floor)")
    normalize_fishers: bool = param(True, "divide each model's weight by the L2 norm of its whole Fisher (reference)")
    favor_target_model: bool = param(True, "floor only the first model's Fisher (reference); False floors all")

    def __post_init__(self) -> None:
        if finite("floor", self.floor) < 0:
            raise MergeError(f"floor must be >= 0, got {self.floor}")

    def check(self, num_models: int) -> None:
        """Refuse a weight count that differs from the models' or non-finite weights."""
        if self.weights is not None:
            per_model("weights", tuple(self.weights), num_models)


def _fisher_norms(fishers: list[StateDictSource]) -> list[float]:
    return [math.sqrt(sum(float(t.double().pow(2).sum()) for t in f.tensors.values())) for f in fishers]


def _combine(inputs: TensorInputs, p: FisherParams) -> Tensor:
    ts = inputs.tensors
    stacked = torch.stack(ts)
    n = len(ts)
    w = [1.0] * n if p.weights is None else [float(v) for v in p.weights]
    if p.normalize_fishers and "norms" in inputs.scratch:
        w = [wi / max(norm, 1e-30) for wi, norm in zip(w, inputs.scratch["norms"])]
    weights = torch.tensor(w, dtype=torch.float32, device=ts[0].device).reshape((-1,) + (1,) * (stacked.dim() - 1))
    fishers = inputs.extra.get("fishers")
    if fishers is None:  # buffers, frozen parameters: the weighted average
        return (weights * stacked).sum(dim=0) / weights.sum(dim=0)
    diags = []
    for i, f in enumerate(fishers):
        if f.shape != ts[0].shape:
            raise MergeError(
                f"the Fisher of {inputs.name!r} in fisher {i} has shape {tuple(f.shape)}, "
                f"the weight {tuple(ts[0].shape)}"
            )
        diags.append(f.clamp_min(p.floor) if (not p.favor_target_model or i == 0) else f)
    coef = torch.stack(diags) * weights
    return (coef * stacked).sum(dim=0) / coef.sum(dim=0)


def _prepare(extra: dict[str, list[StateDictSource]], p: FisherParams) -> dict:
    return {"norms": _fisher_norms(extra["fishers"])} if p.normalize_fishers else {}


METHOD = register(
    MergeMethod(
        name="fisher",
        summary="Fisher-weighted average (needs one diagonal Fisher per model: --fishers)",
        reference="Matena and Raffel 2022, Merging models with Fisher-weighted averaging; mmatena/model_merging",
        params=FisherParams,
        combine=_combine,
        needs_base=False,
        extra_inputs=("fishers",),
        prepare=_prepare,
    )
)


def fisher(
    models: Sequence[StateDictLike],
    fishers: Sequence[StateDictLike],
    weights: Sequence[float] | None = None,
    floor: float = 1e-6,
    normalize_fishers: bool = True,
    favor_target_model: bool = True,
    options: MergeOptions | None = None,
) -> dict[str, Tensor]:
    """Fisher-weighted average ``sum_i c_i F_i theta_i / sum_i c_i F_i`` per entry.

    Args:
        models: the fine-tuned models' state dicts (or checkpoint paths).
        fishers: one diagonal Fisher per model (:func:`fisher_information`, or files). Names
            without a Fisher in every model (buffers, frozen parameters) are averaged with the
            weights ``c_i``.
        weights: per-model weights (equal by default).
        floor: lower bound on the Fisher values (see ``favor_target_model``).
        normalize_fishers: ``c_i = weight_i / ||F_i||_2`` over the whole Fisher (reference default).
        favor_target_model: floor only the first model's Fisher (reference default); ``False``
            floors every Fisher.
        options: the shared merge options (:class:`~lightning_mix.merging.MergeOptions`).
    """
    params = FisherParams(
        None if weights is None else tuple(float(w) for w in weights), floor, normalize_fishers, favor_target_model
    )
    return merge(METHOD, models, params, options, extra={"fishers": list(fishers)})
