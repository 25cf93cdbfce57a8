"""AutoMix and SAMix under DDP (2 CPU processes), straight or resumed: each rank saves weights, momentum copy, draws.

``argv``: out_dir, mode (``straight``: 2 epochs of 2 steps per method, writing ``<method>/epoch=0.ckpt``;
``resume``: from that checkpoint to the same end), checkpoint dir.
"""

import sys
from pathlib import Path

from automix_helpers import MODELS, make_loader
from ddp_run import ddp_trainer, save_and_close
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

if __name__ == "__main__":
    out, mode, ckpt_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    results = {}
    rank = 0
    for method, model_class in MODELS.items():  # one launch fits both methods (Lightning reuses the group)
        seed_everything(0)
        model = model_class(seed=5)
        folder = ckpt_dir / method
        callbacks = []
        options = dict(max_epochs=2, limit_train_batches=2, num_sanity_val_steps=0, limit_val_batches=0)
        ckpt_path = None
        if mode == "straight":
            callbacks.append(ModelCheckpoint(dirpath=folder, filename="{epoch}", save_top_k=-1, every_n_epochs=1))
            options.update(enable_checkpointing=True)
        else:
            ckpt_path = folder / "epoch=0.ckpt"
        trainer = ddp_trainer(callbacks=callbacks, **options)
        trainer.fit(model, make_loader(batch_size=4, n=32), ckpt_path=ckpt_path)
        rank = trainer.global_rank
        last = model.automix_draw(4, model.device)  # the next step's draw: differs between ranks
        results[method] = {
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "momentum": {k: v.clone() for k, v in model.automix_momentum_state().items()},
            "optimizer": trainer.optimizers[0].state_dict()["state"],
            "counter": model._automix_rng.counter - 1,  # the draw above advanced it once
            "param_names": [n for n, _ in model.named_parameters()],
            "next_index": last["index_bb"],
            "next_lam": last["lam_bb"],
        }
    save_and_close(results, out, rank)
