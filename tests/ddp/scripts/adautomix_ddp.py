"""AdAutoMix under DDP (2 CPU processes), straight or resumed: each rank saves weights, target network, draws.

``argv``: out_dir, mode (``straight``: 2 epochs of 2 optimisation steps (accumulating 2 batches each),
writing ``epoch=0.ckpt``; ``resume``: from that checkpoint to the same end), checkpoint dir.
"""

import sys
from pathlib import Path

import torch
from ddp_run import ddp_trainer, save_and_close
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import AdAutoMixSmallCNN

if __name__ == "__main__":
    out, mode, ckpt_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    seed_everything(0)
    model = AdAutoMixSmallCNN(width=4, mix_seed=5, cosine_schedule=True, accumulate_grad_batches=2)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    callbacks = []
    options = dict(max_epochs=2, limit_train_batches=4, num_sanity_val_steps=0, limit_val_batches=0)
    ckpt_path = None
    if mode == "straight":
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1))
        options.update(enable_checkpointing=True)
    else:
        ckpt_path = ckpt_dir / "epoch=0.ckpt"
    trainer = ddp_trainer(callbacks=callbacks, **options)
    trainer.fit(model, DataLoader(data, batch_size=4, shuffle=False), ckpt_path=ckpt_path)
    following = model.adautomix_draw(4, model.device)  # the next step's draw: differs between ranks
    results = {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "momentum": {k: v.clone() for k, v in model.automix_momentum_state().items()},
        "optimizers": [opt.state_dict()["state"] for opt in trainer.optimizers],
        "lrs": [opt.param_groups[0]["lr"] for opt in trainer.optimizers],
        "counter": model._automix_rng.counter - 1,  # the draw above advanced it once
        "global_step": trainer.global_step,
        "param_names": [n for n, _ in model.named_parameters()],
        "next_indices": following["indices_mb"],
        "next_lam": following["lam_mb"],
    }
    save_and_close(results, out, trainer.global_rank)
