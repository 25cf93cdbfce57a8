"""Attention maps of a vision transformer, recomputed from q and k in forward hooks (torch only).

Fused attention (``F.scaled_dot_product_attention``, used by timm and by ``nn.MultiheadAttention``
with ``need_weights=False``) never materialises the softmax weights. The hooks here recompute them
from the block's own queries and keys during the network's normal forward pass, without a second
forward of the network:

* **timm-style attention** (timm's ``Attention``, the :class:`~lightning_mix.demos.TinyViT` demo,
  any module with a ``qkv`` ``nn.Linear`` and an integer ``num_heads``): a hook on ``qkv`` reads its
  output, splits q and k, applies the module's ``q_norm``/``k_norm`` when it has them, and computes
  ``softmax(q k^T * scale)``. No projection is recomputed.
* **``nn.MultiheadAttention``** (torchvision's ``VisionTransformer``): a hook on the module reads
  its ``query``/``key`` arguments and recomputes the q and k projections from ``in_proj_weight``
  (or ``q_proj_weight``/``k_proj_weight``); the v projection and the output are not recomputed.
* **your own modules**: pass ``attention_fn(module, args, kwargs, output) -> Tensor`` returning the
  attention map (B, H, N, N) or (B, N, N) of that call.

``rows="cls"`` computes only the first query's row (the class token's attention, (B, H, N)), which
costs O(N d) per head instead of O(N^2 d); ``rows="all"`` gives the full map (B, H, N, N). Maps are
computed without gradient (the authors of TransMix and TL-Align detach them too) and in float32.
Attention masks, attention dropout and rotary embeddings are not applied: the maps are the
softmax weights of a plain (unmasked) ViT block before attention dropout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "AttentionCapture",
    "AttentionFn",
    "Rows",
    "attention_from_qk",
    "find_attention_modules",
    "is_timm_style_attention",
    "multihead_attention_map",
    "resolve_attention_modules",
    "timm_style_attention_map",
]

Rows = Literal["cls", "all"]
AttentionFn = Callable[[nn.Module, tuple, dict, Any], torch.Tensor]


def attention_from_qk(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale)`` over the last dim, in float32: q (..., M, d), k (..., N, d) -> (..., M, N)."""
    with torch.autocast(q.device.type, enabled=False):  # float32 even inside a bf16/fp16 autocast region
        scores = torch.matmul(q.float() * scale, k.float().transpose(-2, -1))
        return scores.softmax(dim=-1)


def is_timm_style_attention(module: nn.Module) -> bool:
    """True for a module with a ``qkv`` ``nn.Linear`` (q, k, v stacked in its output) and an int ``num_heads``."""
    return isinstance(getattr(module, "qkv", None), nn.Linear) and isinstance(getattr(module, "num_heads", None), int)


def timm_style_attention_map(module: nn.Module, qkv_out: torch.Tensor, rows: Rows = "cls") -> torch.Tensor:
    """The attention map of a timm-style module from its ``qkv`` output (B, N, 3 * H * d).

    Follows timm's ``Attention.forward``: reshape to (3, B, H, N, d), apply ``q_norm``/``k_norm``
    when present, scale ``module.scale`` (else ``d ** -0.5``). Returns (B, H, N) for ``rows="cls"``
    (the first token's row), (B, H, N, N) for ``rows="all"``.
    """
    b, n, width = qkv_out.shape
    heads = module.num_heads
    head_dim = width // (3 * heads)
    q, k = qkv_out.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)[:2].unbind(0)  # (B, H, N, d)
    if rows == "cls":
        q = q[:, :, :1]
    q_norm, k_norm = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
    if q_norm is not None:
        q = q_norm(q)
    if k_norm is not None:
        k = k_norm(k)
    scale = float(getattr(module, "scale", head_dim**-0.5))
    attention = attention_from_qk(q, k, scale)
    return attention[:, :, 0] if rows == "cls" else attention


