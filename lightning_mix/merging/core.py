"""The per-tensor merge loop shared by every registered method.

:func:`merge` walks the names of a reference model (the base, or the first model) one tensor at a
time: it reads that tensor from every source, casts it to float32 on ``options.device``, lets the
method combine the tensors, casts the result to the output dtype, and moves on. Peak memory is the
output plus a few copies of the largest tensor, never a flattened copy of whole models.

What is not merged is copied from the reference: integer and boolean buffers
(``num_batches_tracked``, index buffers) and names left out by ``include`` / ``exclude``.

Everything that can be checked before the loop is: the method's parameters and overrides (names
and values), the number of models, the names, shapes and dtypes of the inputs, and that every
``include`` / ``exclude`` / override pattern matches some tensor. A non-finite merged value is an
error naming the tensor, never written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor

from lightning_mix.checkpoint_io import check_compatible
from lightning_mix.merging.registry import MergeError, MergeMethod, TensorInputs, check_param_names, get_method
from lightning_mix.merging.sources import StateDictLike, StateDictSource

__all__ = ["MergeOptions", "Progress", "merge", "resolve_params"]

Progress = Callable[[int, int, str], None]


def _patterns(patterns: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if patterns is None:
        return None
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


@dataclass(frozen=True)
class MergeOptions:
    """Options every merge method shares.

    Attributes:
        include: glob patterns (``fnmatch``) of names to merge; ``None`` merges every
            floating-point tensor. Names not included are copied from the reference model.
        exclude: glob patterns of names not to merge (copied from the reference model).
        overrides: ``{pattern: {parameter: value}}``; every pattern matching a name updates the
            method's parameters for that name, in order (``{"head.*": {"density": 0.5}}``).
        dtype: output dtype of merged floating-point tensors; ``None`` keeps the reference's.
        device: where the per-tensor arithmetic runs (a GPU makes large merges faster); the
            result is returned on the CPU.
        progress: called as ``progress(done, total, name)`` after each tensor.

    Every pattern must match at least one tensor name, or the merge is refused (a typo would
    otherwise silently merge everything, or nothing).
    """

    include: str | tuple[str, ...] | None = None
    exclude: str | tuple[str, ...] | None = None
    overrides: Mapping[str, Mapping[str, Any]] | None = None
    dtype: torch.dtype | None = None
    device: str | torch.device = "cpu"
    progress: Progress | None = None


def resolve_params(
    method: MergeMethod, params: Any, num_models: int, overrides: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    """Validate ``params`` and every override against ``method``; return ``{pattern: params}`` per override.

    Raises:
        MergeError: a parameter name that the method does not have (with the closest one), or a
            value it refuses (raised by the dataclass or its ``check(num_models)``).
    """
    if not isinstance(params, method.params):
        raise MergeError(f"{method.name} takes {method.params.__name__} parameters, got {type(params).__name__}")
    check = getattr(params, "check", None)
    if check is not None:
        check(num_models)
    resolved: dict[str, Any] = {}
    for pattern, update in (overrides or {}).items():
        check_param_names(method.params, list(update), f"override {pattern!r} of {method.name}")
        try:
            resolved[pattern] = update
            candidate = dataclasses.replace(params, **update)
        except (TypeError, ValueError) as err:
            raise MergeError(f"override {pattern!r}: {err}") from None
        if check is not None:
            candidate.check(num_models)
    return resolved


def _matches(name: str, patterns: tuple[str, ...] | None) -> bool:
    return patterns is not None and any(fnmatchcase(name, p) for p in patterns)


def _check_patterns_match(names: Sequence[str], kind: str, patterns: Iterable[str] | None) -> None:
    for pattern in patterns or ():
        if not any(fnmatchcase(n, pattern) for n in names):
            sample = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise MergeError(
                f"{kind} pattern {pattern!r} matches no tensor name (names look like: {sample}); fix the pattern"
            )


def merge(
    method: str | MergeMethod,
    models: Sequence[StateDictLike],
    params: Any = None,
    options: MergeOptions | None = None,
    *,
    base: StateDictLike | None = None,
    extra: Mapping[str, Sequence[StateDictLike]] | None = None,
) -> dict[str, Tensor]:
    """Merge ``models`` (and ``base``) with a registered method, tensor by tensor.

    Args:
        method: a registered method or its name (see :data:`~lightning_mix.merging.REGISTRY`).
        models: state dicts, modules or checkpoint paths (read lazily), all of one architecture.
        params: the method's parameter dataclass (its defaults when ``None``).
        options: the shared :class:`MergeOptions`.
        base: the base (pre-trained) model, for methods that need one.
        extra: the method's per-model auxiliary inputs (``{"fishers": [...]}``), one per model.

    Returns:
        The merged state dict on the CPU, in the reference model's order.

    Raises:
        MergeError: invalid parameters, overrides, patterns or model counts, or a non-finite
            merged value.
        lightning_mix.checkpoint_io.IncompatibleCheckpointsError: the inputs differ in names,
            shapes or dtypes.
    """
    method = get_method(method) if isinstance(method, str) else method
    options = options or MergeOptions()
    models = list(models)
    params = method.params() if params is None else params
    if method.needs_base and base is None:
        raise MergeError(f"{method.name} needs a base model (the model the others were fine-tuned from)")
    if not method.needs_base and base is not None:
        raise MergeError(f"{method.name} takes no base model; pass every model in models")
    if len(models) < method.min_models:
        raise MergeError(f"{method.name} needs at least {method.min_models} model(s) to merge, got {len(models)}")
    if method.max_models is not None and len(models) > method.max_models:
        raise MergeError(f"{method.name} merges at most {method.max_models} models, got {len(models)}")
    overrides = resolve_params(method, params, len(models), options.overrides)
    extra = dict(extra or {})
    missing = [k for k in method.extra_inputs if k not in extra]
    if missing or set(extra) - set(method.extra_inputs):
        raise MergeError(f"{method.name} needs the extra inputs {list(method.extra_inputs)}, got {sorted(extra)}")
    for key, values in extra.items():
        if len(values) != len(models):
            raise MergeError(f"got {len(values)} {key} for {len(models)} models; pass one per model")

    labels = [f"model {i}" for i in range(len(models))]
    inputs = [*([base] if method.needs_base else []), *models]
    labels = (["base"] if method.needs_base else []) + labels
    sources = [StateDictSource.open(m, label) for m, label in zip(inputs, labels)]
    names = check_compatible([s.tensors for s in sources], [s.label for s in sources])
    extra_sources = {k: [StateDictSource.open(v, f"{k} {i}") for i, v in enumerate(vs)] for k, vs in extra.items()}
    include_p, exclude_p = _patterns(options.include), _patterns(options.exclude)
    _check_patterns_match(names, "include", include_p)
    _check_patterns_match(names, "exclude", exclude_p)
    _check_patterns_match(names, "override", list(overrides))
    reference = sources[0]

    def merged_here(name: str) -> bool:
        selected = include_p is None or _matches(name, include_p)
        return selected and not _matches(name, exclude_p) and reference[name].is_floating_point()

    to_merge = [n for n in names if merged_here(n)]
    if not to_merge:
        raise MergeError(
            "no floating-point tensor is left to merge (include/exclude, or integer tensors only); the output "
            "would be a copy of the reference model: fix the patterns"
        )

    scratch: dict[str, Any] = dict(method.prepare(extra_sources, params)) if method.prepare is not None else {}
    out: dict[str, Tensor] = {}
    for i, name in enumerate(names):
        ref = reference[name]
        if not merged_here(name):
            out[name] = ref.detach().clone()
        else:
            p = params
            for pattern, update in overrides.items():
                if fnmatchcase(name, pattern):
                    p = dataclasses.replace(p, **update)
            tensors = [s[name].detach().to(device=options.device, dtype=torch.float32) for s in sources]
            aux = {
                k: [s[name].detach().to(device=options.device, dtype=torch.float32) for s in srcs]
                for k, srcs in extra_sources.items()
                if all(name in s for s in srcs)
            }
            merged = method.combine(TensorInputs(name, tensors, aux, scratch), p)
            if not bool(torch.isfinite(merged).all()):
                raise MergeError(
                    f"{method.name} produced non-finite values in {name!r} (inputs with nan/inf, or parameters that "
                    "overflow); nothing was written. Check the inputs or exclude that tensor"
                )
            out[name] = merged.to(dtype=options.dtype or ref.dtype).cpu()
            del tensors, merged
        if options.progress is not None:
            options.progress(i + 1, len(names), name)
    return out
