"""Two CPU ranks fit TinyViT with TransMix or TLAlign; each saves its batches, its targets and its mixes."""

import sys
from pathlib import Path

import lightning.pytorch as pl
from ddp_run import ddp_trainer, save_and_close
from torch.utils.data import DataLoader
from vit_callback_helpers import NUM_CLASSES, LastMixed, OriginalBatch, RecordingViT, make_data

from lightning_mix.callbacks import TLAlign, TransMix
from lightning_mix.mixing import CutMix
from lightning_mix.mixing.patch_grid import PatchCutMix

if __name__ == "__main__":
    out, method = Path(sys.argv[1]), sys.argv[2]
    pl.seed_everything(0)
    if method == "transmix":
        mixing = TransMix(CutMix(alpha=1.0, mode="elem"), num_classes=NUM_CLASSES)
    else:
        mixing = TLAlign(PatchCutMix(alpha=1.0, patch_size=4, mode="elem"), num_classes=NUM_CLASSES)
    original, last = OriginalBatch(), LastMixed(mixing)
    model = RecordingViT()
    trainer = ddp_trainer(max_steps=2, callbacks=[original, mixing, last])
    trainer.fit(model, DataLoader(make_data(32), batch_size=8))
    results = {
        "original": original.batches,
        "seen": model.seen,
        "index": [m.index for m in last.mixed],
        "lam": [m.lam for m in last.mixed],
    }
    save_and_close(results, out, trainer.global_rank)
