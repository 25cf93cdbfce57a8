"""TokenShuffle: stochastic layer-wise shuffling of the token order in training (Huang et al. 2024)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.callbacks._stream_state import SeededStreamState
from lightning_mix.mixing.attention import find_attention_modules
from lightning_mix.mixing.token_shuffle import inverse_permutation, layer_shuffle_probabilities, permute_tokens

__all__ = ["TokenShuffle"]


class TokenShuffle(SeededStreamState, Callback):
    """Shuffle the token order of each layer's input with a probability that rises with depth; restore it after.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import TokenShuffle

        trainer = Trainer(max_epochs=10, callbacks=[TokenShuffle(shuffle_rate=0.1)])

    Stochastic Layer-Wise Shuffle (Huang et al. 2024, authors' code ``huangzizheng01/ShuffleMamba``):
    layer ``l`` of ``L`` is shuffled with probability ``linspace(0, shuffle_rate, L)[l]``, one draw
    per layer and training batch; a shuffled layer receives its inputs with the token dimension
    reordered by one random permutation (shared by the batch) and its outputs are put back in the
    original order, so the rest of the network never sees the shuffle. Evaluation, and any forward
    outside a training batch, is untouched. It is a regulariser for layers that depend on the token
    order (the paper's Vision Mamba scans; token-mixing MLPs, convolutions or rotary embeddings
    inside a block). **On standard ViT blocks it changes nothing**: self-attention with the position
    embeddings added before the first block is permutation-equivariant, so a shuffled block
    returns the same tokens (up to float rounding) -- the tests use that as their check.

    Forward pre-hooks permute every positional tensor argument whose size along ``token_dim``
    equals the first argument's (Mamba blocks take a residual too, which the authors shuffle as
    well); forward hooks restore the output (a tensor, or each such tensor of a tuple). Hooks are
    removed by their handles at the end of fit. Randomness comes from a per-rank counter stream
    (``seed``), checkpointed for exact resume; the permutation of a layer is drawn once per batch,
    so activation checkpointing recomputes the same shuffle.

    This callback does not mix batches; it composes with one mixing callback (MixingCallback,
    TransMix, TLAlign).

    Args:
        layers: dotted names of the layers (blocks) to shuffle around, in depth order; None takes
            the parent of every attention module found (``blocks.0``, ... in timm and TinyViT,
            ``encoder.layers.encoder_layer_0``, ... in torchvision).
        shuffle_rate: probability of the deepest layer (0.1, the authors' default).
        token_dim: the token dimension of the layers' inputs (1 for (B, N, D)).
        seed: seed of the stream; None takes ``torch.initial_seed()`` at the start of fit.
    """

    def __init__(
        self,
        layers: list[str] | None = None,
        shuffle_rate: float = 0.1,
        token_dim: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= shuffle_rate <= 1.0:
            raise ValueError(f"shuffle_rate is a probability and must lie in [0, 1], got {shuffle_rate}.")
        if token_dim < 1:
            raise ValueError(f"token_dim must be >= 1 (dim 0 is the batch), got {token_dim}.")
        self.layers = list(layers) if layers is not None else None
        self.shuffle_rate = shuffle_rate
        self.token_dim = token_dim
        self.seed = seed
        self.probabilities: list[float] = []
        self.last_permutations: dict[int, torch.Tensor] = {}
        self._modules: list[nn.Module] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stream: CounterStream | None = None
        self._restored: dict[str, int] | None = None
        self._shuffle: list[bool] = []
        self._batch_seed = 0
        self._active = False

    # -- setup --------------------------------------------------------------------------------
    def _resolve_layers(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Module]]:
        modules = dict(pl_module.named_modules())
        if self.layers is not None:
            missing = [n for n in self.layers if n not in modules]
            if missing:
                raise ValueError(
                    f"TokenShuffle: layers {missing} are not in the model; use names from named_modules()."
                )
            return [(n, modules[n]) for n in self.layers]
        parents = [name.rsplit(".", 1)[0] for name, _ in find_attention_modules(pl_module) if "." in name]
        if not parents:
            raise ValueError(
                f"TokenShuffle found no attention blocks in {type(pl_module).__name__}; name the layers to shuffle "
                "around with layers=['...'] (dotted names from named_modules(), in depth order)."
            )
        return [(n, modules[n]) for n in parents]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._handles:
            return
        chosen = self._resolve_layers(pl_module)
        self._modules = [m for _, m in chosen]
        self.probabilities = layer_shuffle_probabilities(len(self._modules), self.shuffle_rate)
        for position, module in enumerate(self._modules):
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(position)))
            self._handles.append(module.register_forward_hook(self._post_hook(position)))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            for handle in self._handles:
                handle.remove()
            self._handles, self._modules, self._active = [], [], False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_stream(trainer.global_rank)

    # -- per batch ----------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        generator = self._stream.generator(torch.device("cpu"))
        draws = torch.rand(len(self._modules), generator=generator, dtype=torch.float64)
        self._shuffle = [bool(u < p) for u, p in zip(draws.tolist(), self.probabilities)]  # CPU: no device sync
        self._batch_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.last_permutations = {}
        self._active = True
        self._stream.advance()  # before any checkpoint of this step is written, as MixingCallback does

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._active = False

    def _permutation(self, position: int, length: int, device: torch.device) -> torch.Tensor:
        permutation = self.last_permutations.get(position)
        if permutation is None or permutation.numel() != length:
            generator = torch.Generator().manual_seed(self._batch_seed + position)
            permutation = torch.randperm(length, generator=generator).to(device)
            self.last_permutations[position] = permutation
        return permutation

    def _pre_hook(self, position: int):
        def hook(module, args):
            if not (self._active and module.training and self._shuffle[position]) or not args:
                return None
            first = args[0]
            if not isinstance(first, torch.Tensor) or first.dim() <= self.token_dim:
                return None
            length = first.shape[self.token_dim]
            permutation = self._permutation(position, length, first.device)
            return tuple(self._apply(a, permutation, length) for a in args)

        return hook

    def _post_hook(self, position: int):
        def hook(module, args, output):
            permutation = self.last_permutations.get(position)
            if not (self._active and module.training and self._shuffle[position]) or permutation is None:
                return None
            inverse = inverse_permutation(permutation)
            if isinstance(output, torch.Tensor):
                return self._apply(output, inverse, permutation.numel())
            if isinstance(output, (tuple, list)):
                return type(output)(self._apply(o, inverse, permutation.numel()) for o in output)
            return None

        return hook

    def _apply(self, value: Any, permutation: torch.Tensor, length: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > self.token_dim and value.shape[self.token_dim] == length:
            return permute_tokens(value, permutation, self.token_dim)
        return value
