"""Model soups (Wortsman et al. 2022): uniform and greedy averages of fine-tuned weights.

Ingredients are state dicts, either held in memory or stored as files (``torch.save`` of a state
dict, or a Lightning checkpoint, whose ``"state_dict"`` is used). Files are loaded one at a time,
memory-mapped where possible, so a soup of K ingredients holds one float32 accumulator and one
ingredient, never K models:

- :func:`uniform_soup`: the (optionally weighted) mean of all ingredients;
- :func:`greedy_soup`: sort ingredients by a held-out metric, start from the best, and add the next
  one if the metric of the averaged model does not get worse (``strict=True``: only if it gets
  strictly better, the original rule). BatchNorm statistics can be recomputed before each
  evaluation through a ``recalibrate`` hook (see :func:`~lightning_mix.averaging.recalibrate_batchnorm`).

Floating tensors are averaged in float32 (float64 ones in float64) whatever their dtype, and cast
back at the end. Integer and boolean tensors (``num_batches_tracked``) are copied from one
ingredient (the first for the uniform soup, the best for the greedy soup), never averaged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from lightning_mix.checkpoint_io import (
    check_compatible,
    extract_state_dict,
    load_checkpoint,
    save_checkpoint_atomically,
)

__all__ = [
    "Ingredient",
    "GreedySoup",
    "load_ingredient",
    "save_ingredient",
    "uniform_soup",
    "greedy_soup",
]

Ingredient = Union[Mapping[str, torch.Tensor], str, "os.PathLike[str]"]
StateDict = dict[str, torch.Tensor]


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _averaged(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def load_ingredient(ingredient: Ingredient, map_location: str | torch.device | None = "cpu") -> StateDict:
    """Return the state dict of one ingredient.

    A mapping is returned as is (its ``"state_dict"`` entry if it is a Lightning checkpoint). A
    path is read with :func:`lightning_mix.checkpoint_io.load_checkpoint` (``weights_only=True``,
    memory-mapped: tensors stay on disk until read). ``map_location`` other than the CPU moves the
    tensors there.
    """
    if isinstance(ingredient, Mapping):
        return dict(extract_state_dict(ingredient, "soup ingredient"))
    if isinstance(ingredient, (str, os.PathLike)):
        state = dict(extract_state_dict(load_checkpoint(ingredient), f"soup ingredient {str(ingredient)!r}"))
        if map_location is not None and torch.device(map_location) != torch.device("cpu"):
            state = {k: v.to(map_location) for k, v in state.items()}
        return state
    raise TypeError(
        f"A soup ingredient must be a state dict or a path to a saved one, got {type(ingredient).__name__}."
    )


def save_ingredient(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Save a state dict to ``path`` atomically (:func:`lightning_mix.checkpoint_io.save_checkpoint_atomically`).

    Tensors are saved detached and on the CPU, in the zip format that :func:`load_ingredient`
    memory-maps.
    """
    cpu = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
    return save_checkpoint_atomically(cpu, path)


def _check_compatible(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], index: int) -> None:
    check_compatible([reference, other], ["the first ingredient", f"soup ingredient {index}"], dtypes=False)


def _start(first: Mapping[str, torch.Tensor], device: torch.device | str | None, scale: float = 1.0) -> StateDict:
    """A float32 (float64) accumulator initialised with ``scale * first``; other entries copied."""
    acc: StateDict = {}
    for key, value in first.items():
        if not isinstance(value, torch.Tensor):
            acc[key] = value
            continue
        target = value.device if device is None else torch.device(device)
        if _averaged(value):
            dtype = value.dtype if value.is_complex() else _accumulator_dtype(value.dtype)
            tensor = value.detach().to(device=target, dtype=dtype, copy=True)
            if scale != 1.0:
                tensor.mul_(scale)
            acc[key] = tensor
        else:
            acc[key] = value.detach().to(device=target, copy=True)
    return acc


def _float_keys(acc: Mapping[str, Any]) -> list[str]:
    return [k for k, v in acc.items() if isinstance(v, torch.Tensor) and _averaged(v)]


def _cast_back(acc: StateDict, dtypes: Mapping[str, torch.dtype]) -> StateDict:
    return {k: v.to(dtypes[k]) if k in dtypes and isinstance(v, torch.Tensor) else v for k, v in acc.items()}