def _projection(module: nn.MultiheadAttention, x: torch.Tensor, which: int) -> torch.Tensor:
    e = module.embed_dim
    if module.in_proj_weight is not None:
        weight = module.in_proj_weight[which * e : (which + 1) * e]
    else:
        weight = module.q_proj_weight if which == 0 else module.k_proj_weight
    bias = module.in_proj_bias[which * e : (which + 1) * e].float() if module.in_proj_bias is not None else None
    return nn.functional.linear(x, weight.float(), bias)


def multihead_attention_map(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    rows: Rows = "cls",
) -> torch.Tensor:
    """The attention map of an ``nn.MultiheadAttention`` call, from its ``query`` and ``key``.

    Recomputes the q and k in-projections as the module does (``batch_first`` honoured), scale
    ``head_dim ** -0.5``. Returns (B, H, N) for ``rows="cls"``, (B, H, M, N) for ``rows="all"``.
    """
    if not module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    if rows == "cls":
        query = query[:, :1]
    b, m, _ = query.shape
    n = key.shape[1]
    heads, head_dim = module.num_heads, module.head_dim
    with torch.autocast(query.device.type, enabled=False):
        query, key = query.float(), key.float()
        q = _projection(module, query, 0).reshape(b, m, heads, head_dim).transpose(1, 2)
        k = _projection(module, key, 1).reshape(b, n, heads, head_dim).transpose(1, 2)
    attention = attention_from_qk(q, k, head_dim**-0.5)
    return attention[:, :, 0] if rows == "cls" else attention


