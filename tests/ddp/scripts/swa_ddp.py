"""SWA under DDP (2 CPU processes): identical weights on every rank, BN statistics pooled over ranks."""

import sys
from pathlib import Path

from ddp_run import ddp_trainer, save_and_close
from ema_common import TinyBN, float_state
from lightning.pytorch import seed_everything

from lightning_mix.callbacks.swa import SWA

if __name__ == "__main__":
    out = Path(sys.argv[1])
    seed_everything(0)
    model = TinyBN()
    swa = SWA(start_epoch=1, input_key="x")
    trainer = ddp_trainer(
        max_epochs=3,
        num_sanity_val_steps=0,
        callbacks=[swa],
    )
    trainer.fit(model)
    save_and_close(
        {"module": float_state(model), "num_averaged": swa.num_averaged, "train_x": model.train_x},
        out,
        trainer.global_rank,
    )
