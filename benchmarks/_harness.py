"""What several benchmark scripts share: interleaved timing, a MNIST5k batch, saved-tensor bytes, quiet trainers.

The scripts run as ``python benchmarks/SCRIPT.py``, which puts this folder on ``sys.path``, so they
import it as ``from _harness import ...``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import lightning.pytorch as pl
import torch

from lightning_mix.demos import MNIST5kDataModule


class Timing(NamedTuple):
    """Seconds per call of one contender: the best (least disturbed by other jobs) and the median."""

    best: float
    median: float


def time_interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Time each contender ``repeats`` times after ``warmup`` calls, round-robin.

    Round-robin means a background load hits every contender alike, so ratios within one call stay
    meaningful on a shared machine. ``clock`` is ``time.perf_counter`` (wall) or
    ``time.process_time`` (CPU seconds of this process). On a CUDA ``device`` each call is
    synchronised before and after, so a time covers the kernels it launched.
    """

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: Timing(min(t), statistics.median(t)) for name, t in times.items()}


def mnist5k_batch(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The first shuffled training batch of ``n`` MNIST5k images and their class indices."""
    dm = MNIST5kDataModule(batch_size=n)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    return x, y


def saved_tensor_bytes(
    loss_of: Callable[..., torch.Tensor], *inputs: torch.Tensor, optimizers: Iterable[torch.optim.Optimizer] = ()
) -> int:
    """Bytes of the distinct storages autograd saves for the backward of ``loss_of(*inputs)``.

    Runs the forward under a saved-tensors hook, then the backward (which frees them), then clears
    the gradients of ``optimizers`` so that the measurement leaves no state behind.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(*inputs)
    loss.backward()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return sum(seen.values())


def quiet_trainer(**options: object) -> pl.Trainer:
    """A CPU Trainer that writes nothing and prints no progress: no logger, checkpoints, bar or summary.

    ``options`` (``max_epochs``, ``callbacks``, ...) go to ``lightning.pytorch.Trainer`` as given.
    """
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


class PrintValidation(pl.Callback):
    """Prints val/acc and val/nll every ``every`` epochs and after the last one (the convergence curve)."""

    def __init__(self, every: int = 1) -> None:
        self.every = every

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.sanity_checking and (epoch % self.every == 0 or epoch == trainer.max_epochs):
            metrics = trainer.callback_metrics
            print(
                f"epoch {epoch}: val/acc={float(metrics['val/acc']):.4f} val/nll={float(metrics['val/nll']):.4f}",
                flush=True,
            )
