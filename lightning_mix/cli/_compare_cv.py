"""``lightning-mix compare --cv 5x2``: the fold runs' arguments, the DataModule check, and the 5x2cv tests.

Each method is trained on 5 repetitions of a 2-fold split (train on one half, test on the other);
its score on each of the 10 held-out halves gives the (5, 2) tables of Dietterich's 5x2cv paired
t-test and Alpaydin's combined 5x2cv F-test against the baseline, Holm-adjusted over the methods
compared with the baseline (per metric and per test).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch
import yaml

from lightning_mix.evaluation import (
    combined_ftest_5x2cv_from_scores,
    holm_correction,
    paired_ttest_5x2cv_from_scores,
)

__all__ = [
    "CV_ARGUMENTS",
    "CV_CSV_FIELDS",
    "CV_SCHEMES",
    "check_cv_support",
    "compare_cv_predictions",
    "cv_markdown",
    "cv_overrides",
    "cv_run_dir",
]

CV_SCHEMES = {"5x2": (5, 2)}
CV_ARGUMENTS = ("cv_repeat", "cv_fold")


def cv_overrides(repeat: int, fold: int) -> list[str]:
    """The command-line arguments that select fold ``fold`` of repetition ``repeat`` in the DataModule."""
    return ["--data.init_args.cv_repeat", str(repeat), "--data.init_args.cv_fold", str(fold)]


def cv_run_dir(output: Path, method: str, repeat: int, fold: int) -> Path:
    return output / method / "cv5x2" / f"repeat={repeat}" / f"fold={fold}"


def _data_class_path(configs: list[str], overrides: list[str]) -> str | None:
    """The ``data`` class_path the configs and ``--`` arguments give (the last one wins, as in LightningCLI)."""
    class_path = None
    for config in configs:
        data = (yaml.safe_load(Path(config).read_text()) or {}).get("data")
        if isinstance(data, dict) and "class_path" in data:
            class_path = data["class_path"]
        elif isinstance(data, str):
            class_path = data
    for k, arg in enumerate(overrides):
        for flag in ("--data.class_path", "--data"):
            if arg == flag and k + 1 < len(overrides):
                class_path = overrides[k + 1]
            elif arg.startswith(flag + "=") and not arg[len(flag) + 1 :].startswith("{"):
                class_path = arg[len(flag) + 1 :]
    return class_path


def _import_class(class_path: str):
    module, _, name = class_path.rpartition(".")
    candidates = [module] if module else ["lightning_mix.demos", "lightning_mix.data"]
    for candidate in candidates:
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise ValueError(f"--cv: cannot import the DataModule class {class_path!r}; give its full class_path.")


def check_cv_support(method: str, configs: list[str], overrides: list[str]) -> None:
    """Raise before any run when the method's DataModule cannot select a cross-validation fold."""
    class_path = _data_class_path(configs, overrides)
    if class_path is None:
        raise ValueError(
            f"--cv: method {method!r} names no DataModule (data.class_path) in {configs}; --cv sets the DataModule's "
            f"{' and '.join(CV_ARGUMENTS)} init arguments, so it needs the data class in a config."
        )
    parameters = inspect.signature(_import_class(class_path)).parameters
    missing = [a for a in CV_ARGUMENTS if a not in parameters]
    if missing:
        raise ValueError(
            f"--cv: the DataModule {class_path} of method {method!r} has no {' / '.join(missing)} init argument(s). "
            "compare --cv 5x2 sets cv_repeat (0-4) and cv_fold (0 or 1): add them to its __init__ so that it trains "
            "on one half of a seeded split and tests and predicts on the other (see MNIST5kDataModule)."
        )


def _fold_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Each compare metric of one held-out half's predictions (n, C)."""
    from lightning_mix.cli.compare import METRICS, _aurc, _ece, _per_sample_values
    from lightning_mix.metrics import functional as CF

    per_sample = _per_sample_values(probs[None], labels)
    values = {name: float(per_sample[name].mean()) for name in ("accuracy", "nll", "brier")}
    values["ece"] = float(_ece(probs, labels))
    values["smece"] = float(CF.smooth_ece(probs, labels, input="probs"))
    values["aurc"] = float(_aurc(probs, labels))
    return {name: values[name] for name in METRICS}


def _test_or_none(test, scores: torch.Tensor, base: torch.Tensor) -> tuple[float | None, float | None]:
    try:
        return test(scores, base)
    except ValueError:  # the differences do not vary across folds (e.g. the same method twice): undefined
        return None, None