def _dtypes(state: Mapping[str, Any]) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in state.items() if isinstance(v, torch.Tensor)}


def uniform_soup(
    ingredients: Sequence[Ingredient],
    weights: Sequence[float] | None = None,
    device: torch.device | str | None = None,
) -> StateDict:
    """Average the ingredients' floating tensors (a uniform soup); copy integer ones from the first.

    Args:
        ingredients: state dicts, Lightning checkpoints (dicts with ``"state_dict"``), or paths to
            either. Paths are loaded one at a time (memory-mapped).
        weights: optional non-negative weight per ingredient (normalised to sum to 1); default equal.
        device: where to accumulate; default the device of the first ingredient's tensors.

    Returns:
        A new state dict with the dtypes of the first ingredient.

    Example:
        >>> a = {"w": torch.tensor([1.0, 2.0])}
        >>> b = {"w": torch.tensor([3.0, 6.0])}
        >>> uniform_soup([a, b])["w"]
        tensor([2., 4.])
    """
    ingredients = list(ingredients)
    if not ingredients:
        raise ValueError("uniform_soup needs at least one ingredient.")
    if weights is None:
        coefficients = [1.0 / len(ingredients)] * len(ingredients)
    else:
        if len(weights) != len(ingredients):
            raise ValueError(f"uniform_soup got {len(weights)} weights for {len(ingredients)} ingredients.")
        total = float(sum(weights))
        if any(w < 0 for w in weights) or not total > 0:
            raise ValueError(f"uniform_soup weights must be non-negative with a positive sum, got {list(weights)}.")
        coefficients = [float(w) / total for w in weights]
    first = load_ingredient(ingredients[0])
    dtypes = _dtypes(first)
    acc = _start(first, device, scale=coefficients[0])
    keys = _float_keys(acc)
    del first
    for index in range(1, len(ingredients)):
        state = load_ingredient(ingredients[index])
        _check_compatible(acc, state, index)
        sums = [acc[k] for k in keys]
        addends = [state[k].to(device=sums[i].device, dtype=sums[i].dtype) for i, k in enumerate(keys)]
        torch._foreach_add_(sums, addends, alpha=coefficients[index])
        del state, addends
    return _cast_back(acc, dtypes)


class GreedySoup(dict):
    """The greedy soup's state dict (a ``dict``, so ``model.load_state_dict(soup)`` works) plus what happened.

    Attributes:
        kept: indices of the ingredients in the soup, in the order they were added (best first).
        metric: held-out metric of the last accepted candidate (the returned soup; with a
            ``recalibrate`` hook, measured after that candidate's recalibration).
        ingredient_metrics: held-out metric of each ingredient (input order).
        history: ``(index, metric of the candidate soup, accepted)`` for every ingredient tried after the first.
    """

    kept: list[int]
    metric: float
    ingredient_metrics: list[float]
    history: list[tuple[int, float, bool]]

    @property
    def state_dict(self) -> StateDict:
        """A plain ``dict`` copy of the mapping (references to the same tensors), e.g. to ``torch.save``."""
        return dict(self)


