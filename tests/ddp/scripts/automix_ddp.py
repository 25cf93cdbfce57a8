"""AutoMix under DDP (2 CPU processes), straight or resumed: each rank saves its weights, momentum copy and draws.

``argv``: out_dir, mode (``straight``: 2 epochs of 2 steps, writing ``epoch=0.ckpt``; ``resume``: from that
checkpoint to the same end), checkpoint dir.
"""

import sys
from pathlib import Path

from automix_helpers import AutoMixCNN, make_loader
from ddp_run import ddp_trainer, save_and_close
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

if __name__ == "__main__":
    out, mode, ckpt_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    seed_everything(0)
    model = AutoMixCNN(seed=5)
    callbacks = []
    options = dict(max_epochs=2, limit_train_batches=2, num_sanity_val_steps=0, limit_val_batches=0)
    ckpt_path = None
    if mode == "straight":
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1))
        options.update(enable_checkpointing=True)
    else:
        ckpt_path = ckpt_dir / "epoch=0.ckpt"
    trainer = ddp_trainer(callbacks=callbacks, **options)
    trainer.fit(model, make_loader(batch_size=4, n=32), ckpt_path=ckpt_path)
    last = model.automix_draw(4, model.device)  # the next step's draw: differs between ranks
    save_and_close(
        {
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "momentum": {k: v.clone() for k, v in model.automix_momentum_state().items()},
            "optimizer": trainer.optimizers[0].state_dict()["state"],
            "counter": model._automix_rng.counter - 1,  # the draw above advanced it once
            "param_names": [n for n, _ in model.named_parameters()],
            "next_index": last["index_bb"],
            "next_lam": last["lam_bb"],
        },
        out,
        trainer.global_rank,
    )
