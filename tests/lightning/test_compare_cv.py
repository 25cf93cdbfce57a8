"""`lightning-mix compare --cv 5x2`: the 5x2cv table against hand-written formulas, the fold runs, bad input."""

from __future__ import annotations

import math

import pytest
import scipy.stats as st
import torch

from lightning_mix.checkpoint_io import save_checkpoint_atomically
from lightning_mix.cli import compare
from lightning_mix.cli._compare_cv import compare_cv_predictions, cv_markdown, cv_run_dir
from lightning_mix.demos import MNIST5kDataModule


def _fold_predictions(strength: float, seed: int, n: int = 120, c: int = 3):
    """5 x 2 held-out halves of predictions; the labels of half (i, f) are the same for every method."""
    table = []
    for i in range(5):
        row = []
        for f in range(2):
            labels = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(100 * i + f))
            g = torch.Generator().manual_seed(1000 * seed + 10 * i + f)
            logits = torch.randn(n, c, generator=g) + strength * torch.nn.functional.one_hot(labels, c)
            row.append((logits.softmax(-1), labels))
        table.append(row)
    return table


def _accuracy_table(table) -> torch.Tensor:
    return torch.tensor(
        [[float((p.argmax(-1) == t).double().mean()) for p, t in rep] for rep in table], dtype=torch.float64
    )


def test_5x2cv_rows_follow_dietterich_and_alpaydin():
    methods = {"base": _fold_predictions(1.0, 0), "a": _fold_predictions(1.5, 1), "b": _fold_predictions(1.1, 2)}
    rows = compare_cv_predictions(methods, "base")
    cell = {(r["method"], r["metric"]): r for r in rows}
    base = _accuracy_table(methods["base"]).double()
    p_t, p_f = {}, {}
    for name in ("a", "b"):
        scores = _accuracy_table(methods[name]).double()
        d = scores - base
        s2 = ((d - d.mean(1, keepdim=True)) ** 2).sum(1)  # Dietterich (1998), eq. for s_i^2
        t = float(d[0, 0] / math.sqrt(float(s2.mean())))
        f = float((d**2).sum() / (2 * s2.sum()))
        row = cell[name, "accuracy"]
        assert row["estimate"] == pytest.approx(float(scores.mean()))
        assert row["sd"] == pytest.approx(float(scores.std()))
        assert row["diff"] == pytest.approx(float(d.mean()))
        assert row["t"] == pytest.approx(t) and row["p_t"] == pytest.approx(2 * st.t.sf(abs(t), 5))
        assert row["f"] == pytest.approx(f) and row["p_f"] == pytest.approx(st.f.sf(f, 10, 5))
        p_t[name], p_f[name] = row["p_t"], row["p_f"]
    for key, ps in (("p_t_holm", p_t), ("p_f_holm", p_f)):  # Holm over two hypotheses, by hand
        low, high = sorted(ps, key=ps.get)
        assert cell[low, "accuracy"][key] == pytest.approx(min(1.0, 2 * ps[low]))
        assert cell[high, "accuracy"][key] == pytest.approx(max(min(1.0, 2 * ps[low]), ps[high]))
    assert cell["base", "accuracy"]["folds"] == 10 and "t" not in cell["base", "accuracy"]
    assert cell["a", "accuracy"]["diff"] > 0 and cell["a", "nll"]["diff"] < 0


def test_an_undefined_test_is_reported_not_raised():
    same = _fold_predictions(1.0, 0)
    rows = compare_cv_predictions({"base": same, "copy": same}, "base")
    row = next(r for r in rows if r["method"] == "copy" and r["metric"] == "accuracy")
    assert row["t"] is None and row["p_t_holm"] is None and row["diff"] == 0
    assert "t=undefined" in cv_markdown(rows, "base")


