"""`lightning-mix compare`: the table's numbers, the stored runs, resuming, and bad arguments."""

from __future__ import annotations

import csv

import pytest
import torch

from lightning_mix.cli import compare, main
from lightning_mix.evaluation import aurc, bootstrap_ci
from lightning_mix.metrics.functional import calibration_error


def _probs(seed: int, strength: float, seeds: int = 2, n: int = 300, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(99))
    logits = torch.randn(seeds, n, c, generator=g) + strength * torch.nn.functional.one_hot(labels, c)
    return logits.softmax(-1), labels


@pytest.mark.slow
def test_table_values_are_seed_means_and_paired_differences():
    base, labels = _probs(0, 1.0)
    better, _ = _probs(1, 3.0)
    rows = compare.compare_predictions({"base": (base, labels), "better": (better, labels)}, "base", n_resamples=60)
    cell = {(r["method"], r["metric"]): r for r in rows}
    for name, probs in (("base", base), ("better", better)):
        acc = (probs.argmax(-1) == labels).double().mean()
        assert cell[name, "accuracy"]["estimate"] == pytest.approx(float(acc))
        ece = torch.stack([calibration_error(p, labels, input="probs") for p in probs]).double().mean()
        assert cell[name, "ece"]["estimate"] == pytest.approx(float(ece), rel=1e-6)
        conf, pred = probs.max(-1)
        aurcs = torch.stack([aurc(cf, (pr != labels).double()) for cf, pr in zip(conf, pred)]).mean()
        assert cell[name, "aurc"]["estimate"] == pytest.approx(float(aurcs))
        for metric in compare.METRICS:  # (a binned ECE's bootstrap is biased upwards: the estimate may lie below)
            assert cell[name, metric]["low"] < cell[name, metric]["high"]
    for metric in compare.METRICS:
        row = cell["better", metric]
        assert row["diff"] == pytest.approx(row["estimate"] - cell["base", metric]["estimate"])
        assert row["p_holm"] >= row["p_value"]
        assert "diff" not in cell["base", metric]
    assert cell["better", "accuracy"]["diff_low"] > 0 and cell["better", "accuracy"]["p_value"] < 0.01
    assert cell["better", "nll"]["diff_high"] < 0


@pytest.mark.slow
def test_compare_runs_stores_resumes_and_writes_tables(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(
        "trainer:\n  accelerator: cpu\n  max_epochs: 1\n  limit_train_batches: 2\n  limit_val_batches: 1\n"
        "  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n  enable_model_summary: false\n"
        "model:\n  class_path: lightning_mix.demos.SmallCNN\n  init_args:\n    width: 4\n"
        "data:\n  class_path: lightning_mix.demos.MNIST5kDataModule\n  init_args:\n    batch_size: 64\n"
    )
    faster = tmp_path / "faster.yaml"
    faster.write_text("model:\n  init_args:\n    lr: 0.01\n")
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(base), "--method", "erm", "--method", f"fast={faster}", "--seeds", "0", "1"]
    argv += ["--output", str(out), "--n-resamples", "20", "--", "--trainer.limit_predict_batches", "3"]
    main(argv)
    first = capsys.readouterr().out
    assert "[4/4] fast seed=1: running" in first and "| erm | 2 |" in first
    stored = torch.load(out / "fast" / "seed=1" / "predictions.pt", weights_only=True)
    assert stored["probs"].shape == (192, 10) and stored["labels"].shape == (192,)
    assert torch.allclose(stored["probs"].sum(-1), torch.ones(192), atol=1e-4)
    seed0 = torch.load(out / "fast" / "seed=0" / "predictions.pt", weights_only=True)
    assert not torch.equal(seed0["probs"], stored["probs"])  # seeds differ
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(compare.METRICS) and {r["method"] for r in rows} == {"erm", "fast"}
    assert (out / "results.md").read_text() in first
    for name in [f"plot_{m}.png" for m in compare.METRICS] + ["reliability_diagrams.png"]:
        assert (out / name).is_file() and f"({name})" in first  # written and linked from results.md

    mtime = (out / "erm" / "seed=0" / "predictions.pt").stat().st_mtime_ns
    main(argv)  # resumes: nothing is run again
    second = capsys.readouterr().out
    assert second.count("done before, skipped") == 4 and "running" not in second
    assert (out / "erm" / "seed=0" / "predictions.pt").stat().st_mtime_ns == mtime


