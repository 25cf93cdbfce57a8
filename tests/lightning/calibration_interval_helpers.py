"""A fixed linear classifier on seeded data, shared by the CalibrationMonitor interval tests (1 and 2 processes)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

N, D, C = 400, 6, 5


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    weight = torch.randn(C, D, generator=g)
    y = torch.multinomial((x @ weight.T).softmax(-1), 1, generator=g).squeeze(1)
    return x, y, weight * 2.0  # over-confident


class FixedLinear(pl.LightningModule):
    """Logits ``x @ weight.T``; ``test_step`` returns them as ``{"logits": ...}``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def test_step(self, batch, batch_idx):
        return {"logits": self(batch[0])}
