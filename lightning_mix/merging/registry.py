"""The merge-method registry: one :class:`MergeMethod` per method, looked up by name.

A method declares its name (the same word as its Python function and its ``lightning-mix merge
--method`` value), whether it needs a base model, its parameters (a dataclass whose fields carry
defaults and docs, validated in ``__post_init__``), its per-tensor combine function and the
extra per-model inputs it reads (Fishers, Gram matrices). :func:`~lightning_mix.merging.merge`
runs any registered method; the command line builds its flags from the registry.

Adding a method is one new module in ``lightning_mix/merging/methods/`` that calls
:func:`register` (the package imports every module there), plus its tests.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = [
    "MergeError",
    "MergeMethod",
    "TensorInputs",
    "REGISTRY",
    "register",
    "get_method",
    "param",
    "check_param_names",
]


class MergeError(ValueError):
    """A merge's options are invalid for its method or its inputs (a parameter, a pattern, a count, a value)."""


@dataclass
class TensorInputs:
    """What a combine function receives for one tensor.

    Attributes:
        name: the tensor's name in the state dict.
        tensors: the inputs in float32 on the merge device, base first when the method has one;
            combine functions must not modify them in place.
        extra: per-model auxiliary tensors for this name (``{"fishers": [...]}``), present only
            where every model has one.
        scratch: a dict shared by every tensor of one merge (a random generator, for example).
    """

    name: str
    tensors: list[Tensor]
    extra: dict[str, list[Tensor]] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: registry, function and command-line name.
        summary: one line for ``--help`` and the docs.
        reference: the paper (and the code it was compared against).
        params: dataclass type of the method's parameters (fields with defaults and ``doc``
            metadata; ``__post_init__`` rejects invalid values; an optional
            ``check(num_models)`` rejects values that depend on the number of models).
        combine: ``combine(inputs: TensorInputs, params) -> Tensor``, the merged float32 tensor.
        needs_base: whether the first input is a base model the task vectors are taken from.
        min_models: fewest models (not counting the base).
        max_models: most models (``None``: no limit).
        extra_inputs: names of per-model auxiliary state dicts the method needs (``("fishers",)``).
        prepare: optional ``prepare(extra_sources, params) -> dict`` run once before the loop
            (whole-model statistics such as a Fisher's norm); its result seeds ``scratch``.
    """

    name: str
    summary: str
    reference: str
    params: type
    combine: Callable[[TensorInputs, Any], Tensor]
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    extra_inputs: tuple[str, ...] = ()
    prepare: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None


REGISTRY: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add ``method`` to :data:`REGISTRY` (names are unique); returns it."""
    if method.name in REGISTRY:
        raise ValueError(f"a merge method named {method.name!r} is already registered")
    if not dataclasses.is_dataclass(method.params):
        raise TypeError(f"{method.name}: params must be a dataclass type, got {method.params!r}")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``; the error lists the registered names."""
    import lightning_mix.merging.methods  # noqa: F401  (registers every method)

    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown merge method {name!r}{hint}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def param(default: Any, doc: str) -> Any:
    """A parameter field with its default and the one-line ``doc`` shown by ``--help`` and the docs."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults (parameters are immutable)")
    return field(default=default, metadata={"doc": doc})


def check_param_names(params_type: type, keys: Mapping[str, Any] | list[str], where: str) -> None:
    """Raise :class:`MergeError` naming any key that is not a field of ``params_type`` (with the closest field)."""
    names = [f.name for f in dataclasses.fields(params_type)]
    for key in keys:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise MergeError(f"{where}: unknown parameter {key!r}; {hint}parameters: {', '.join(names) or 'none'}")
