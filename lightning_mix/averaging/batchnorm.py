"""Recompute BatchNorm running statistics after weights were averaged, merged or souped.

The running mean and variance of a BatchNorm layer describe the activations of the weights that
produced them. After any average (EMA, SWA, soups, merges) they no longer match, and a model
evaluated with stale statistics can lose most of its accuracy. :func:`recalibrate_batchnorm`
recomputes them with one pass over (training) data, without gradients.

Improvements over ``torch.optim.swa_utils.update_bn``:

- the caller decides how a batch is fed (``forward=``): dict batches, several inputs, a
  LightningModule's own batch transfer;
- the statistics are the exact per-channel mean and unbiased variance over *all samples* seen
  (pooled with Chan's parallel update in float32, numerically stable), not a mean of per-batch
  variances, so unequal batch sizes (a short last batch) are weighted correctly;
- at no extra cost: each layer runs with ``momentum=1`` so its running statistics after a forward
  are that batch's own mean and unbiased variance, which a forward hook pools (SyncBatchNorm,
  whose statistics are global, is measured from its input instead);
- under ``torch.distributed`` the statistics of all ranks are pooled (weighted by each rank's
  sample count, including the spread between the ranks' means), so every rank ends with the same
  values;
- momentum, train/eval mode of every submodule and layers the data never reached are restored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy

__all__ = ["recalibrate_batchnorm", "default_bn_forward", "batchnorm_layers"]


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` (any ``_BatchNorm`` subclass) that track running statistics.

    Lazy layers that were never run (no shape yet) are left out: run one forward pass first.
    """
    return [
        m
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and not is_lazy(m.running_mean)
    ]


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def default_bn_forward(module: nn.Module, batch: Any) -> Any:
    """Feed ``batch`` to ``module``: a tensor as is, ``batch[0]`` of a list or tuple.

    The input is moved to the device of the module's first parameter. Dict batches are ambiguous
    (which key is the input?), so they raise and ask for a ``forward`` callable.
    """
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("recalibrate_batchnorm got an empty list/tuple batch; nothing to feed the model.")
        inputs = batch[0]
    elif isinstance(batch, torch.Tensor):
        inputs = batch
    elif isinstance(batch, Mapping):
        raise TypeError(
            f"recalibrate_batchnorm cannot guess the input of a dict batch (keys {list(batch)[:8]}). "
            "Pass forward=lambda model, batch: model(batch['your_input_key']) (or any callable "
            "that feeds one batch to the model)."
        )
    else:
        raise TypeError(
            f"recalibrate_batchnorm does not know how to feed a batch of type {type(batch).__name__}. "
            "Pass forward=lambda model, batch: ... that runs the model on one batch."
        )
    if isinstance(inputs, torch.Tensor):
        device = _module_device(module)
        if device is not None and inputs.device != device:
            inputs = inputs.to(device, non_blocking=True)
    return module(inputs)


