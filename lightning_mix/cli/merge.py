r"""``lightning-mix merge``: merge Lightning checkpoints (or state-dict files) from the command line.

Example::

    lightning-mix merge --method ties --base base.ckpt --models a.ckpt b.ckpt \\
        --density 0.2 --lam 1.0 --output merged.ckpt

The methods and their flags come from :data:`lightning_mix.merging.REGISTRY`: ``--method`` takes
a registered name and every parameter of its dataclass is a flag (``keep_ratio`` is
``--keep-ratio``); a flag the chosen method does not take is refused. Inputs are memory-mapped and
merged one tensor at a time. The output keeps the base (or first) checkpoint's
``hyper_parameters``, so ``MyModule.load_from_checkpoint("merged.ckpt")`` works; optimizer, loop,
callback and weight-averaging states are dropped (they describe a training run, not the merged
weights) and a ``"merge"`` entry records the method, parameters, options and inputs. The output is
written atomically (:func:`lightning_mix.checkpoint_io.save_checkpoint_atomically`).

Everything that can be refused is refused before the merge reads a tensor: the output (exists
without ``--overwrite``, is a directory, sits under a file or in a read-only folder), the inputs
(missing, a directory, unreadable), the parameters and overrides (unknown names, invalid values),
patterns that match no tensor, and inputs whose names, shapes or dtypes differ. A non-finite merged
value stops the merge without writing anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
import typing
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

import torch

from lightning_mix.checkpoint_io import (
    CheckpointError,
    IncompatibleCheckpointsError,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint_atomically,
)
from lightning_mix.cli._common import check_inputs_and_output, fail, progress_printer
from lightning_mix.merging import REGISTRY, MergeError, MergeMethod, MergeOptions, merge
from lightning_mix.merging.registry import check_param_names

__all__ = ["build_parser", "main"]

PROG = "lightning-mix merge"
_DTYPES = {
    "keep": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _hints(params_type: type) -> dict[str, Any]:
    return typing.get_type_hints(params_type)


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "{" + ",".join(str(a) for a in get_args(hint)) + "}"
    args = [a for a in get_args(hint) if a is not type(None)]
    if hint is bool:
        return "true|false"
    if any(get_origin(a) is tuple for a in args) or get_origin(hint) is tuple:
        return "N [N ...]" if float in args else "N [N ...] (one per model)"
    return {float: "N", int: "INT"}.get(hint, "VALUE")


def _takes_many(hint: Any) -> bool:
    return get_origin(hint) is tuple or any(get_origin(a) is tuple for a in get_args(hint))


def _convert(name: str, values: Sequence[str], hint: Any) -> Any:
    """Turn the strings given for a parameter into the type its dataclass field declares."""

    def scalar(value: str, kind: Any) -> Any:
        if kind is bool:
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{name} takes true or false, got {value!r}")
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        return value

    origin, args = get_origin(hint), get_args(hint)
    try:
        if origin is Literal:
            if len(values) != 1 or values[0] not in args:
                raise ValueError(f"{name} takes one of {', '.join(map(str, args))}, got {' '.join(values)}")
            return values[0]
        members = [a for a in args if a is not type(None)] if args and origin is not tuple else [hint]
        sequence = next((a for a in members if get_origin(a) is tuple), None)
        single = next((a for a in members if get_origin(a) is not tuple), None)
        if sequence is not None and (single is None or len(values) > 1):
            kind = get_args(sequence)[0]
            return tuple(scalar(v, kind) for v in values)
        if len(values) != 1:
            raise ValueError(f"{name} takes one value, got {len(values)}")
        return scalar(values[0], single)
    except ValueError as err:
        raise MergeError(str(err) if str(err).startswith(name) else f"{name}: {err}") from None


def _parameters() -> dict[str, list[tuple[MergeMethod, dataclasses.Field]]]:
    table: dict[str, list[tuple[MergeMethod, dataclasses.Field]]] = {}
    for method in sorted(REGISTRY.values(), key=lambda m: m.name):
        for f in dataclasses.fields(method.params):
            table.setdefault(f.name, []).append((method, f))
    return table


def build_parser() -> argparse.ArgumentParser:
    """The ``merge`` parser: shared flags, then one flag per parameter of any registered method."""
    import lightning_mix.merging.methods  # noqa: F401  (registers every method)

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Merge checkpoints of one architecture, streaming one tensor at a time (float32 arithmetic).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="methods:\n"
        + "\n".join(
            f"  {m.name:<17} {m.summary}{' (needs --base)' if m.needs_base else ''}"
            for m in sorted(REGISTRY.values(), key=lambda m: m.name)
        ),
    )
    p.add_argument(
        "--method",
        required=True,
        choices=sorted(REGISTRY),
        metavar="METHOD",
        help="merge method: " + ", ".join(sorted(REGISTRY)) + " (see below)",
    )
    p.add_argument(
        "--base",
        help="base (pre-trained) checkpoint the task vectors are taken from; required by "
        + ", ".join(m.name for m in REGISTRY.values() if m.needs_base),
    )
    p.add_argument("--models", nargs="+", required=True, help="checkpoints to merge (fine-tuned models)")
    p.add_argument("--output", required=True, help="where to write the merged checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--include", nargs="+", help="glob patterns of tensor names to merge (others copied from the base)")
    p.add_argument("--exclude", nargs="+", help="glob patterns of tensor names not to merge (copied from the base)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="PATTERN:KEY=VALUE",
        help="per-name parameter, repeatable: --override 'head.*:lam=0' --override '*.bias:density=1'",
    )
    p.add_argument(
        "--dtype", choices=list(_DTYPES), default="keep", help="output dtype of merged tensors (keep the base's)"
    )
    p.add_argument("--device", default="cpu", help="device for the per-tensor arithmetic (cpu)")
    p.add_argument("--quiet", action="store_true", help="no per-tensor progress on stderr")
    extras = sorted({key for m in REGISTRY.values() for key in m.extra_inputs})
    for key in extras:
        users = [m.name for m in REGISTRY.values() if key in m.extra_inputs]
        p.add_argument(_flag(key), nargs="+", metavar="FILE", help=f"{', '.join(users)}: one {key[:-1]} file per model")
    group = p.add_argument_group("method parameters (a flag applies to the methods listed in its help)")
    for name, entries in _parameters().items():
        hints = [_hints(m.params)[name] for m, _ in entries]
        many = any(_takes_many(h) for h in hints)
        parts = [f"{m.name}: {f.metadata.get('doc', '')} [{f.default}]" for m, f in entries]
        metavar = _describe(hints[0]).replace(" [N ...]", "").replace(" (one per model)", "")
        group.add_argument(
            _flag(name), dest=f"param_{name}", nargs="+" if many else 1, metavar=metavar, help="; ".join(parts)
        )
    return p


def _parse_overrides(items: list[str], method: MergeMethod) -> dict[str, dict[str, Any]]:
    hints = _hints(method.params)
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        pattern, sep, assignment = item.rpartition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not pattern or not key:
            raise MergeError(f"--override {item!r} is not PATTERN:KEY=VALUE (e.g. 'head.*:lam=0')")
        key = key.strip().replace("-", "_")
        check_param_names(method.params, [key], f"--override {item!r} of {method.name}")
        out.setdefault(pattern, {})[key] = _convert(key, value.split(","), hints[key])
    return out


def _method_params(args: argparse.Namespace, method: MergeMethod) -> Any:
    hints = _hints(method.params)
    own = {f.name for f in dataclasses.fields(method.params)}
    given = {k[len("param_") :]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    stray = sorted(set(given) - own)
    if stray:
        takes = ", ".join(_flag(n) for n in sorted(own)) or "no parameters"
        raise MergeError(
            f"{', '.join(_flag(n) for n in stray)} is not an option of --method {method.name} (it takes {takes})"
        )
    return method.params(**{k: _convert(k, v, hints[k]) for k, v in given.items()})


def _merge_record(args: argparse.Namespace, method: MergeMethod, params: Any, overrides: dict) -> dict[str, Any]:
    return {
        "method": method.name,
        "base": args.base,
        "models": list(args.models),
        "params": dataclasses.asdict(params),
        "options": {"include": args.include, "exclude": args.exclude, "overrides": overrides, "dtype": args.dtype},
    }


def main(argv: list[str]) -> None:
    """Run ``lightning-mix merge`` with ``argv`` (the arguments after ``merge``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    method = REGISTRY[args.method]
    if method.needs_base and not args.base:
        parser.error(f"--method {method.name} needs --base (the checkpoint the models were fine-tuned from)")
    if not method.needs_base and args.base:
        parser.error(f"--method {method.name} takes no --base; list every model under --models")
    extra_files = {key: getattr(args, key) for key in method.extra_inputs}
    for key, files in extra_files.items():
        if not files:
            parser.error(f"--method {method.name} needs {_flag(key)} (one file per model)")
    stray_extras = [
        k for k in {x for m in REGISTRY.values() for x in m.extra_inputs} if getattr(args, k) and k not in extra_files
    ]
    if stray_extras:
        parser.error(f"{_flag(stray_extras[0])} is not an input of --method {method.name}")
    inputs = [*([args.base] if args.base else []), *args.models, *[f for fs in extra_files.values() for f in fs]]
    output = check_inputs_and_output(PROG, inputs, args.output, args.overwrite)
    try:
        params = _method_params(args, method)
        overrides = _parse_overrides(args.override, method)
        options = MergeOptions(
            include=tuple(args.include) if args.include else None,
            exclude=tuple(args.exclude) if args.exclude else None,
            overrides=overrides,
            dtype=_DTYPES[args.dtype],
            device=args.device,
            progress=progress_printer("merge", args.quiet),
        )
        merged = merge(method, args.models, params, options, base=args.base, extra=extra_files or None)
        first = load_checkpoint(args.base or args.models[0])
    except (MergeError, IncompatibleCheckpointsError, CheckpointError, pickle.UnpicklingError, OSError) as err:
        fail(PROG, str(err))
    meta = checkpoint_metadata(first)
    if meta is not None:
        checkpoint: dict[str, Any] = {
            **meta,
            "state_dict": merged,
            "merge": _merge_record(args, method, params, overrides),
        }
    else:
        checkpoint = merged
    save_checkpoint_atomically(checkpoint, output)
    if not args.quiet:
        print(f"merge: wrote {output} ({method.name}, {len(merged)} tensors)", file=sys.stderr)