def compare_cv_predictions(
    predictions: dict[str, list[list[tuple[torch.Tensor, torch.Tensor]]]], baseline: str
) -> list[dict[str, object]]:
    """Rows of the 5x2cv table from ``{method: [[(probs (n, C), labels (n,)) per fold] per repetition]}``.

    Each row: ``method``, ``metric``, ``estimate`` (mean over the 10 held-out halves), ``sd`` (their
    standard deviation), ``folds``; for non-baseline methods ``diff`` (mean difference to the
    baseline), ``t``, ``p_t``, ``p_t_holm`` (5x2cv paired t-test) and ``f``, ``p_f``, ``p_f_holm``
    (combined 5x2cv F-test). A test whose differences do not vary across folds is undefined:
    its statistic and p-values are ``None`` and it is left out of the Holm adjustment.
    """
    from lightning_mix.cli.compare import METRICS

    if baseline not in predictions:
        raise ValueError(f"baseline {baseline!r} is not among the methods {list(predictions)}.")
    repeats, folds = CV_SCHEMES["5x2"]
    base = predictions[baseline]
    for method, table in predictions.items():
        if len(table) != repeats or any(len(r) != folds for r in table):
            raise ValueError(f"Method {method!r}: need {repeats} repetitions of {folds} folds of predictions.")
        for i in range(repeats):
            for f in range(folds):
                if not torch.equal(table[i][f][1], base[i][f][1]):
                    raise ValueError(
                        f"Method {method!r} was tested on other labels than {baseline!r} in repetition {i}, fold {f}: "
                        "the 5x2cv tests pair the methods on the same halves (the DataModule's split must not "
                        "depend on the run's seed)."
                    )
    scores = {
        method: [[_fold_metrics(*table[i][f]) for f in range(folds)] for i in range(repeats)]
        for method, table in predictions.items()
    }
    rows = []
    for metric in METRICS:
        tables = {m: torch.tensor([[s[metric] for s in rep] for rep in scores[m]], dtype=torch.float64) for m in scores}
        tests = {}
        for method, table in tables.items():
            row = {"method": method, "metric": metric, "estimate": float(table.mean()), "sd": float(table.std())}
            row["folds"] = repeats * folds
            if method != baseline:
                t, p_t = _test_or_none(paired_ttest_5x2cv_from_scores, table, tables[baseline])
                f, p_f = _test_or_none(combined_ftest_5x2cv_from_scores, table, tables[baseline])
                row.update(diff=float((table - tables[baseline]).mean()), t=t, p_t=p_t, f=f, p_f=p_f)
                tests[method] = row
            rows.append(row)
        for key in ("p_t", "p_f"):
            defined = [r for r in tests.values() if r[key] is not None]
            adjusted = holm_correction([r[key] for r in defined]).tolist() if defined else []
            for r in tests.values():
                r[f"{key}_holm"] = None
            for r, p in zip(defined, adjusted):
                r[f"{key}_holm"] = p
    return rows


def _number(value: float | None, spec: str) -> str:
    return "undefined" if value is None else format(value, spec)


def cv_markdown(rows: list[dict[str, object]], baseline: str) -> str:
    """The printed and written report of a ``--cv 5x2`` comparison."""
    from lightning_mix.cli.compare import METRICS

    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["metric"]): r for r in rows}
    lines = [
        "5x2 cross-validation: mean (standard deviation) over the 10 held-out halves:",
        "",
        "| method | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for m in methods:
        values = [f"{cell[m, k]['estimate']:.4f} ({cell[m, k]['sd']:.4f})" for k in METRICS]
        lines.append(f"| {m} | " + " | ".join(values) + " |")
    others = [m for m in methods if m != baseline]
    if others:
        lines += [
            "",
            f"Against the baseline ({baseline}): mean difference; 5x2cv paired t-test (Dietterich) t, p (Holm); "
            "combined 5x2cv F-test (Alpaydin) F, p (Holm):",
            "",
            "| method | " + " | ".join(METRICS) + " |",
            "|---|" + "---|" * len(METRICS),
        ]
        for m in others:
            values = []
            for k in METRICS:
                r = cell[m, k]
                values.append(
                    f"{r['diff']:+.4f}; t={_number(r['t'], '.2f')} p={_number(r['p_t'], '.3g')} "
                    f"({_number(r['p_t_holm'], '.3g')}); F={_number(r['f'], '.2f')} p={_number(r['p_f'], '.3g')} "
                    f"({_number(r['p_f_holm'], '.3g')})"
                )
            lines.append(f"| {m} | " + " | ".join(values) + " |")
    lines += ["", "Accuracy: higher is better; NLL, ECE, smECE, Brier, AURC: lower is better."]
    return "\n".join(lines) + "\n"


CV_CSV_FIELDS = ["method", "metric", "folds", "estimate", "sd", "diff", "t", "p_t", "p_t_holm", "f", "p_f", "p_f_holm"]
