"""AdaMerging (Yang et al. 2024): learn task-arithmetic coefficients on unlabeled data.

Task arithmetic uses one hand-tuned ``lam`` for every task vector. AdaMerging learns it instead, per
task (``granularity="task"``: ``theta_0 + sum_t lam_t tau_t``) or per task and tensor
(``"layer"``: ``theta_0 + sum_t lam_{t,l} tau_{t,l}``), by minimising the mean prediction entropy
of the merged model on unlabeled test-time batches, a surrogate for its loss. The merged model is
evaluated with ``torch.func.functional_call`` so the coefficients get gradients without copying
weights into the module.

Unlike the streaming merges, this holds the base and every task vector in memory (the optimiser
needs all of them at every step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mix.checkpoint_io import check_compatible
from lightning_mix.merging.registry import MergeError
from lightning_mix.merging.sources import StateDictLike, StateDictSource

__all__ = ["adamerging", "prediction_entropy"]


def _first(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def prediction_entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of ``softmax(logits)`` over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def _cycle(batches: Iterable[Any]):
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("adamerging got no batches; pass a non-empty dataloader of unlabeled inputs")


def adamerging(
    module: nn.Module,
    base: StateDictLike,
    models: Sequence[StateDictLike],
    batches: Iterable[Any],
    granularity: str = "layer",
    init: float = 0.3,
    lr: float = 1e-3,
    steps: int = 500,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    get_inputs: Callable[[Any], Any] = _first,
    loss: Callable[[Tensor], Tensor] = prediction_entropy,
    batch_statistics: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """Learn AdaMerging coefficients and return the merged state dict and the coefficients.

    Args:
        module: a model of the architecture (its own weights are not used; it is put in eval
            mode, so BatchNorm uses the base model's running statistics: recalibrate after).
        base: the pre-trained model the task vectors are taken from.
        models: fine-tuned models.
        batches: unlabeled batches, cycled for ``steps`` steps; ``get_inputs(batch)`` gives the
            module's input (the first element of a tuple by default).
        get_inputs: ``batch -> inputs`` of ``module`` (see ``batches``).
        granularity: ``"task"`` (one coefficient per model) or ``"layer"`` (one per model and
            floating-point tensor).
        init: initial coefficient (0.3, task arithmetic's usual value).
        lr: Adam learning rate (1e-3).
        steps: optimisation steps (the authors use ~500-1000).
        clamp: keep the coefficients in this range after each step (``None``: unconstrained).
        loss: objective on the merged model's output (mean prediction entropy).
        batch_statistics: run the module in training mode, so BatchNorm normalises with the
            statistics of each batch instead of the base model's running statistics (which do not
            describe the merged model); dropout is active then too. Buffers updated during the
            search are discarded (the base's are returned: recalibrate BatchNorm afterwards).

    Returns:
        ``(merged state dict, coefficients)`` with coefficients of shape ``(T,)`` or ``(T, L)``
        (``L`` the merged tensors, in state-dict order).
    """
    from torch.func import functional_call

    if granularity not in ("task", "layer"):
        raise MergeError(f"granularity must be 'task' or 'layer', got {granularity!r}")
    sources = [StateDictSource.open(base, "base")] + [
        StateDictSource.open(m, f"model {i}") for i, m in enumerate(models)
    ]
    if len(sources) < 2:
        raise MergeError("adamerging needs at least one fine-tuned model")
    names = check_compatible([s.tensors for s in sources], [s.label for s in sources])
    device = next(iter(module.parameters()), torch.empty(0)).device
    base_sd = {n: sources[0][n].detach().to(device) for n in names}
    merged_names = [n for n in names if base_sd[n].is_floating_point()]
    param_names = {n for n, _ in module.named_parameters()}
    merged_names = [n for n in merged_names if n in param_names]
    if not merged_names:
        raise MergeError(
            "none of the state dict's tensors are parameters of the module; pass the matching architecture"
        )
    taus = [
        {n: (s[n].detach().to(device, torch.float32) - base_sd[n].float()) for n in merged_names} for s in sources[1:]
    ]
    shape = (len(taus),) if granularity == "task" else (len(taus), len(merged_names))
    coef = torch.full(shape, float(init), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([coef], lr=lr)
    fixed = {n: t for n, t in base_sd.items() if n not in merged_names}

    def merged_params(c: Tensor) -> dict[str, Tensor]:
        out = dict(fixed)
        for j, n in enumerate(merged_names):
            delta = sum((c[t] if c.dim() == 1 else c[t, j]) * taus[t][n] for t in range(len(taus)))
            out[n] = (base_sd[n].float() + delta).to(base_sd[n].dtype)
        return out

    was_training = module.training
    module.train(batch_statistics)
    try:
        stream = _cycle(batches)
        for _ in range(steps):
            inputs = get_inputs(next(stream))
            optimizer.zero_grad(set_to_none=True)
            params = merged_params(coef)
            if batch_statistics:  # BatchNorm writes its running statistics in place: give it copies
                params.update({n: t.clone() for n, t in fixed.items()})
            objective = loss(functional_call(module, params, (inputs,)))
            objective.backward()
            optimizer.step()
            if clamp is not None:
                with torch.no_grad():
                    coef.clamp_(*clamp)
    finally:
        module.train(was_training)
    with torch.no_grad():
        final = merged_params(coef.detach())
    return {n: final[n].detach().cpu().clone() for n in names}, coef.detach().cpu()
