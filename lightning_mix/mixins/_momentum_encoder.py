"""The momentum (EMA) encoder shared by the learned-mixing mixins (AutoMix, SAMix, AdAutoMix).

:class:`MomentumEncoderBase` holds what these methods share: the mixing network's attribute, the
float32 momentum copy of the user's network (moved by :func:`~lightning_mix.averaging.ema.ema_update_`),
the features-only forward of that copy at the feature layer, the logits of the network run with
the copy's weights (``torch.func.functional_call``), the seeded draw stream and their checkpoint
entry. The subclasses set the options (``automix_*`` attributes) in their ``configure_*`` method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_mix.averaging.ema import ema_update_
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.mixing.mix_block import automix_momentum
from lightning_mix.mixins._mixin_state import lazy_stream, restore_stream

__all__ = ["MomentumEncoderBase"]


class _FeaturesReady(Exception):
    """Raised by the feature hook to stop a features-only forward once the feature layer has run."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__("features ready")
        self.features = features


class _MethodCall(nn.Module):
    """Calls ``module.<method>(x)``, so ``torch.func.functional_call`` can run any method with other weights."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self.method)(inputs)


class MomentumEncoderBase:
    """The momentum copy, feature hook, draw stream and checkpoint entry of the learned-mixing mixins.

    Subclasses name the mixing network's attribute (``_automix_block_name``, excluded from the copy),
    the checkpoint key (``_automix_checkpoint_key``) and their configure method (for error messages),
    and extend :meth:`_automix_check` (run at fit start).
    """

    _automix_block_name: str = "automix_block"
    _automix_checkpoint_key: str = "automix"
    _automix_configure_name: str = "configure_automix"

    automix_feature_layer: str = ""
    automix_feature_channels: int = 0
    automix_base_momentum: float = 0.999
    automix_end_momentum: float = 0.999999
    automix_momentum_start: float = 0.1
    automix_logits_method: str = "forward"
    automix_seed: int | None = None

    def _automix_block(self) -> nn.Module:
        block = getattr(self, self._automix_block_name, None)
        if block is None:
            raise RuntimeError(
                f"{type(self).__name__}: call self.{self._automix_configure_name}(feature_layer=..., "
                "feature_channels=...) in __init__."
            )
        return block

    def _automix_check(self) -> None:
        """Fit-start checks shared by the family: the block is built and the feature layer exists."""
        self._automix_block()
        modules = dict(self.named_modules())
        if self.automix_feature_layer not in modules:
            names = [n for n in modules if n and not n.startswith(self._automix_block_name)][:20]
            raise ValueError(
                f"feature_layer {self.automix_feature_layer!r} is not a layer of the module; some names: {names}."
            )

    def on_fit_start(self) -> None:
        parent = getattr(super(), "on_fit_start", None)
        if parent is not None:
            parent()
        self._automix_check()

    def _automix_stream(self) -> CounterStream:
        return lazy_stream(self, "automix", self.automix_seed)

    def _automix_online(self) -> tuple[list[str], list[torch.Tensor], list[str], list[torch.Tensor]]:
        """Names and live tensors of the network's parameters and buffers, the Mix Block excluded."""
        prefix = self._automix_block_name + "."
        params = [(n, p) for n, p in self.named_parameters() if not n.startswith(prefix)]
        buffers = [(n, b) for n, b in self.named_buffers() if not n.startswith(prefix)]
        return [n for n, _ in params], [p for _, p in params], [n for n, _ in buffers], [b for _, b in buffers]

    def automix_momentum_state(self) -> dict[str, torch.Tensor]:
        """The momentum copy, name -> tensor (parameters in float32, then buffers); created on first use."""
        state = getattr(self, "_automix_momentum_state", None)
        if state is None:
            param_names, params, buffer_names, buffers = self._automix_online()
            restored = getattr(self, "_automix_restored_momentum", None)
            state = {}
            for name, tensor in zip(param_names, params):
                source = restored[name] if restored is not None else tensor.detach()
                state[name] = source.to(device=tensor.device, dtype=torch.float32, copy=True)
            for name, tensor in zip(buffer_names, buffers):
                source = restored[name] if restored is not None else tensor.detach()
                state[name] = source.to(device=tensor.device, dtype=tensor.dtype, copy=True)
            self._automix_momentum_state = state
            self._automix_param_names = param_names
            if not hasattr(self, "_automix_synced_step"):
                self._automix_synced_step = None
        elif state:
            device = next(self.parameters()).device
            if next(iter(state.values())).device != device:  # the module moved since the copy was made
                for name in state:
                    state[name] = state[name].to(device)
        return state

    def automix_sync_momentum(self, step: int, total_steps: float) -> None:
        """Bring the momentum copy up to optimiser step ``step``: one EMA update if it lags behind.

        The update uses the network's current parameters and ``automix_momentum(step - 1, total_steps)``.
        The first call only records ``step`` (the copy starts equal to the network).
        """
        state = self.automix_momentum_state()
        if self._automix_synced_step is None:
            self._automix_synced_step = step
            return
        if step == self._automix_synced_step:
            return
        if total_steps == float("inf"):
            momentum = self.automix_base_momentum
        else:
            momentum = automix_momentum(
                step - 1,
                int(total_steps),
                self.automix_base_momentum,
                self.automix_end_momentum,
                self.automix_momentum_start,
            )
        names, params, _, _ = self._automix_online()
        ema_update_([state[n] for n in names], params, momentum)
        self._automix_synced_step = step

    def _automix_call(self, state: dict[str, torch.Tensor] | None, inputs: torch.Tensor) -> torch.Tensor:
        method = getattr(self, self.automix_logits_method)
        if state is None:
            return method(inputs)
        dtype = next(self.parameters()).dtype
        if dtype != torch.float32:  # true half precision: run the float32 copy in the network's dtype
            names = set(self._automix_param_names)
            state = {n: (t.to(dtype) if n in names else t) for n, t in state.items()}
        wrapper = _MethodCall(self, self.automix_logits_method)
        return torch.func.functional_call(wrapper, {"module." + n: t for n, t in state.items()}, (inputs,))

    def automix_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The momentum copy's feature map at ``feature_layer`` (no gradient); the forward stops there."""
        layer = dict(self.named_modules())[self.automix_feature_layer]

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _FeaturesReady(output)

        handle = layer.register_forward_hook(stop)
        try:
            with torch.no_grad():
                self._automix_call(self.automix_momentum_state(), inputs)
        except _FeaturesReady as ready:
            return ready.features
        finally:
            handle.remove()
        raise RuntimeError(
            f"{self.automix_logits_method}() never ran the feature layer {self.automix_feature_layer!r}; "
            "choose a layer on the path from inputs to logits."
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        state = getattr(self, "_automix_momentum_state", None)
        stream = getattr(self, "_automix_rng", None)
        if state is None and stream is None:
            return
        checkpoint[self._automix_checkpoint_key] = {
            "momentum": {n: t.detach().clone() for n, t in state.items()} if state is not None else None,
            "synced_step": getattr(self, "_automix_synced_step", None),
            "seed": stream.seed if stream is not None else None,
            "counter": stream.counter if stream is not None else 0,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        saved = checkpoint.get(self._automix_checkpoint_key)
        if not saved:
            return
        seed = (
            saved["seed"]
            if saved["seed"] is not None
            else (self.automix_seed if self.automix_seed is not None else torch.initial_seed())
        )
        restore_stream(self, "automix", seed, saved["counter"])
        self._automix_restored_momentum = saved["momentum"]
        self._automix_momentum_state = None
        self._automix_synced_step = saved["synced_step"]