class _Moments:
    """Per-channel count, mean and sum of squared deviations of a BN layer's inputs (float32)."""

    __slots__ = ("count", "mean", "m2", "batches")

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.batches = 0

    def hook(self, layer: nn.Module, args: tuple) -> None:
        """Forward pre-hook: the batch's moments computed from the layer's input (any BN kind)."""
        x = args[0]
        if x.dim() < 2:
            return  # BN itself will raise a clearer error
        channels = x.shape[1]
        n = x.numel() // channels
        if n == 0:
            return
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = torch.var_mean(x.detach().float(), dim=dims, correction=0)
        self.add(n, mean, var * n)

    def read_batch_statistics(self, layer: nn.Module, args: tuple, output: Any) -> None:
        """Forward hook for a layer run with ``momentum=1``: its running statistics now hold exactly
        this batch's mean and unbiased variance, which BatchNorm computed anyway, so nothing is
        recomputed from the input.
        """
        x = args[0]
        channels = layer.num_features
        n = x.numel() // channels if x.dim() >= 2 else 0
        if n < 2:
            return
        mean = layer.running_mean.detach().float().clone()
        m2 = layer.running_var.detach().float() * (n - 1)
        self.add(n, mean, m2)

    def add(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge one batch's (count, mean, sum of squared deviations) into the running moments."""
        self.batches += 1
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _pool_across_ranks(layers: list[_BatchNorm], moments: list[_Moments]) -> None:
    """Replace each layer's local moments by those pooled over all ranks (in place)."""
    dist = torch.distributed
    device = layers[0].running_mean.device
    sizes = [layer.num_features for layer in layers]
    counts = torch.tensor([[mo.count, mo.batches] for mo in moments], dtype=torch.int64, device=device)
    dist.all_reduce(counts)
    local_counts = torch.tensor([mo.count for mo in moments], dtype=torch.float32, device=device)

    def flat(attr: str) -> torch.Tensor:
        parts = []
        for mo, size in zip(moments, sizes):
            value = getattr(mo, attr)
            parts.append(torch.zeros(size, device=device) if value is None else value.to(device))
        return torch.cat(parts)

    weights = torch.repeat_interleave(local_counts, torch.tensor(sizes, device=device))
    local_mean = flat("mean")
    global_counts = torch.repeat_interleave(counts[:, 0].float(), torch.tensor(sizes, device=device))
    weighted = local_mean * weights
    dist.all_reduce(weighted)
    global_mean = weighted / global_counts.clamp_min(1)
    # sum over ranks of M2_r + n_r (mean_r - mean)^2 = the pooled sum of squared deviations
    m2 = flat("m2") + weights * (local_mean - global_mean).square()
    dist.all_reduce(m2)
    for i, (mo, mean, m2_i) in enumerate(zip(moments, global_mean.split(sizes), m2.split(sizes))):
        mo.count = int(counts[i, 0])
        mo.batches = int(counts[i, 1])
        mo.mean, mo.m2 = (mean, m2_i) if mo.count > 0 else (None, None)


@torch.no_grad()
def recalibrate_batchnorm(
    module: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    """Reset and recompute the running statistics of every BatchNorm layer with one pass over ``batches``.

    Args:
        module: the model (any ``nn.Module``; any device and dtype). Modified in place.
        batches: an iterable of batches (a DataLoader, a list, a generator). One pass is made.
        forward: ``forward(module, batch)`` feeds one batch to the model; use it for dict batches,
            several inputs or a custom device transfer. Default: :func:`default_bn_forward`
            (``batch[0]`` of a list/tuple, or the tensor itself, moved to the module's device).

    Returns:
        ``module``, with ``running_mean`` and ``running_var`` of each BatchNorm layer set to the
        exact per-channel mean and unbiased variance of that layer's inputs over all samples of the
        pass (layer in training mode, as in SWA), ``num_batches_tracked`` to the number of batches.
        Momentum and the train/eval mode of every submodule are restored afterwards. Layers the data
        never reached keep their previous statistics (with a warning).

    Under an initialised ``torch.distributed`` process group, each rank passes over its own
    batches and the moments are pooled across ranks (weighted by sample counts, with the spread
    between the ranks' means), so every rank ends with identical statistics. All ranks must call
    this function (it runs collectives).

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> data = [torch.randn(8, 3) for _ in range(4)]
        >>> _ = recalibrate_batchnorm(model, data)
    """
    layers = batchnorm_layers(module)
    if not layers:
        return module
    forward = default_bn_forward if forward is None else forward
    training = {m: m.training for m in module.modules()}
    saved = [
        (layer.momentum, layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone())
        for layer in layers
    ]
    moments = [_Moments() for _ in layers]
    handles = []
    for layer, mo in zip(layers, moments):
        if isinstance(layer, nn.SyncBatchNorm):  # its running statistics are global, not this batch's
            handles.append(layer.register_forward_pre_hook(mo.hook))
        else:
            handles.append(layer.register_forward_hook(mo.read_batch_statistics))
    seen = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            # momentum 1: after each forward the running statistics are that batch's own, which the
            # hook pools exactly (SyncBatchNorm layers are measured from their input instead)
            layer.momentum = 1.0
        module.train()
        for batch in batches:
            forward(module, batch)
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for m, was_training in training.items():
            m.training = was_training
        for layer, (momentum, *_rest) in zip(layers, saved):
            layer.momentum = momentum
    if _distributed():
        _pool_across_ranks(layers, moments)
    elif seen == 0:
        raise ValueError(
            "recalibrate_batchnorm got no batches; pass a non-empty iterable (e.g. the training DataLoader)."
        )
    missed = []
    for layer, mo, (_, mean, var, tracked) in zip(layers, moments, saved):
        if mo.mean is None:
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(tracked)
            missed.append(layer)
            continue
        layer.running_mean.copy_(mo.mean)
        layer.running_var.copy_(mo.m2 / max(mo.count - 1, 1))
        layer.num_batches_tracked.fill_(mo.batches)
    if missed:
        names = [name for name, m in module.named_modules() if any(m is x for x in missed)]
        warnings.warn(
            f"recalibrate_batchnorm: the data never reached BatchNorm layers {names[:8]}; "
            "their previous running statistics were kept.",
            stacklevel=2,
        )
    return module