def test_cv_refuses_a_datamodule_without_fold_arguments_before_any_run(tmp_path):
    config = tmp_path / "diabetes.yaml"
    config.write_text(
        "model:\n  class_path: lightning_mix.demos.MLPRegressor\n"
        "data:\n  class_path: lightning_mix.demos.DiabetesDataModule\n"
    )
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"DiabetesDataModule of method 'erm' has no cv_repeat / cv_fold"):
        compare.main(["--config", str(config), "--method", "erm", "--cv", "5x2", "--output", str(out)])
    no_data = tmp_path / "model_only.yaml"
    no_data.write_text("model:\n  class_path: lightning_mix.demos.SmallCNN\n")
    with pytest.raises(ValueError, match=r"names no DataModule \(data.class_path\)"):
        compare.main(["--config", str(no_data), "--method", "erm", "--cv", "5x2", "--output", str(out)])
    mnist = tmp_path / "mnist.yaml"
    mnist.write_text("data:\n  class_path: lightning_mix.demos.MNIST5kDataModule\n")
    with pytest.raises(ValueError, match="give one seed"):
        compare.main(
            ["--config", str(mnist), "--method", "erm", "--cv", "5x2", "--seeds", "0", "1", "--output", str(out)]
        )
    with pytest.raises(ValueError, match="has no cv_repeat"):  # a -- override of the data class counts too
        compare.main(
            [
                "--config",
                str(mnist),
                "--method",
                "erm",
                "--cv",
                "5x2",
                "--output",
                str(out),
                "--",
                "--data.class_path",
                "lightning_mix.demos.DiabetesDataModule",
            ]
        )
    assert not out.exists()


@pytest.mark.slow
def test_cv_runs_the_folds_on_shared_halves_and_resumes(tmp_path, capsys):
    """Nine folds of each method are stored beforehand (resume), so only fold (4, 1) of each method trains."""
    base = tmp_path / "base.yaml"
    base.write_text(
        "trainer:\n  accelerator: cpu\n  max_epochs: 1\n  limit_train_batches: 2\n  limit_val_batches: 2\n"
        "  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n  enable_model_summary: false\n"
        "model:\n  class_path: lightning_mix.demos.SmallCNN\n  init_args:\n    width: 2\n"
        "data:\n  class_path: lightning_mix.demos.MNIST5kDataModule\n  init_args:\n    batch_size: 32\n"
    )
    faster = tmp_path / "faster.yaml"
    faster.write_text("model:\n  init_args:\n    lr: 0.01\n")
    out = tmp_path / "cv"
    for k, (i, f) in enumerate((i, f) for i in range(5) for f in range(2) if (i, f) != (4, 1)):
        data = MNIST5kDataModule(cv_repeat=i, cv_fold=f)
        data.setup()
        labels = data.test_set.tensors[1][:64]
        for j, method in enumerate(("erm", "fast")):
            g = torch.Generator().manual_seed(10 * k + j)
            probs = (torch.randn(64, 10, generator=g) + 2 * torch.nn.functional.one_hot(labels, 10)).softmax(-1)
            save_checkpoint_atomically(
                {"probs": probs, "labels": labels}, cv_run_dir(out, method, i, f) / "predictions.pt"
            )
    argv = ["--config", str(base), "--method", "erm", "--method", f"fast={faster}", "--cv", "5x2"]
    rows = compare.main([*argv, "--output", str(out), "--", "--trainer.limit_predict_batches", "2"])
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == 18
    assert "[10/20] erm repeat=4 fold=1: running" in printed and "[20/20] fast repeat=4 fold=1: running" in printed
    assert "5x2cv paired t-test" in printed
    data = MNIST5kDataModule(cv_repeat=4, cv_fold=1)
    data.setup()
    for method in ("erm", "fast"):
        stored = torch.load(cv_run_dir(out, method, 4, 1) / "predictions.pt", weights_only=True)
        assert torch.equal(stored["labels"], data.test_set.tensors[1][:64])  # the fold's held-out half
        assert stored["probs"].shape == (64, 10)
    row = next(r for r in rows if r["method"] == "fast" and r["metric"] == "accuracy")
    assert row["folds"] == 10 and row["p_t_holm"] is not None
    assert (out / "results.csv").read_text().startswith("method,metric,folds,estimate,sd,diff,t,p_t")
    assert (out / "reliability_diagrams.png").is_file() and "(plot_accuracy.png)" in (out / "results.md").read_text()
