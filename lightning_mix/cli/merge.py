"""``lightning-mix merge``: merge Lightning checkpoints (or state-dict files) from the command line.

Example::

    lightning-mix merge --method ties --base base.ckpt --models a.ckpt b.ckpt \\
        --density 0.2 --lam 1.0 --output merged.ckpt

The inputs are memory-mapped and merged one tensor at a time, so the peak memory is about the size
of the output model. The output keeps the base (or first) checkpoint's ``hyper_parameters``, so
``MyModule.load_from_checkpoint("merged.ckpt")`` works; optimizer, loop and callback states are
dropped (they describe the training run, not the merged weights) and a ``"merge"`` entry records the
method, options and inputs. The output is written to a temporary file in the same folder and renamed
at the end: a failed or interrupted merge never leaves a partial file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_mix.merging import (
    MergeError,
    consensus_merge,
    dare,
    model_stock,
    pcb_merge,
    slerp,
    task_arithmetic,
    ties_merge,
    weighted_average,
)
from lightning_mix.merging.sources import limit_heap_growth, load_checkpoint_lazy

__all__ = ["merge_main", "soup_main", "build_merge_parser", "build_soup_parser", "save_atomically"]

METHODS_WITH_BASE = {"task_arithmetic", "ties", "dare", "model_stock", "pcb", "consensus"}
METHODS = ["average", "slerp", *sorted(METHODS_WITH_BASE)]
_DROPPED_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "MixedPrecision")
_DTYPES = {"keep": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def build_merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-mix merge",
        description="Merge checkpoints of one architecture, streaming one tensor at a time (float32 arithmetic).",
    )
    p.add_argument("--method", required=True, choices=METHODS, help="merge method")
    p.add_argument("--base", help="base (pre-trained) checkpoint the task vectors are taken from; "
                   f"required by {', '.join(sorted(METHODS_WITH_BASE))}")
    p.add_argument("--models", nargs="+", required=True, help="checkpoints to merge (fine-tuned models)")
    p.add_argument("--output", required=True, help="where to write the merged checkpoint")
    p.add_argument("--weights", nargs="+", type=float, help="average: one weight per model (equal by default)")
    p.add_argument("--lam", nargs="+", type=float, help="scale of the merged task vector (task_arithmetic 0.3, "
                   "ties/dare/pcb 1.0, consensus 0.3); task_arithmetic and dare take one per model too")
    p.add_argument("--density", type=float, default=0.2, help="ties (and consensus --merge ties): fraction kept (0.2)")
    p.add_argument("--p", type=float, default=0.5, help="dare: drop probability (0.5)")
    p.add_argument("--merge", dest="inner", choices=["task_arithmetic", "ties"], default="task_arithmetic",
                   help="dare/consensus: how the task vectors are combined (task_arithmetic)")
    p.add_argument("--seed", type=int, default=0, help="dare: seed of the drop masks (0)")
    p.add_argument("--t", type=float, default=0.5, help="slerp: position between the two models (0.5)")
    p.add_argument("--keep-ratio", type=float, default=0.1, help="pcb: fraction of entries kept per task (0.1)")
    p.add_argument("--k", type=int, default=2, help="consensus: minimum number of agreeing tasks (2)")
    p.add_argument("--mask-lam", nargs="+", type=float, default=[0.4], help="consensus: TALL mask lambda, one or one per model (0.4)")
    p.add_argument("--include", nargs="+", help="glob patterns of tensor names to merge (others copied from the base)")
    p.add_argument("--exclude", nargs="+", help="glob patterns of tensor names not to merge (copied from the base)")
    p.add_argument("--override", action="append", default=[], metavar="PATTERN:KEY=VALUE",
                   help="per-name option, repeatable: --override 'head.*:lam=0' --override '*.bias:density=1'")
    p.add_argument("--dtype", choices=list(_DTYPES), default="keep", help="output dtype of merged tensors (keep the base's)")
    p.add_argument("--device", default="cpu", help="device for the per-tensor arithmetic (cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", action="store_true", help="no per-tensor progress on stderr")
    return p


def _parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        pattern, sep, assignment = item.rpartition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not pattern or not key:
            raise SystemExit(f"lightning-mix merge: error: --override {item!r} is not PATTERN:KEY=VALUE (e.g. 'head.*:lam=0')")
        key = key.strip().replace("-", "_")
        parsed: Any
        try:
            parsed = [float(v) for v in value.split(",")] if "," in value else float(value)
        except ValueError:
            parsed = value
        if key in ("k", "seed") and isinstance(parsed, float):
            parsed = int(parsed)
        out.setdefault(pattern, {})[key] = parsed
    return out


def _one_or_many(values: list[float] | None, default: float) -> float | list[float]:
    if not values:
        return default
    return values[0] if len(values) == 1 else list(values)


def _scalar(values: list[float] | None, default: float, method: str) -> float:
    if values and len(values) > 1:
        raise SystemExit(f"lightning-mix merge: error: --lam takes one value with --method {method}")
    return values[0] if values else default


def _progress(quiet: bool):
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def report(done: int, total: int, name: str) -> None:
        end = "\n" if (not tty or done == total) else ""
        prefix = "\r\033[K" if tty else ""
        print(f"{prefix}merge [{done}/{total}] {name}", end=end, file=sys.stderr, flush=True)

    return report


def _run_method(args: argparse.Namespace, common: dict[str, Any]) -> dict[str, torch.Tensor]:
    m, base, models = args.method, args.base, args.models
    if m == "average":
        return weighted_average(models, args.weights, **common)
    if m == "slerp":
        if len(models) != 2:
            raise SystemExit(f"lightning-mix merge: error: slerp merges exactly 2 models, got {len(models)}")
        return slerp(models[0], models[1], args.t, **common)
    if m == "task_arithmetic":
        return task_arithmetic(base, models, _one_or_many(args.lam, 0.3), **common)
    if m == "ties":
        return ties_merge(base, models, args.density, _scalar(args.lam, 1.0, m), **common)
    if m == "dare":
        lam = _one_or_many(args.lam, 1.0) if args.inner == "task_arithmetic" else _scalar(args.lam, 1.0, m)
        return dare(base, models, args.p, lam, args.inner, args.seed, **common)
    if m == "model_stock":
        return model_stock(base, models, **common)
    if m == "pcb":
        return pcb_merge(base, models, args.keep_ratio, _scalar(args.lam, 1.0, m), **common)
    if m == "consensus":
        return consensus_merge(base, models, args.k, _one_or_many(args.mask_lam, 0.4), _scalar(args.lam, 0.3, m),
                               args.inner, args.density, **common)
    raise AssertionError(m)  # pragma: no cover


def _checkpoint_metadata(path: str) -> tuple[dict[str, Any] | None, bool]:
    """The non-weight entries of a Lightning checkpoint (None for a plain state dict)."""
    obj, _ = load_checkpoint_lazy(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return {k: v for k, v in obj.items() if k not in _DROPPED_KEYS}, True
    return None, False


def save_atomically(obj: Any, output: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``output``, then rename it (never a partial file)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge_main(argv: list[str]) -> None:
    """Entry point of ``lightning-mix merge`` (``argv`` without the subcommand)."""
    parser = build_merge_parser()
    args = parser.parse_args(argv)
    if args.method in METHODS_WITH_BASE and not args.base:
        parser.error(f"--method {args.method} needs --base (the checkpoint the models were fine-tuned from)")
    if args.method not in METHODS_WITH_BASE and args.base:
        parser.error(f"--method {args.method} takes no --base; list every model under --models")
    output = Path(args.output)
    inputs = [args.base, *args.models] if args.base else list(args.models)
    for path in inputs:
        if not Path(path).is_file():
            parser.error(f"checkpoint {path!r} does not exist")
    if output.exists() and not args.overwrite:
        parser.error(f"{str(output)!r} exists; pass --overwrite to replace it")
    limit_heap_growth()
    common = {
        "include": args.include,
        "exclude": args.exclude,
        "overrides": _parse_overrides(args.override),
        "dtype": _DTYPES[args.dtype],
        "device": args.device,
        "progress": _progress(args.quiet),
    }
    try:
        merged = _run_method(args, common)
    except MergeError as err:
        raise SystemExit(f"lightning-mix merge: error: {err}") from None
    meta, lightning = _checkpoint_metadata(inputs[0])
    if lightning:
        checkpoint = dict(meta or {})
        checkpoint["state_dict"] = merged
        checkpoint["merge"] = {
            "method": args.method,
            "base": args.base,
            "models": list(args.models),
            "options": {k: v for k, v in vars(args).items() if k not in ("base", "models", "output", "quiet", "overwrite")},
        }
    else:
        checkpoint = merged
    save_atomically(checkpoint, output)
    if not args.quiet:
        print(f"merge: wrote {output} ({args.method}, {len(merged)} tensors)", file=sys.stderr)


def build_soup_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-mix soup",
        description="Build a model soup from checkpoints of separate runs, evaluated on the datamodule's validation data.",
    )
    p.add_argument("--models", nargs="+", required=True, help="checkpoints of one architecture (separate runs)")
    p.add_argument("--config", action="append", required=True,
                   help="LightningCLI YAML with the model and data (repeatable, later files override earlier ones)")
    p.add_argument("--recipe", choices=["greedy", "uniform"], default="greedy", help="soup recipe (greedy)")
    p.add_argument("--metric", default="val/acc", help="logged validation metric the greedy recipe ranks by (val/acc)")
    p.add_argument("--mode", choices=["max", "min"], default="max", help="max if larger is better (max)")
    p.add_argument("--strict", action="store_true", help="greedy: add an ingredient only if the metric strictly improves")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="recompute BatchNorm statistics on the training data before each evaluation")
    p.add_argument("--output", required=True, help="where to write the soup checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def soup_main(argv: list[str]) -> None:
    """Entry point of ``lightning-mix soup`` (``argv`` without the subcommand).

    Builds the model and datamodule from ``--config`` (as ``lightning-mix fit`` would), loads each
    checkpoint's weights into the model, runs ``trainer.validate`` to read ``--metric``, and writes
    the soup as a Lightning checkpoint with the first checkpoint's hyperparameters, so
    ``load_from_checkpoint`` works.
    """
    parser = build_soup_parser()
    args = parser.parse_args(argv)
    for path in args.models:
        if not Path(path).is_file():
            parser.error(f"checkpoint {path!r} does not exist")
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        parser.error(f"{str(output)!r} exists; pass --overwrite to replace it")

    from lightning.pytorch import LightningDataModule, LightningModule

    import lightning_mix.callbacks  # noqa: F401  (short class names in configs)
    import lightning_mix.demos  # noqa: F401
    from lightning_mix.averaging import greedy_soup, recalibrate_batchnorm, uniform_soup
    from lightning_mix.cli import LightningMixCLI

    cli_args: list[str] = []
    for cfg in args.config:
        cli_args += ["--config", cfg]
    cli_args += ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
                 "--trainer.enable_model_summary=false"]
    cli = LightningMixCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=cli_args, save_config_callback=None)
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    if datamodule is None:
        parser.error("the config has no data section; the soup is evaluated on the datamodule's validation data")
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
            raise SystemExit(f"lightning-mix soup: error: validation logged no {args.metric!r}; "
                             f"logged: {sorted(results[0]) if results else []} (choose one with --metric)")
        value = float(results[0][args.metric])
        print(f"soup: {args.metric} = {value:.4f}", file=sys.stderr)
        return value

    if args.recipe == "uniform":
        state = uniform_soup(args.models)
        if args.recalibrate_bn:
            state = recalibrate(state)
        score = evaluate(state)
        kept = list(range(len(args.models)))
    else:
        soup = greedy_soup(args.models, evaluate, mode=args.mode, strict=args.strict,
                           recalibrate=recalibrate if args.recalibrate_bn else None)
        state, score, kept = dict(soup), soup.metric, list(soup.kept)
    meta, lightning = _checkpoint_metadata(args.models[kept[0]])
    checkpoint = dict(meta or {}) if lightning else {}
    checkpoint["state_dict"] = {k: v.detach().clone() for k, v in state.items()}
    checkpoint.setdefault("hyper_parameters", dict(getattr(model, "hparams", {})))
    checkpoint["soup"] = {"recipe": args.recipe, "metric": args.metric, "value": score,
                          "kept": [args.models[i] for i in kept], "models": list(args.models)}
    save_atomically(checkpoint, output)
    print(f"soup: wrote {output} ({args.recipe}, {len(kept)} of {len(args.models)} ingredients, "
          f"{args.metric} = {score:.4f})", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    merge_main(sys.argv[1:])
