"""A recording TinyViT, batch recorders and a tiny fit for the ViT mixing callback tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import TinyViT
from lightning_mix.losses import soft_cross_entropy

NUM_CLASSES = 5


def make_data(n: int = 16, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g))


class RecordingViT(TinyViT):
    """Records the targets after the forward, and every block's attention from a non-fused reference forward."""

    def __init__(self, depth: int = 2) -> None:
        super().__init__(num_classes=NUM_CLASSES, dim=32, depth=depth, num_heads=2)
        self.seen: list[dict] = []

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = soft_cross_entropy(logits, y)
        record = {"x": x.detach().clone(), "y": y.detach().clone()}
        store: list[torch.Tensor] = []
        attns = [block.attn for block in self.blocks]
        handles = [
            a.attn_drop.register_forward_hook(lambda _m, args, _o: store.append(args[0].detach())) for a in attns
        ]
        for a in attns:
            a.fused_attn = False
        with torch.no_grad():
            self(x)
        for a in attns:
            a.fused_attn = True
        for h in handles:
            h.remove()
        record["attentions"] = store
        self.seen.append(record)
        return loss


class OriginalBatch(Callback):
    """Placed before the mixing callback: keeps the batch as the data loader gave it."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((batch[0].clone(), batch[1].clone()))


class LastMixed(Callback):
    """Placed after the mixing callback: keeps its last_mixed at the end of each step."""

    def __init__(self, mixing) -> None:
        self.mixing, self.mixed = mixing, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.mixed.append(self.mixing.last_mixed)


def fit(callbacks, model=None, steps: int = 2, data=None, batch_size: int = 8):
    model = model or RecordingViT()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, DataLoader(data or make_data(), batch_size=batch_size))
    return model
