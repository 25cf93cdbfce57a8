"""AdaMixUp under DDP (2 CPU processes), straight or resumed: each rank saves weights, optimiser state, draws.

``argv``: out_dir, mode (``straight``: 2 epochs of 2 steps, writing ``epoch=0.ckpt``; ``resume``: from that
checkpoint to the same end), checkpoint dir.
"""

import sys
from pathlib import Path

import torch
from automix_helpers import make_loader
from ddp_run import ddp_trainer, save_and_close
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mix.demos import AdaMixUpSmallCNN

if __name__ == "__main__":
    out, mode, ckpt_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    seed_everything(0)
    model = AdaMixUpSmallCNN(width=4, cosine_schedule=False, mix_seed=5)
    callbacks = []
    options = dict(max_epochs=2, limit_train_batches=2, num_sanity_val_steps=0, limit_val_batches=0)
    ckpt_path = None
    if mode == "straight":
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1))
        options.update(enable_checkpointing=True)
    else:
        ckpt_path = ckpt_dir / "epoch=0.ckpt"
    trainer = ddp_trainer(callbacks=callbacks, **options)
    trainer.fit(model, make_loader(batch_size=6, n=48), ckpt_path=ckpt_path)
    with torch.no_grad():
        last = model.adamixup_draw(torch.zeros(6, 1, 28, 28))  # the next step's draw: differs between ranks
    results = {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": trainer.optimizers[0].state_dict()["state"],
        "counter": model._adamixup_rng.counter - 1,  # the draw above advanced it once
        "param_names": [n for n, _ in model.named_parameters()],
        "next_perm": last["perm"],
        "next_uniform": last["uniform"],
    }
    save_and_close(results, out, trainer.global_rank)
