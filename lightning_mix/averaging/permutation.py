"""Permutation alignment by weight matching (Git Re-Basin, Ainsworth et al. 2023).

Two networks trained from different seeds compute the same function up to a permutation of their
hidden units, so averaging them naively mixes unrelated units. Weight matching finds, for every
*permutation group* (the output units of a layer, shared by every tensor that reads or writes them),
the permutation of model B's units that best matches model A's: it maximises
``sum_tensors <A, permuted B>`` by solving one linear assignment per group
(``scipy.optimize.linear_sum_assignment``) with the other groups fixed, sweeping the groups in random
order until a full sweep gains nothing. Permuting hidden units leaves B's function unchanged; after
alignment, interpolating A and B (then recomputing BatchNorm statistics with
:func:`lightning_mix.averaging.batchnorm.recalibrate_batchnorm`) loses far less than before.

Groups are inferred for sequential MLPs and CNNs (``Linear`` / ``ConvNd`` layers, optionally with
``BatchNormNd`` / ``LayerNorm`` after them, a flatten of a feature map before a ``Linear``); other
architectures (residual streams, attention) take an explicit :class:`PermutationSpec`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PermutationSpec", "infer_permutation_spec", "apply_permutation", "weight_matching", "interpolate"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class PermutationSpec:
    """Which tensor axes each permutation group permutes.

    ``groups`` maps a group name to entries ``(tensor name, axis)`` or ``(tensor name, axis, block)``:
    the axis has ``size * block`` entries made of ``size`` contiguous blocks of ``block`` entries
    (a ``Linear`` reading a flattened ``(C, H, W)`` feature map has ``block = H * W``), and the group
    permutes the blocks. Every entry of a group must have the same number of units.

    Example, a two-layer MLP ``fc1 -> relu -> fc2``::

        PermutationSpec({"hidden": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]})
    """

    groups: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def entries(self) -> dict[str, list[tuple[int, str, int]]]:
        """``{tensor name: [(axis, group, block), ...]}``."""
        out: dict[str, list[tuple[int, str, int]]] = {}
        for group, items in self.groups.items():
            for item in items:
                name, axis = item[0], int(item[1])
                block = int(item[2]) if len(item) > 2 else 1
                out.setdefault(name, []).append((axis, group, block))
        return out

    def sizes(self, state: Mapping[str, Tensor]) -> dict[str, int]:
        """Number of units of each group, checked against the tensors of ``state``."""
        sizes: dict[str, int] = {}
        for group, items in self.groups.items():
            for item in items:
                name, axis = item[0], int(item[1])
                block = int(item[2]) if len(item) > 2 else 1
                if name not in state:
                    raise KeyError(f"permutation group {group!r} names {name!r}, which the state dict lacks")
                length = state[name].shape[axis]
                if length % block:
                    raise ValueError(f"axis {axis} of {name!r} has {length} entries, not a multiple of block {block}")
                n = length // block
                if sizes.setdefault(group, n) != n:
                    raise ValueError(f"group {group!r} has {sizes[group]} units but axis {axis} of {name!r} has {n}")
        return sizes


def _leaf_order(module: nn.Module, example_input: Any) -> list[tuple[str, nn.Module]]:
    kinds = (nn.Linear, *_CONVS, *_NORMS)
    named = [(n, m) for n, m in module.named_modules() if isinstance(m, kinds)]
    if example_input is None:
        return named
    order: list[tuple[str, nn.Module]] = []
    names = {id(m): n for n, m in named}
    handles = [m.register_forward_pre_hook(lambda mod, args: order.append((names[id(mod)], mod))) for _, m in named]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*example_input) if isinstance(example_input, tuple) else module(example_input)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    if len({n for n, _ in order}) != len(order):
        raise ValueError("a layer runs more than once in forward (weight sharing); pass an explicit PermutationSpec")
    return order


_PASSTHROUGH_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Hardswish,
    nn.Mish,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_FIXED = "__fixed__"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {_FIXED: _FIXED}

    def add(self, g: str) -> str:
        self.parent.setdefault(g, g)
        return g

    def find(self, g: str) -> str:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if rb == _FIXED:  # the fixed group absorbs whatever touches it
            ra, rb = rb, ra
        self.parent[rb] = ra
        return ra


def _infer_with_fx(module: nn.Module, example_input: Any) -> PermutationSpec:
    """Trace ``module`` with ``torch.fx`` and propagate unit permutations through its graph.

    Every tensor gets (group, channel axis, block). ``Linear`` / ``ConvNd`` outputs start new groups;
    norms, activations, pooling and dropout pass them on; adding (or multiplying) two tensors
    unites their groups, so a residual stream shares one permutation; flattening multiplies the
    block. Groups reaching the model's inputs or outputs stay fixed. Any other operation raises.
    """
    import operator

    import torch.fx
    import torch.nn.functional as F
    from torch.fx.passes.shape_prop import ShapeProp

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    graph_module = torch.fx.symbolic_trace(module)
    was_training = module.training
    graph_module.eval()
    with torch.no_grad():
        ShapeProp(graph_module).propagate(*inputs)
    module.train(was_training)
    modules = dict(graph_module.named_modules())
    uf = _UnionFind()
    entries: dict[str, list[tuple[Any, ...]]] = {}
    state: dict[Any, tuple[str, int, int] | None] = {}  # node -> (group, channel axis, block); None: not a tensor

    def shape(node: Any) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise ValueError(f"{node.name} has no tensor shape")
        return tuple(meta.shape)

    def add_entry(group: str, item: tuple[Any, ...]) -> None:
        entries.setdefault(group, []).append(item)

    def same(node: Any, info: tuple[str, int, int] | None) -> None:
        state[node] = info

    def unite(node: Any, args: list[Any]) -> None:
        infos = [state.get(a) for a in args if isinstance(a, torch.fx.Node) and state.get(a) is not None]
        if not infos:
            state[node] = None
            return
        g, axis, block = infos[0]
        for other in infos[1:]:
            if other[1] != axis or other[2] != block:
                raise ValueError(f"{node.name} combines tensors with different unit layouts")
            g = uf.union(g, other[0])
        state[node] = (g, axis, block)

    elementwise_fns = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}
    passthrough_fns = {
        F.relu,
        torch.relu,
        F.gelu,
        F.silu,
        torch.tanh,
        torch.sigmoid,
        F.dropout,
        F.leaky_relu,
        F.max_pool2d,
        F.avg_pool2d,
        F.adaptive_avg_pool2d,
        F.max_pool1d,
        F.avg_pool1d,
    }
    passthrough_methods = {"relu", "tanh", "sigmoid", "contiguous", "clone", "float", "to"}
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            state[node] = (_FIXED, 1, 1)
        elif node.op == "get_attr":
            state[node] = None
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
            for out in outs:
                if isinstance(out, torch.fx.Node) and state.get(out) is not None:
                    uf.union(_FIXED, state[out][0])
        elif node.op == "call_module":
            layer = modules[node.target]
            prefix = f"{node.target}."
            src = state.get(node.args[0])
            if isinstance(layer, (nn.Linear, *_CONVS)):
                if isinstance(layer, _CONVS) and layer.groups != 1:
                    raise ValueError(f"{node.target!r} is a grouped convolution")
                if src is None:
                    raise ValueError(f"cannot tell which units feed {node.target!r}")
                in_shape = shape(node.args[0])
                consumed = len(in_shape) - 1 if isinstance(layer, nn.Linear) else 1
                if src[1] != consumed and not (src[1] == len(in_shape) - 1 and consumed == len(in_shape) - 1):
                    raise ValueError(f"{node.target!r} reads an axis that does not carry units")
                add_entry(uf.add(src[0]), (f"{prefix}weight", 1, src[2]))
                group = uf.add(f"P_{node.target}")
                add_entry(group, (f"{prefix}weight", 0))
                if layer.bias is not None:
                    add_entry(group, (f"{prefix}bias", 0))
                out_ndim = len(shape(node))
                same(node, (group, out_ndim - 1 if isinstance(layer, nn.Linear) else 1, 1))
            elif isinstance(layer, _NORMS):
                if src is None or src[2] != 1:
                    raise ValueError(f"cannot place norm layer {node.target!r}")
                if isinstance(layer, nn.LayerNorm) and (
                    len(layer.normalized_shape) != 1 or src[1] != len(shape(node)) - 1
                ):
                    raise ValueError(f"LayerNorm {node.target!r} does not normalise the unit axis alone")
                for tensor in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(layer, tensor, None) is not None:
                        add_entry(uf.add(src[0]), (f"{prefix}{tensor}", 0))
                same(node, src)
            elif isinstance(layer, _PASSTHROUGH_MODULES):
                same(node, src)
            elif isinstance(layer, nn.Flatten):
                if src is None or layer.start_dim != 1 or src[1] != 1:
                    raise ValueError(f"unsupported flatten {node.target!r}")
                in_shape = shape(node.args[0])
                same(node, (src[0], 1, src[2] * math.prod(in_shape[2:])))
            else:
                raise ValueError(f"unsupported layer {node.target!r} ({type(layer).__name__})")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            if target in elementwise_fns or target in ("add", "sub", "mul", "div", "add_", "mul_"):
                unite(node, list(node.args))
            elif target in passthrough_fns or target in passthrough_methods:
                same(node, state.get(node.args[0]))
            elif target in (torch.flatten, "flatten", "view", "reshape"):
                src = state.get(node.args[0])
                in_shape, out_shape = shape(node.args[0]), shape(node)
                if src is None or src[1] != 1 or len(out_shape) != 2 or out_shape[0] != in_shape[0]:
                    raise ValueError(f"unsupported reshape {node.name}")
                same(node, (src[0], 1, src[2] * math.prod(in_shape[2:])))
            elif target == "mean" or target is torch.mean:
                src = state.get(node.args[0])
                dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                dims = [dims] if isinstance(dims, int) else list(dims or [])
                ndim = len(shape(node.args[0]))
                if src is None or not dims or any((d % ndim) <= src[1] for d in dims):
                    raise ValueError(f"unsupported reduction {node.name}")
                same(node, src)
            elif target in (getattr, "size", "dim") or target is operator.getitem and state.get(node.args[0]) is None:
                state[node] = None
            else:
                raise ValueError(f"unsupported operation {node.name} ({target})")
    groups: dict[str, list[tuple[Any, ...]]] = {}
    fixed = uf.find(_FIXED)
    for group, items in entries.items():
        root = uf.find(group)
        if root == fixed:
            continue
        groups.setdefault(root, []).extend(items)
    return PermutationSpec(groups)


def infer_permutation_spec(module: nn.Module, example_input: Any = None) -> PermutationSpec:
    """Permutation groups of an MLP or CNN: one per hidden ``Linear`` / ``ConvNd`` output.

    With ``example_input``, the model is traced with ``torch.fx`` and the permutations are
    propagated through its graph: residual additions unite the groups of their operands, so a
    residual stream shares one permutation (ResNet-style blocks work). If tracing fails or meets
    an operation it does not know, or without ``example_input``, the layers are walked as a
    sequential chain (execution order when ``example_input`` is given, recorded with hooks, else
    registration order). Each hidden layer's output units form a group that also permutes
    the following norm layer's per-unit tensors and the next layer's input axis (in blocks when a
    feature map is flattened into a ``Linear``). The last layer's outputs are the network's and stay
    in place. With ``example_input``, the spec is checked: a randomly permuted copy must give the
    same outputs, else a ``ValueError`` asks for an explicit spec (residual connections, attention,
    reshapes the walk cannot see).
    """
    if example_input is not None:
        try:
            spec = _infer_with_fx(module, example_input)
        except Exception:  # noqa: BLE001 - any tracing failure falls back to the sequential walk
            spec = None
        if spec is not None:
            if spec.groups:
                _check_spec(module, spec, example_input)
            return spec
    groups: dict[str, list[tuple[Any, ...]]] = {}
    current: str | None = None
    current_size = 0
    for name, layer in _leaf_order(module, example_input):
        prefix = f"{name}." if name else ""
        if isinstance(layer, (nn.Linear, *_CONVS)):
            if isinstance(layer, _CONVS) and layer.groups != 1:
                raise ValueError(f"{name!r} is a grouped convolution; pass an explicit PermutationSpec")
            fan_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            if current is not None:
                if fan_in % current_size:
                    raise ValueError(
                        f"{name!r} reads {fan_in} inputs, not a multiple of the {current_size} units before it; "
                        "pass an explicit PermutationSpec"
                    )
                groups[current].append((f"{prefix}weight", 1, fan_in // current_size))
            current = f"P_{name}"
            current_size = layer.weight.shape[0]
            groups[current] = [(f"{prefix}weight", 0)]
            if layer.bias is not None:
                groups[current].append((f"{prefix}bias", 0))
        else:
            size = layer.normalized_shape[0] if isinstance(layer, nn.LayerNorm) else layer.num_features
            if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) != 1:
                raise ValueError(f"{name!r} normalises over several axes; pass an explicit PermutationSpec")
            if current is None or size != current_size:
                raise ValueError(
                    f"cannot place norm layer {name!r} in a sequential chain; pass an explicit PermutationSpec"
                )
            for tensor in ("weight", "bias", "running_mean", "running_var"):
                if getattr(layer, tensor, None) is not None:
                    groups[current].append((f"{prefix}{tensor}", 0))
    if current is not None:
        del groups[current]  # the network's outputs keep their order
    spec = PermutationSpec(groups)
    if example_input is not None and groups:
        _check_spec(module, spec, example_input)
    return spec


def _check_spec(module: nn.Module, spec: PermutationSpec, example_input: Any) -> None:
    state = module.state_dict()
    gen = torch.Generator().manual_seed(0)
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.sizes(state).items()}
    permuted = copy.deepcopy(module)
    permuted.load_state_dict(apply_permutation(state, spec, perms))
    call = (lambda m: m(*example_input)) if isinstance(example_input, tuple) else (lambda m: m(example_input))
    module_mode = module.training
    module.eval()
    permuted.eval()
    try:
        with torch.no_grad():
            ref, out = call(module), call(permuted)
    finally:
        module.train(module_mode)
    if not torch.allclose(ref.float(), out.float(), rtol=1e-3, atol=1e-4 * float(ref.abs().max()) + 1e-6):
        raise ValueError(
            "the inferred permutation groups change the model's outputs (residual connections or reshapes the "
            "sequential walk cannot see); pass an explicit PermutationSpec"
        )


def _permute_axis(t: Tensor, axis: int, perm: Tensor, block: int) -> Tensor:
    if block == 1:
        return t.index_select(axis, perm.to(t.device))
    shape = t.shape
    view = t.reshape(*shape[:axis], -1, block, *shape[axis + 1 :])
    return view.index_select(axis, perm.to(t.device)).reshape(shape)


def apply_permutation(
    state: Mapping[str, Tensor], spec: PermutationSpec, perms: Mapping[str, Tensor], skip: str | None = None
) -> dict[str, Tensor]:
    """Permute ``state`` (``out[axis][i] = state[axis][perm[i]]`` per group); ``skip`` leaves one group out."""
    entries = spec.entries()
    out = dict(state)
    for name, axes in entries.items():
        t = state[name]
        for axis, group, block in axes:
            if group != skip:
                t = _permute_axis(t, axis, perms[group], block)
        out[name] = t
    return out


def _units_first(t: Tensor, axis: int, block: int, n: int) -> Tensor:
    # (n * block, ...) -> (n, block * ...): the blocks of one unit are contiguous along the axis
    return t.movedim(axis, 0).reshape(n, -1)


def weight_matching(
    model_a: nn.Module | Mapping[str, Tensor],
    model_b: nn.Module | Mapping[str, Tensor],
    spec: PermutationSpec | None = None,
    example_input: Any = None,
    max_sweeps: int = 100,
    seed: int = 0,
    return_permutations: bool = False,
    batchnorm_statistics: bool = False,
) -> Any:
    """Permute model B's hidden units to match model A's (Git Re-Basin weight matching).

    The objective sums ``<A, permuted B>`` over the weights and biases of every group. BatchNorm's
    ``running_mean`` / ``running_var`` are permuted with their units but, by default, left out of
    the objective, as the authors' code (git-re-basin's ``weight_matching`` matches parameters
    only); ``batchnorm_statistics=True`` includes them (this library's earlier behaviour).

    Args:
        model_a: the reference (a module, or a state dict with ``spec``).
        model_b: the model to permute; same architecture. It is not modified.
        spec: the permutation groups; inferred from ``model_a`` with :func:`infer_permutation_spec`
            when it is a module and ``spec`` is ``None``.
        example_input: an input for ``model_a`` used to infer and check the groups (recommended).
        max_sweeps: upper bound on coordinate-descent sweeps over the groups (it stops at the
            first sweep that improves no group).
        seed: orders the groups in each sweep.
        return_permutations: also return ``{group: permutation}``.
        batchnorm_statistics: include BatchNorm running statistics in the matching objective
            (``False``, the authors' choice: they describe data, not what the weights compute).

    Returns:
        B permuted, of B's kind: a deep copy of the module or a new state dict (integer buffers
        and tensors outside the groups unchanged); with ``return_permutations``, a pair.
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "weight_matching needs scipy for the linear assignment (scipy.optimize.linear_sum_assignment): "
            "pip install scipy"
        ) from err

    if spec is None:
        if not isinstance(model_a, nn.Module):
            raise ValueError("pass spec= (a PermutationSpec) when the models are state dicts")
        spec = infer_permutation_spec(model_a, example_input)
    state_a = model_a.state_dict() if isinstance(model_a, nn.Module) else dict(model_a)
    state_b = model_b.state_dict() if isinstance(model_b, nn.Module) else dict(model_b)
    sizes = spec.sizes(state_a)
    spec.sizes(state_b)
    entries = spec.entries()
    statistics = ("running_mean", "running_var")
    in_objective = {n for n in entries if batchnorm_statistics or n.rsplit(".", 1)[-1] not in statistics}
    a32 = {n: state_a[n].detach().float().cpu() for n in entries}
    b32 = {n: state_b[n].detach().float().cpu() for n in entries}
    perms = {g: torch.arange(n) for g, n in sizes.items()}
    by_group: dict[str, list[tuple[str, int, int]]] = {g: [] for g in sizes}
    for name, axes in entries.items():
        for axis, group, block in axes:
            by_group[group].append((name, axis, block))
    gen = torch.Generator().manual_seed(seed)
    names = list(sizes)
    for _ in range(max_sweeps):
        improved = False
        for idx in torch.randperm(len(names), generator=gen).tolist():
            group = names[idx]
            n = sizes[group]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis, block in by_group[group]:
                if name not in in_objective:
                    continue
                wb = b32[name]
                for other_axis, other_group, other_block in entries[name]:
                    if other_group != group:
                        wb = _permute_axis(wb, other_axis, perms[other_group], other_block)
                cost += (_units_first(a32[name], axis, block, n) @ _units_first(wb, axis, block, n).T).double()
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            rows = torch.arange(n)
            old_score, new_score = cost[rows, perms[group]].sum(), cost[rows, new].sum()
            if new_score > old_score + 1e-12 * old_score.abs().clamp_min(1.0):
                perms[group] = new
                improved = True
        if not improved:
            break
    permuted = apply_permutation(state_b, spec, perms)
    if isinstance(model_b, nn.Module):
        result: Any = copy.deepcopy(model_b)
        result.load_state_dict(permuted)
    else:
        result = permuted
    return (result, perms) if return_permutations else result


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    t: float = 0.5,
    batches: Iterable[Any] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    """A new module with weights ``(1 - t) A + t B`` (float32 arithmetic) and BatchNorm recomputed.

    Use it after :func:`weight_matching` (``interpolate(a, weight_matching(a, b), 0.5, loader)``):
    the running statistics of an interpolated model describe neither endpoint, so with ``batches``
    they are recomputed by :func:`lightning_mix.averaging.batchnorm.recalibrate_batchnorm` (one
    pass; ``forward(module, batch)`` feeds a batch). Integer buffers come from ``model_a``.
    """
    from lightning_mix.averaging.batchnorm import recalibrate_batchnorm

    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    mixed = {}
    for name, ta in state_a.items():
        tb = state_b[name]
        if ta.shape != tb.shape:
            raise ValueError(f"shape mismatch at {name!r}: {tuple(ta.shape)} vs {tuple(tb.shape)}")
        mixed[name] = torch.lerp(ta.float(), tb.float(), t).to(ta.dtype) if ta.is_floating_point() else ta.clone()
    out = copy.deepcopy(model_a)
    out.load_state_dict(mixed)
    if batches is not None:
        recalibrate_batchnorm(out, batches, forward)
    return out