def _score(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().item()
    return float(value)


def greedy_soup(
    ingredients: Sequence[Ingredient],
    evaluate: Callable[[Mapping[str, torch.Tensor]], float],
    metrics: Sequence[float] | None = None,
    mode: str = "max",
    strict: bool = False,
    recalibrate: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]] | None = None,
    device: torch.device | str | None = None,
) -> GreedySoup:
    """Greedy soup: start from the best ingredient, add each next-best one if the averaged model does not get worse.

    Args:
        ingredients: state dicts, Lightning checkpoints, or paths to either (loaded one at a time).
        evaluate: ``evaluate(state_dict) -> float``, the held-out metric of a model with those
            weights (typically: load into the model, run validation, return accuracy). During the
            search its floating tensors are float32 accumulators (``load_state_dict`` casts them);
            they are reused afterwards, so copy what you keep.
        metrics: the held-out metric of each ingredient if already known; computed with
            ``evaluate`` otherwise.
        mode: ``"max"`` if larger is better (accuracy), ``"min"`` if smaller is (loss).
        strict: ``False`` (default) adds an ingredient when the metric does not get worse (ties
            kept); ``True`` only when it gets strictly better (the original rule).
        recalibrate: optional ``recalibrate(state_dict) -> state_dict`` applied to every averaged
            candidate before ``evaluate``, e.g. loading the weights and running
            :func:`~lightning_mix.averaging.recalibrate_batchnorm` on training data, then returning
            a copy of ``model.state_dict()``. It must not modify its argument in place, and must
            return tensors the caller may keep (not views of a live model). Single ingredients are
            evaluated as they are. The returned soup is the last accepted candidate exactly as
            ``evaluate`` saw it (its recalibrated BatchNorm statistics included), so ``metric`` is
            that soup's metric and no further recalibration or evaluation is needed.
        device: where to accumulate; default the device of the best ingredient's tensors.

    Returns:
        A :class:`GreedySoup`: the soup's state dict (dtypes of the ingredients, integer buffers from
        the best ingredient) with ``kept``, ``metric``, ``ingredient_metrics`` and ``history``.

    Memory: one float32 running mean and one ingredient (memory-mapped when a path); with
    ``recalibrate``, also the candidate it returns and the last accepted one. A candidate is formed
    in place (``mean <- (n mean + w) / (n + 1)``) and, if rejected, undone in place, which changes
    the kept mean by a few float32 rounding steps at most (without ``recalibrate``, the returned
    soup is that mean).
    """
    ingredients = list(ingredients)
    if not ingredients:
        raise ValueError("greedy_soup needs at least one ingredient.")
    if mode not in ("max", "min"):
        raise ValueError(f"greedy_soup mode must be 'max' or 'min', got {mode!r}.")
    sign = 1.0 if mode == "max" else -1.0

    def better_or_equal(candidate: float, current: float) -> bool:
        if math.isnan(candidate):
            return False
        if math.isnan(current):
            return True
        return sign * candidate > sign * current if strict else sign * candidate >= sign * current

    if metrics is None:
        scores = []
        for ingredient in ingredients:
            scores.append(_score(evaluate(load_ingredient(ingredient))))
    else:
        if len(metrics) != len(ingredients):
            raise ValueError(f"greedy_soup got {len(metrics)} metrics for {len(ingredients)} ingredients.")
        scores = [_score(m) for m in metrics]
    # best first; NaN last; ties keep the input order
    order = sorted(
        range(len(ingredients)),
        key=lambda i: (math.isnan(scores[i]), -sign * scores[i] if not math.isnan(scores[i]) else 0.0, i),
    )
    best = order[0]
    first = load_ingredient(ingredients[best])
    dtypes = _dtypes(first)
    mean = _start(first, device)
    keys = _float_keys(mean)
    del first
    tensors = [mean[k] for k in keys]
    kept = [best]
    current = scores[best]
    history: list[tuple[int, float, bool]] = []
    accepted_candidate: Mapping[str, torch.Tensor] | None = None  # what evaluate saw, when recalibrated
    for index in order[1:]:
        state = load_ingredient(ingredients[index])
        _check_compatible(mean, state, index)
        n = len(kept)
        addends = [state[k].to(device=t.device, dtype=t.dtype) for k, t in zip(keys, tensors)]
        torch._foreach_mul_(tensors, float(n))
        torch._foreach_add_(tensors, addends)
        torch._foreach_div_(tensors, float(n + 1))
        candidate = recalibrate(mean) if recalibrate is not None else mean
        score = _score(evaluate(candidate))
        accepted = better_or_equal(score, current)
        history.append((index, score, accepted))
        if accepted:
            kept.append(index)
            current = score
            if recalibrate is not None:
                accepted_candidate = candidate
        del candidate
        if not accepted:
            torch._foreach_mul_(tensors, float(n + 1))
            torch._foreach_sub_(tensors, addends)
            torch._foreach_div_(tensors, float(n))
        del state, addends
    if accepted_candidate is not None:
        for key, value in accepted_candidate.items():
            if key in mean and isinstance(value, torch.Tensor):
                mean[key] = value.detach().to(device=mean[key].device, dtype=mean[key].dtype)
        del accepted_candidate
    result = GreedySoup(_cast_back(mean, dtypes))
    result.kept = kept
    result.metric = current
    result.ingredient_metrics = scores
    result.history = history
    return result
