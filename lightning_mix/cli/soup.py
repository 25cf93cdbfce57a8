r"""``lightning-mix soup``: a model soup from checkpoints of separate runs, scored on validation data.

Example::

    lightning-mix soup --config examples/mnist5k.yaml --models run1.ckpt run2.ckpt run3.ckpt \\
        --recipe greedy --metric val/acc --output soup.ckpt

The model and datamodule come from ``--config`` (as ``lightning-mix fit`` builds them; callbacks in
the config, a ``ModelCheckpoint`` included, are built but never save: only ``trainer.validate``
runs). Each checkpoint's weights are loaded into the model, ``trainer.validate`` reads ``--metric``,
and the soup is written as a Lightning checkpoint with the first kept checkpoint's
hyperparameters, so ``load_from_checkpoint`` works. The output and the inputs are checked before
the model is built: an unwritable output, a missing or unreadable checkpoint, and checkpoints whose
names, shapes or dtypes differ are refused up front, as ``lightning-mix merge`` does.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Mapping
from typing import Any

import torch

from lightning_mix.checkpoint_io import (
    CheckpointError,
    IncompatibleCheckpointsError,
    check_compatible,
    checkpoint_metadata,
    load_checkpoint,
    load_state_dict_lazy,
    save_checkpoint_atomically,
)
from lightning_mix.cli._common import check_inputs_and_output, fail

__all__ = ["build_parser", "main"]

PROG = "lightning-mix soup"


def build_parser() -> argparse.ArgumentParser:
    """The ``soup`` parser (flags in the same style as ``merge``)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Build a model soup from checkpoints of separate runs, scored on the datamodule's validation data.",
    )
    p.add_argument("--models", nargs="+", required=True, help="checkpoints of one architecture (separate runs)")
    p.add_argument(
        "--config",
        action="append",
        required=True,
        help="LightningCLI YAML with the model and data (repeatable, later files override earlier ones)",
    )
    p.add_argument("--output", required=True, help="where to write the soup checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--recipe", choices=["greedy", "uniform"], default="greedy", help="soup recipe (greedy)")
    p.add_argument("--metric", default="val/acc", help="logged validation metric the greedy recipe ranks by (val/acc)")
    p.add_argument("--mode", choices=["max", "min"], default="max", help="max if larger is better (max)")
    p.add_argument(
        "--strict", action="store_true", help="greedy: add an ingredient only if the metric strictly improves"
    )
    p.add_argument(
        "--recalibrate-bn",
        action="store_true",
        help="recompute BatchNorm statistics on the training data before each evaluation",
    )
    p.add_argument("--quiet", action="store_true", help="no per-candidate metric on stderr")
    return p


def _check_ingredients(paths: list[str]) -> None:
    try:
        states = [load_state_dict_lazy(p) for p in paths]
        check_compatible(states, paths)
    except (IncompatibleCheckpointsError, CheckpointError, pickle.UnpicklingError, OSError) as err:
        fail(PROG, str(err))


def main(argv: list[str]) -> None:
    """Run ``lightning-mix soup`` with ``argv`` (the arguments after ``soup``)."""
    args = build_parser().parse_args(argv)
    output = check_inputs_and_output(PROG, args.models, args.output, args.overwrite)
    _check_ingredients(args.models)

    from lightning_mix.averaging import greedy_soup, recalibrate_batchnorm, uniform_soup
    from lightning_mix.cli.lightning import build_cli

    cli_args: list[str] = []
    for cfg in args.config:
        cli_args += ["--config", cfg]
    cli_args += [
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cli = build_cli(cli_args, run=False, save_config_callback=None)
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    if datamodule is None:
        fail(PROG, "the config has no data section; the soup is evaluated on the datamodule's validation data")
    datamodule.prepare_data()
    datamodule.setup("fit")

    def recalibrate(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model.load_state_dict(state)
        recalibrate_batchnorm(model, datamodule.train_dataloader())
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def evaluate(state: Mapping[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        results = trainer.validate(model, datamodule=datamodule, verbose=False)
        if not results or args.metric not in results[0]:
            fail(
                PROG,
                f"validation logged no {args.metric!r}; logged: {sorted(results[0]) if results else []} "
                "(choose one with --metric)",
            )
        value = float(results[0][args.metric])
        if not args.quiet:
            print(f"soup: {args.metric} = {value:.4f}", file=sys.stderr)
        return value

    if args.recipe == "uniform":
        state = uniform_soup(args.models)
        if args.recalibrate_bn:
            state = recalibrate(state)
        score = evaluate(state)
        kept = list(range(len(args.models)))
    else:
        soup = greedy_soup(
            args.models,
            evaluate,
            mode=args.mode,
            strict=args.strict,
            recalibrate=recalibrate if args.recalibrate_bn else None,
        )
        state, score, kept = dict(soup), soup.metric, list(soup.kept)
    checkpoint: dict[str, Any] = dict(checkpoint_metadata(load_checkpoint(args.models[kept[0]])) or {})
    checkpoint["state_dict"] = {k: v.detach().clone() for k, v in state.items()}
    checkpoint.setdefault("hyper_parameters", dict(getattr(model, "hparams", {})))
    checkpoint["soup"] = {
        "recipe": args.recipe,
        "metric": args.metric,
        "value": score,
        "kept": [args.models[i] for i in kept],
        "models": list(args.models),
    }
    save_checkpoint_atomically(checkpoint, output)
    print(
        f"soup: wrote {output} ({args.recipe}, {len(kept)} of {len(args.models)} ingredients, "
        f"{args.metric} = {score:.4f})",
        file=sys.stderr,
    )
