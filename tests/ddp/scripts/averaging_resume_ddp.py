"""EMA and SWA under DDP (2 CPU processes), straight or killed-and-resumed: each rank saves its averages.

``argv``: out_dir, mode (``straight``: 4 epochs; ``first``: 2 epochs with a last.ckpt; ``resume``: from that
checkpoint to 4 epochs), checkpoint dir. The test compares ``straight`` with ``resume`` bitwise.
"""

import sys
from pathlib import Path

from ddp_run import ddp_trainer, save_and_close
from ema_common import TinyBN, float_state
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mix.callbacks import EMA, SWA


class LocalAverages(Callback):
    """Each rank's own averages at the last training batch (before the end-of-fit rank mean)."""

    def __init__(self, *callbacks) -> None:
        self.callbacks = callbacks
        self.seen: dict = {}

    def on_train_epoch_end(self, trainer, pl_module):
        for cb in self.callbacks:
            self.seen[type(cb).__name__] = {k: v.clone() for k, v in cb.averaged_state_dict().items()}


if __name__ == "__main__":
    out, mode, ckpt_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    seed_everything(0)
    model = TinyBN()
    ema = EMA(decay=0.8)
    swa = SWA(start_epoch=1, owns_final_weights=False)
    local = LocalAverages(ema, swa)
    callbacks = [ema, swa, local]
    options = dict(max_epochs=4, num_sanity_val_steps=0)
    ckpt_path = None
    if mode == "first":
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0))
        options.update(max_epochs=2, enable_checkpointing=True)
    elif mode == "resume":
        ckpt_path = ckpt_dir / "last.ckpt"
    trainer = ddp_trainer(callbacks=callbacks, **options)
    trainer.fit(model, ckpt_path=ckpt_path)
    save_and_close(
        {
            "module": float_state(model),
            "ema": float_state(ema.averaged_state_dict()),
            "swa": float_state(swa.averaged_state_dict()),
            "local": {name: float_state(sd) for name, sd in local.seen.items()},
            "num_updates": (ema.num_updates, swa.num_averaged),
        },
        out,
        trainer.global_rank,
    )