def find_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules this file recognises, in registration order (timm-style or ``nn.MultiheadAttention``).

    A recognised module's children are not searched (timm's ``qkv`` is not listed on its own).
    """
    found: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, nn.MultiheadAttention) or is_timm_style_attention(module):
            found.append((name, module))
            inside.append(name)
    return found


def resolve_attention_modules(
    model: nn.Module, names: Sequence[str] | None = None, has_attention_fn: bool = False
) -> list[tuple[str, nn.Module]]:
    """The attention modules to hook: the named ones (dotted names of ``model.named_modules()``), or all
    recognised ones when ``names`` is None. Raises a ValueError naming the fix when none is usable.
    """
    modules = dict(model.named_modules())
    if names is not None:
        missing = [n for n in names if n not in modules]
        if missing:
            candidates = [n for n, _ in find_attention_modules(model)] or list(modules)[:20]
            raise ValueError(
                f"attention modules {missing} are not in the model; give dotted names from "
                f"model.named_modules(), e.g. {candidates[-3:]}."
            )
        chosen = [(n, modules[n]) for n in names]
        if not has_attention_fn:
            unknown = [n for n, m in chosen if not (isinstance(m, nn.MultiheadAttention) or is_timm_style_attention(m))]
            if unknown:
                raise ValueError(
                    f"modules {unknown} are neither timm-style attention (a `qkv` nn.Linear and an int "
                    "`num_heads`) nor nn.MultiheadAttention; pass attention_fn(module, args, kwargs, output) "
                    "that returns their attention map (B, H, N, N)."
                )
        return chosen
    found = find_attention_modules(model)
    if not found and not has_attention_fn:
        raise ValueError(
            f"no attention module found in {type(model).__name__}: recognised are timm-style attention "
            "(a `qkv` nn.Linear and an int `num_heads`: timm's VisionTransformer, lightning_mix.demos.TinyViT) "
            "and nn.MultiheadAttention (torchvision's VisionTransformer). Name your model's attention modules "
            "(attention_modules=[...]) and pass attention_fn(module, args, kwargs, output) that returns "
            "their attention map (B, H, N, N)."
        )
    if not found:
        raise ValueError("attention_fn is given but attention_modules is not: name the modules it reads.")
    return found


def _normalise(attention: torch.Tensor, rows: Rows) -> torch.Tensor:
    if attention.dim() == 3:  # (B, N, N): one head
        attention = attention.unsqueeze(1)
    if attention.dim() != 4:
        raise ValueError(
            f"attention_fn must return the attention map (B, H, N, N) or (B, N, N), got shape {tuple(attention.shape)}."
        )
    attention = attention.detach().float()
    return attention[:, :, 0] if rows == "cls" else attention


class AttentionCapture:
    """Forward hooks that recompute the attention maps of chosen modules during the normal forward.

    Example::

        import timm
        from lightning_mix.mixing.attention import AttentionCapture, find_attention_modules

        model = timm.create_model("vit_tiny_patch16_224", num_classes=10)
        last = find_attention_modules(model)[-1:]
        with AttentionCapture([m for _, m in last], rows="cls") as capture:
            logits = model(images)
        cls_attention = capture.maps[0]          # (B, heads, tokens): the class token's row

    Args:
        modules: the attention modules (see :func:`find_attention_modules`).
        rows: ``"cls"`` for the first token's row (B, H, N), ``"all"`` for the full map (B, H, N, N).
        attention_fn: for other modules, ``fn(module, args, kwargs, output) -> (B, H, N, N)``.
        on_capture: called as ``on_capture(position, attention)`` right after module ``position``'s
            map is computed (inside the forward pass), e.g. to use it before the loss is computed.

    ``maps[i]`` holds the last map of ``modules[i]`` (None before its first call); :meth:`clear`
    empties them. ``enabled = False`` makes the hooks do nothing (e.g. outside training steps).
    Hooks are registered by :meth:`attach` (or ``with``) and removed by :meth:`remove` through their
    handles.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        rows: Rows = "cls",
        attention_fn: AttentionFn | None = None,
        on_capture: Callable[[int, torch.Tensor], None] | None = None,
    ) -> None:
        if rows not in ("cls", "all"):
            raise ValueError(f"rows must be 'cls' or 'all', got {rows!r}.")
        self.modules = list(modules)
        if not self.modules:
            raise ValueError("AttentionCapture needs at least one attention module.")
        if attention_fn is None:
            bad = [type(m).__name__ for m in self.modules if not self._recognised(m)]
            if bad:
                raise ValueError(
                    f"modules of type {bad} are neither timm-style attention nor nn.MultiheadAttention; "
                    "pass attention_fn(module, args, kwargs, output) returning their attention map."
                )
        self.rows = rows
        self.attention_fn = attention_fn
        self.on_capture = on_capture
        self.enabled = True
        self.maps: list[torch.Tensor | None] = [None] * len(self.modules)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @staticmethod
    def _recognised(module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention) or is_timm_style_attention(module)

    def attach(self) -> AttentionCapture:
        if self._handles:
            return self
        for position, module in enumerate(self.modules):
            if self.attention_fn is not None:
                handle = module.register_forward_hook(self._custom_hook(position), with_kwargs=True)
            elif isinstance(module, nn.MultiheadAttention):
                handle = module.register_forward_hook(self._multihead_hook(position), with_kwargs=True)
            else:
                handle = module.qkv.register_forward_hook(self._qkv_hook(position, module))
            self._handles.append(handle)
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self.maps = [None] * len(self.modules)

    def __enter__(self) -> AttentionCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _store(self, position: int, attention: torch.Tensor) -> None:
        self.maps[position] = attention
        if self.on_capture is not None:
            self.on_capture(position, attention)

    def _qkv_hook(self, position: int, attention_module: nn.Module):
        def hook(_linear, _args, output):
            if self.enabled:
                with torch.no_grad():
                    self._store(
                        position,
                        timm_style_attention_map(attention_module, output.detach(), self.rows),
                    )

        return hook

    def _multihead_hook(self, position: int):
        def hook(module, args, kwargs, _output):
            if self.enabled:
                query = args[0] if len(args) > 0 else kwargs["query"]
                key = args[1] if len(args) > 1 else kwargs["key"]
                with torch.no_grad():
                    self._store(
                        position,
                        multihead_attention_map(module, query.detach(), key.detach(), self.rows),
                    )

        return hook

    def _custom_hook(self, position: int):
        def hook(module, args, kwargs, output):
            if self.enabled:
                with torch.no_grad():
                    self._store(
                        position,
                        _normalise(self.attention_fn(module, args, kwargs, output), self.rows),
                    )

        return hook
