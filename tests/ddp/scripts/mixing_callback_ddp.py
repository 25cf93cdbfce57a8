"""Two CPU ranks fit with a MixingCallback; each saves the lam it drew and the targets it saw."""

import sys
from pathlib import Path

import lightning.pytorch as pl
from ddp_run import ddp_trainer, save_and_close
from mixing_callback_helpers import NUM_CLASSES, LamRecorder, RecordingClassifier, loader, make_data

from lightning_mix.callbacks import MixingCallback
from lightning_mix.mixing import Mixup

if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    recorder = LamRecorder(Mixup(alpha=1.0, mode="elem"))
    model = RecordingClassifier()
    trainer = ddp_trainer(
        max_epochs=1,
        callbacks=[MixingCallback(recorder, num_classes=NUM_CLASSES)],
    )
    trainer.fit(model, loader(make_data(64)))
    save_and_close(
        {"lams": recorder.lams, "targets": [y for _, y in model.train_seen]},
        out,
        trainer.global_rank,
    )
