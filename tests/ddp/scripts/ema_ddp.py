"""EMA under DDP (2 CPU processes): every rank must end with identical EMA and raw weights."""

import sys
from pathlib import Path

import torch
from ddp_run import ddp_trainer, save_and_close
from ema_common import TinyBN, float_state
from lightning.pytorch import seed_everything

from lightning_mix.callbacks.ema import EMA

if __name__ == "__main__":
    out = Path(sys.argv[1])
    seed_everything(0)
    model = TinyBN()
    ema = EMA(decay=0.8)
    trainer = ddp_trainer(
        max_epochs=2,
        num_sanity_val_steps=0,
        callbacks=[ema],
    )
    trainer.fit(model)
    save_and_close(
        {
            "module": float_state(model),
            "ema": {k: v.clone() for k, v in ema.averaged_state_dict().items()},
            "raw": {
                names[0]: t.clone()
                for (names, live), t in zip(ema._weights.entries, ema._weights.backup)
                if isinstance(live, torch.nn.Parameter)
            },
            "num_updates": ema.num_updates,
            "global_step": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        },
        out,
        trainer.global_rank,
    )
