"""Fisher merging (Matena and Raffel 2022) and the diagonal Fisher it needs.

``theta = sum_i F_i theta_i / sum_i F_i`` per entry, with ``F_i`` model ``i``'s diagonal Fisher
information: the mean over examples of the squared gradient of ``log p(y | x)``. Per-example gradients
come from ``torch.func`` (``vmap`` over ``grad`` of a ``functional_call``), not one backward per
example; ``y`` is sampled from the model's own prediction (the true Fisher) or taken from the data
(the "empirical" Fisher).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mix.averaging.merging.core import MergeError, Progress, merge_state_dicts
from lightning_mix.averaging.merging.io import StateDictLike, StateDictSource

__all__ = ["fisher_information", "fisher_merge"]


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
        num_examples: examples used (256 in the paper); fewer if ``batches`` runs out.
        labels: ``"sample"`` draws ``y`` from the model's softmax (the Fisher of the model),
            ``"data"`` uses ``get_labels(batch)`` (class indices; the empirical Fisher).
        generator: seeds the label sampling.

    Returns:
        ``{parameter name: mean squared per-example gradient}`` in float32 on the CPU.
    """
    from torch.func import functional_call, grad, vmap

    if labels not in ("sample", "data"):
        raise ValueError(f"labels must be 'sample' or 'data', got {labels!r}")
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


def fisher_merge(
    models: Sequence[StateDictLike],
    fishers: Sequence[StateDictLike],
    weights: Sequence[float] | None = None,
    floor: float = 1e-6,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """Fisher-weighted average ``sum_i w_i F_i theta_i / sum_i w_i F_i`` per entry.

    Args:
        fishers: one diagonal Fisher per model (:func:`fisher_information`, or files). Names
            without a Fisher in every model (buffers, frozen parameters) are averaged with
            ``weights``.
        weights: per-model weights (equal by default).
        floor: lower bound on the Fisher values (1e-6), so entries no example touched fall back
            to the weighted average instead of dividing zero by zero.
    """
    models = list(models)
    if len(fishers) != len(models):
        raise MergeError(f"got {len(fishers)} Fishers for {len(models)} models; pass one Fisher per model")
    w0 = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if len(w0) != len(models):
        raise MergeError(f"got {len(w0)} weights for {len(models)} models")
    fisher_sources = [StateDictSource.open(f, f"fisher {i}") for i, f in enumerate(fishers)]

    def combine(name: str, ts: list[Tensor], p: dict[str, Any]) -> Tensor:
        w = torch.tensor(p["weights"], dtype=torch.float32, device=ts[0].device)
        stacked = torch.stack(ts)
        shape = (-1,) + (1,) * (stacked.dim() - 1)
        if all(name in f for f in fisher_sources):
            fs = []
            for f in fisher_sources:
                fi = f[name]
                if fi.shape != ts[0].shape:
                    raise MergeError(f"the Fisher of {name!r} in {f.label} has shape {tuple(fi.shape)}, the weight {tuple(ts[0].shape)}")
                fs.append(fi.to(device=ts[0].device, dtype=torch.float32).clamp_min(float(p["floor"])))
            coef = torch.stack(fs) * w.reshape(shape)
        else:
            coef = w.reshape(shape).expand_as(stacked)
        return (coef * stacked).sum(dim=0) / coef.sum(dim=0)

    return merge_state_dicts(
        models, combine, {"weights": w0, "floor": floor}, include=include, exclude=exclude, overrides=overrides,
        dtype=dtype, device=device, progress=progress,
    )
