"""One tester for every calibration metric: class over chunks == functional == independent reference.

``check_metric`` streams the data through the Metric class in uneven chunks, compares the result
with the functional form on all the data at once and with a value computed by an independent
reference (torchmetrics, uncertainty-calibration, relplot, scikit-learn or a hand-worked formula),
and checks differentiability the way torchmetrics' own ``MetricTester`` does: the output of
``forward`` requires grad exactly when the class declares ``is_differentiable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchmetrics import Metric

__all__ = ["check_differentiability", "check_metric"]


def _values(out: Any) -> dict[str, torch.Tensor]:
    return dict(out) if isinstance(out, dict) else {"value": out}


def _assert_close(got: Any, expected: Any, atol: float, rtol: float, what: str) -> None:
    got, expected = _values(got), _values(expected)
    assert got.keys() == expected.keys(), f"{what}: keys {sorted(got)} != {sorted(expected)}"
    for key in got:
        a = torch.as_tensor(got[key], dtype=torch.float64)
        b = torch.as_tensor(expected[key], dtype=torch.float64)
        assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{what}[{key}]: {a} != {b}"


def check_differentiability(make_metric: Callable[[], Metric], preds: torch.Tensor, target: torch.Tensor) -> None:
    """``forward`` on preds that require grad returns tensors that require grad iff ``is_differentiable``."""
    metric = make_metric()
    leaf = preds.detach().clone().requires_grad_(True)
    out = _values(metric(leaf, target))
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert value.requires_grad == bool(metric.is_differentiable), (
                f"{type(metric).__name__}.forward()[{key}].requires_grad={value.requires_grad} but "
                f"is_differentiable={metric.is_differentiable}"
            )


def check_metric(
    make_metric: Callable[[], Metric],
    functional: Callable[[torch.Tensor, torch.Tensor], Any],
    preds: torch.Tensor,
    target: torch.Tensor,
    reference: Any | None = None,
    chunk_sizes: tuple[int, ...] = (1, 7, 100),
    atol: float = 1e-6,
    rtol: float = 1e-6,
    stream_atol: float | None = None,
) -> Any:
    """Assert class-over-chunks == functional (``stream_atol``) and functional == reference (``atol``).

    ``chunk_sizes`` are the first chunks (a one-sample chunk included), the rest goes in one last
    chunk. Returns the functional value.
    """
    direct = functional(preds, target)
    if reference is not None:
        _assert_close(direct, reference, atol, rtol, "functional vs reference")
    metric = make_metric()
    start = 0
    for size in chunk_sizes:
        metric.update(preds[start : start + size], target[start : start + size])
        start += size
    metric.update(preds[start:], target[start:])
    _assert_close(metric.compute(), direct, atol if stream_atol is None else stream_atol, rtol, "class vs functional")
    check_differentiability(make_metric, preds, target)
    return direct
