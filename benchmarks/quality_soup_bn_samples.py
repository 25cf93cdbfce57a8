"""How many training samples the BatchNorm passes of ModelSoup need: soups of the same ingredients
recalibrated on 128 to 3,456 samples (1 to all 27 batches of the MNIST5k training split).

One fit of the main job's model and recipe as they were when the figures were taken (SmallCNN
width 32 with 3 x 3 first blocks, Mixup-or-CutMix, 8 epochs, batch 128, training images not
shifted) keeps the epoch-end snapshots; then, for each sample budget, the uniform soup and the
greedy soup (judged on validation accuracy, BatchNorm recalibrated before every evaluation on the
same fixed batches) are cooked from those ingredients and scored on the validation and test splits.

    python benchmarks/quality_soup_bn_samples.py --label-noise 0.0 --seed 0
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import warnings

import lightning.pytorch as pl
import torch

from lightning_mix.averaging import greedy_soup, recalibrate_batchnorm, uniform_soup
from lightning_mix.averaging.soups import load_ingredient
from lightning_mix.callbacks import MixingCallback, ModelSoup
from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.mixing import CutMix, Mixup, RandomChoice

from _harness import quiet_trainer


def _call(module, inputs):
    return module(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label-noise", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 27])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    storage = tempfile.mkdtemp()
    pl.seed_everything(args.seed, verbose=False)
    # fixed images and the 3 x 3 network: the data and model of the figures on docs/benchmarks/soups.md
    data = MNIST5kDataModule(batch_size=128, label_noise=args.label_noise, random_shift=0)
    keep = ModelSoup(storage=storage, recipes=("uniform",), save_soups=False, recalibrate_bn=False)
    trainer = quiet_trainer(
        max_epochs=8,
        callbacks=[MixingCallback(RandomChoice([Mixup(0.8), CutMix(1.0)]), seed=args.seed), keep],
    )
    model = SmallCNN(width=32, lr=0.003, kernel_size=3)
    trainer.fit(model, datamodule=data)
    paths = sorted(glob.glob(f"{storage}/ingredient-*.pt"))
    val, test = list(data.val_dataloader()), list(data.test_dataloader())
    train_inputs = data.train_set.tensors[0]
    order = torch.randperm(len(train_inputs), generator=torch.Generator().manual_seed(123))

    def accuracy(state_dict, batches) -> float:
        model.load_state_dict(state_dict)
        model.eval()
        with torch.no_grad():
            right = sum((model(x).argmax(1) == y).sum().item() for x, y in batches)
        return right / sum(len(y) for _, y in batches)

    ingredient_metrics = [accuracy(load_ingredient(p), val) for p in paths]
    print(
        f"label noise {args.label_noise}, seed {args.seed}; last weights: val {ingredient_metrics[-1]:.4f} "
        f"test {accuracy(load_ingredient(paths[-1]), test):.4f}"
    )
    print(
        f"{'samples':>8s} {'uniform val':>12s} {'uniform test':>13s} {'greedy kept':>12s} {'greedy val':>11s} {'greedy test':>12s}"
    )
    for count in args.batches:
        batches = [train_inputs[order[i * 128 : (i + 1) * 128]] for i in range(count)]

        def recalibrate(state_dict, batches=batches):
            model.load_state_dict(state_dict)
            recalibrate_batchnorm(model, batches, forward=_call)
            return {k: v.clone() for k, v in model.state_dict().items()}

        uniform = recalibrate(uniform_soup(paths))
        greedy = greedy_soup(paths, lambda sd: accuracy(sd, val), metrics=ingredient_metrics, recalibrate=recalibrate)
        samples = sum(len(b) for b in batches)
        print(
            f"{samples:8d} {accuracy(uniform, val):12.4f} {accuracy(uniform, test):13.4f} {len(greedy.kept):12d} "
            f"{greedy.metric:11.4f} {accuracy(dict(greedy), test):12.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