def test_bad_arguments_are_named_before_any_run(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer: {}\n")
    with pytest.raises(FileNotFoundError, match="not found"):
        compare.main(["--config", str(config), "--method", "a=missing.yaml", "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="baseline"):
        compare.main(["--config", str(config), "--method", "a", "--baseline", "b", "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="unique"):
        compare.main(["--config", str(config), "--method", "a", "--method", "a", "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="plain folder name"):
        compare.parse_method("../x=a.yaml")
    assert not (tmp_path / "o").exists()


def test_rows_interval_is_the_row_bootstrap_of_the_seed_average():
    probs, labels = _probs(0, 1.0, seeds=3, n=200)
    rows = compare.compare_predictions({"a": (probs, labels)}, "a", n_resamples=200, interval="rows", seed=7)
    correct = (probs.argmax(-1) == labels).double().mean(0)  # seed-averaged correctness per row
    direct = bootstrap_ci(correct, lambda v: v.mean(1), n_resamples=200, seed=7)
    accuracy = next(r for r in rows if r["metric"] == "accuracy")
    assert (accuracy["low"], accuracy["high"]) == pytest.approx((direct.low, direct.high), abs=1e-12)


def test_seeds_and_rows_interval_reduces_to_rows_for_identical_seeds_and_widens_with_seed_spread():
    one, labels = _probs(0, 1.0, seeds=1, n=200)
    other, _ = _probs(1, 1.0, seeds=1, n=200)
    copies = {"a": (one.expand(3, -1, -1), labels), "b": (other.expand(3, -1, -1), labels)}
    two_level = compare.compare_predictions(copies, "a", n_resamples=40, seed=2)
    rows_only = compare.compare_predictions(copies, "a", n_resamples=40, seed=2, interval="rows")
    for r2, r1 in zip(two_level, rows_only):
        for key in ("estimate", "low", "high", "diff", "diff_low", "diff_high", "p_value"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], abs=1e-9), (r1["metric"], key)
    # seeds that differ a lot (strength 0.5 vs 3): the two-level interval is wider than the rows-only one
    spread = torch.cat([_probs(2, 0.5, seeds=2, n=200)[0], _probs(3, 3.0, seeds=2, n=200)[0]])
    wide = compare.compare_predictions({"s": (spread, labels)}, "s", n_resamples=100)
    narrow = compare.compare_predictions({"s": (spread, labels)}, "s", n_resamples=100, interval="rows")
    acc_wide, acc_narrow = wide[0], narrow[0]
    assert acc_wide["metric"] == "accuracy" and acc_wide["estimate"] == pytest.approx(acc_narrow["estimate"])
    assert acc_wide["high"] - acc_wide["low"] > 2 * (acc_narrow["high"] - acc_narrow["low"])


def test_methods_need_the_same_seeds_and_a_known_interval():
    a, labels = _probs(0, 1.0, seeds=2, n=50)
    b, _ = _probs(1, 1.0, seeds=3, n=50)
    with pytest.raises(ValueError, match="pairs are by seed index"):
        compare.compare_predictions({"a": (a, labels), "b": (b, labels)}, "a", n_resamples=10)
    with pytest.raises(ValueError, match="interval must be one of"):
        compare.compare_predictions({"a": (a, labels)}, "a", n_resamples=10, interval="seeds")


def test_a_bootstrap_p_value_of_zero_is_shown_as_its_bound():
    assert compare._format_p(0.0, 1000) == "<0.002"  # no resample of 1,000 crossed zero: p < 2/1000
    assert compare._format_p(0.0, 1000, tests=6) == "<0.012"  # Holm over 6 comparisons multiplies the bound
    assert compare._format_p(0.0, 10, tests=6) == "<1"
    assert compare._format_p(0.0314, 1000) == "0.0314"
    rows = [
        {"method": "a", "metric": m, "estimate": 0.5, "low": 0.4, "high": 0.6, "seeds": 2} for m in compare.METRICS
    ] + [
        {
            "method": "b",
            "metric": m,
            "estimate": 0.9,
            "low": 0.8,
            "high": 1.0,
            "seeds": 2,
            "diff": 0.4,
            "diff_low": 0.3,
            "diff_high": 0.5,
            "p_value": 0.0,
            "p_holm": 0.0,
        }
        for m in compare.METRICS
    ]
    table = compare._markdown(rows, "a", 0.95, "seeds-and-rows", n_resamples=1000)
    assert "p=<0.002 (<0.002)" in table and "p=0 " not in table


def test_stored_mode_reports_on_predictions_another_program_stored(tmp_path, capsys):
    out = tmp_path / "merged"
    base, labels = _probs(0, 1.0, seeds=2)
    better, _ = _probs(1, 3.0, seeds=2)
    for name, probs in (("soup", base), ("ties", better)):
        for seed in (0, 1):
            path = compare.store_predictions(out / name / f"seed={seed}", probs[seed], labels, seed)
            assert path == out / name / f"seed={seed}" / "predictions.pt"
    argv = ["--stored", "--method", "soup", "--method", "ties", "--seeds", "0", "1", "--output", str(out)]
    rows = compare.main([*argv, "--n-resamples", "50", "--no-plots"])
    printed = capsys.readouterr().out
    assert "running" not in printed and "| ties | 2 |" in printed  # nothing trained, the table written
    direct = compare.compare_predictions({"soup": (base, labels), "ties": (better, labels)}, "soup", n_resamples=50)
    assert [(r["method"], r["metric"], r["estimate"], r.get("p_value")) for r in rows] == [
        (r["method"], r["metric"], r["estimate"], r.get("p_value")) for r in direct
    ]
    (out / "results.md").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 run\(s\) have no predictions.pt.*seed=2"):
        compare.main(["--stored", "--method", "soup", "--seeds", "0", "1", "2", "--output", str(out)])
    assert not (out / "results.md").exists()  # refused before any report was written


def test_store_predictions_refuses_what_compare_could_not_read(tmp_path):
    labels = torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="rows summing to one: False"):
        compare.store_predictions(tmp_path / "a", torch.ones(3, 2), labels, seed=0)
    with pytest.raises(ValueError, match=r"\(3, 2\) predictions for labels of shape \(2,\)"):
        compare.store_predictions(tmp_path / "a", torch.full((3, 2), 0.5), labels[:2], seed=0)
    assert not (tmp_path / "a").exists()  # nothing half-written
