"""Model soups of epoch-end snapshots inside the Trainer: keep ingredients during fit, cook soups at the end."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_mix.averaging.batchnorm import batchnorm_layers, recalibrate_batchnorm
from lightning_mix.averaging.soups import greedy_soup, load_ingredient, save_ingredient, uniform_soup
from lightning_mix.callbacks._trainer_state import check_not_sharded, is_last_training_batch

__all__ = ["ModelSoup"]

_RECIPES = ("uniform", "greedy")
_KEEP = ("best", "uniform", "greedy", "last")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _weights_version(module: nn.Module) -> int:
    """Sum of the version counters of the module's parameters and buffers: changes with any in-place update."""
    return sum(t._version for t in module.parameters()) + sum(t._version for t in module.buffers())


class ModelSoup(Callback):
    r"""Keep epoch-end snapshots as soup ingredients; at the end of fit, evaluate uniform and greedy soups.

    During fit, after the last training batch of every ``every_n_epochs``-th epoch from
    ``start_epoch`` on (before the epoch-end validation, so a checkpoint saved there already holds
    it), the module's state dict is kept as an ingredient: in CPU memory (``storage="memory"``) or
    as a file ``ingredient-epoch=EEEE.pt`` in the directory ``storage`` (written by rank 0 only,
    atomically: a temporary file, then a rename). ``max_ingredients`` keeps only the latest ones.

    At the end of fit (``on_fit_end``) every candidate is evaluated with the module's own
    validation logic (``trainer.validate`` on the fit's validation data, ``monitor`` read from
    ``trainer.callback_metrics``; other callbacks and the loggers are detached meanwhile, the
    progress bar shows each pass):

    - each ingredient, as it was saved;
    - ``"uniform"``: the mean of all ingredients;
    - ``"greedy"``: ingredients sorted by their metric, best first, each added if the metric of the
      average does not get worse (``strict=True``: only if it gets strictly better);
    - ``"last"``: the trained weights at the end of fit (the last snapshot when it was taken at the
      final step, so an average swapped in by another callback is not mistaken for them).

    With ``recalibrate_bn`` (and BatchNorm layers in the model), the BatchNorm statistics of every
    averaged model are recomputed before it is evaluated, from at least ``bn_samples`` training
    samples (default 256 per rank, whole batches; ``None``: all the batches the fit used). The
    batches are drawn once at the end of fit and reused for every soup and greedy candidate, so
    candidates are compared on the same data. Each batch goes through the precision plugin and
    the module's own batch transfer, then ``module(batch[input_key])`` (or
    ``bn_forward(module, batch)``), see :func:`~lightning_mix.averaging.recalibrate_batchnorm`.

    A table of all results is printed (rank 0), the metrics are logged to the Trainer's loggers and
    put in ``trainer.callback_metrics`` as ``soup/uniform/<monitor>``, ``soup/greedy/<monitor>``,
    ``soup/last/<monitor>``, ``soup/greedy/num_kept`` and ``soup/epoch=E/<monitor>``; the same
    numbers are in :attr:`results` and the greedy soup's epochs in :attr:`greedy_epochs`. Each soup
    is saved as a Lightning checkpoint (``soup-uniform.ckpt``, ``soup-greedy.ckpt`` in
    ``dirpath``; default: the ``storage`` directory, or ``<log_dir>/soups`` with in-memory
    storage) that ``LightningModule.load_from_checkpoint`` reads; paths in :attr:`soup_paths`.
    Finally the module is left holding ``keep``: ``"best"`` (highest/lowest metric among last,
    uniform and greedy; ties prefer greedy, then uniform), ``"uniform"``, ``"greedy"`` or ``"last"``.

    Cost at the end of fit, for K ingredients: K validation passes (uniform soup and K - 1 greedy
    candidates; ingredients reuse their epoch-end validation when nothing touched their weights
    since), and with BatchNorm as many forward passes over ``bn_samples`` training samples. The
    greedy soup is the last accepted candidate exactly as it was scored, so it is not evaluated
    again. Memory: in-memory storage holds K CPU copies of the weights; on disk, the soups hold one
    float32 accumulator, one memory-mapped ingredient and (with BatchNorm) two CPU copies of
    candidates; plus the cached BatchNorm batches.

    Resume: ingredients kept in memory are part of the callback state (so every checkpoint holds
    them); on-disk ingredients are referenced by path, so keep the directory. ``fit(ckpt_path=...)``
    then continues with the same ingredients.

    Distributed: under DDP the snapshot is broadcast from rank 0 (BatchNorm buffers may differ per
    rank), metrics are averaged across ranks and the BatchNorm statistics pooled, so every rank
    makes the same choices and ends with identical weights. The ``storage``/``dirpath`` directory
    must be visible to all ranks (one node or a shared file system). Sharded strategies (FSDP,
    DeepSpeed, ModelParallel) are not supported: they raise at setup.

    Args:
        every_n_epochs: keep a snapshot every this many epochs.
        start_epoch: first 0-based epoch whose snapshot is kept.
        max_ingredients: keep only the latest this many snapshots (``None``: all).
        storage: ``"memory"`` or a directory for ingredient files.
        monitor: the validation metric the soups are judged by (as logged by the module).
        mode: ``"max"`` if larger ``monitor`` is better, ``"min"`` if smaller.
        recipes: which soups to cook: any of ``"uniform"``, ``"greedy"``.
        recalibrate_bn: recompute BatchNorm statistics of averaged weights before evaluating them.
        keep: what the module holds after fit: ``"best"``, ``"uniform"``, ``"greedy"`` or ``"last"``.
        strict: greedy soup's rule: ``False`` adds an ingredient when the metric does not get
            worse, ``True`` only when it gets strictly better (the original rule).
        save_soups: save each soup as a Lightning checkpoint.
        dirpath: where to save soup checkpoints (see above for the default).
        bn_samples: training samples (per rank) for each BatchNorm pass, rounded up to whole
            batches (a batch's size is the first dimension of its input). The greedy recipe
            recalibrates every candidate, so a full pass per candidate would cost about as much as
            the forward passes of the whole fit; on the main job (SmallCNN on MNIST5k) 128 to 3,456
            samples give the same soups within 0.4% accuracy (see benchmarks/README.md), and 256
            keeps the end-of-fit evaluation within 10% of an 8-epoch fit. Raise it for models whose
            statistics need more data; ``None``: as many batches as the fit used (streamed, not cached).
        input_key: the model input in a batch for the BatchNorm pass (index of a list/tuple batch,
            key of a dict batch; ``None``: the whole batch).
        bn_forward: ``bn_forward(module, batch)`` replaces the default feed (Python use).

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import ModelSoup
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        soup = ModelSoup(storage="soup_ingredients", monitor="val/acc", mode="max")
        trainer = Trainer(max_epochs=8, callbacks=[soup])
        trainer.fit(SmallCNN(), MNIST5kDataModule())
        print(soup.results, soup.greedy_epochs, soup.soup_paths)
        best = SmallCNN.load_from_checkpoint(soup.soup_paths["greedy"])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        start_epoch: int = 0,
        max_ingredients: int | None = None,
        storage: str = "memory",
        monitor: str = "val/acc",
        mode: str = "max",
        recipes: Sequence[str] = ("uniform", "greedy"),
        recalibrate_bn: bool = True,
        keep: str = "best",
        strict: bool = False,
        save_soups: bool = True,
        dirpath: str | None = None,
        bn_samples: int | None = 256,
        input_key: int | str | None = 0,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"ModelSoup(every_n_epochs={every_n_epochs}): must be >= 1.")
        if start_epoch < 0:
            raise ValueError(f"ModelSoup(start_epoch={start_epoch}): must be >= 0.")
        if max_ingredients is not None and max_ingredients < 1:
            raise ValueError(f"ModelSoup(max_ingredients={max_ingredients}): must be >= 1 or None (keep all).")
        if mode not in ("max", "min"):
            raise ValueError(f"ModelSoup(mode={mode!r}): use 'max' (e.g. accuracy) or 'min' (e.g. loss).")
        recipes = (recipes,) if isinstance(recipes, str) else tuple(recipes)
        unknown = [r for r in recipes if r not in _RECIPES]
        if unknown:
            raise ValueError(f"ModelSoup(recipes={list(recipes)}): unknown {unknown}; choose from {list(_RECIPES)}.")
        if keep not in _KEEP:
            raise ValueError(f"ModelSoup(keep={keep!r}): choose one of {list(_KEEP)}.")
        if keep in _RECIPES and keep not in recipes:
            raise ValueError(f"ModelSoup(keep={keep!r}) needs {keep!r} in recipes (got {list(recipes)}).")
        if bn_samples is not None and bn_samples < 1:
            raise ValueError(f"ModelSoup(bn_samples={bn_samples}): must be >= 1 or None (as many batches as the fit used).")
        self.every_n_epochs = every_n_epochs
        self.start_epoch = start_epoch
        self.max_ingredients = max_ingredients
        self.storage = storage
        self.monitor = monitor
        self.mode = mode
        self.recipes = recipes
        self.recalibrate_bn = recalibrate_bn
        self.keep = keep
        self.strict = strict
        self.save_soups = save_soups
        self.dirpath = dirpath
        self.bn_samples = bn_samples
        self.input_key = input_key
        self.bn_forward = bn_forward

        self._ingredients: list[dict[str, Any]] = []  # {"epoch", "step", "state_dict" | "path"}
        self._last_epoch = -1
        self.results: dict[str, float] = {}
        self.greedy_epochs: list[int] = []
        self.soup_paths: dict[str, str] = {}
        self.kept: str | None = None

    # ------------------------------------------------------------------ properties
    @property
    def on_disk(self) -> bool:
        """Whether ingredients are files (``storage`` is a directory) rather than CPU copies."""
        return self.storage != "memory"

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, storage=self.storage)

    @property
    def ingredient_epochs(self) -> list[int]:
        """The epochs of the ingredients currently kept."""
        return [ing["epoch"] for ing in self._ingredients]

    def ingredient_state_dicts(self) -> list[Mapping[str, torch.Tensor]]:
        """The ingredients as state dicts (files are memory-mapped)."""
        return [load_ingredient(source) for source in self._sources()]

    def _sources(self) -> list[Any]:
        return [ing["path"] if "path" in ing else ing["state_dict"] for ing in self._ingredients]

    # ------------------------------------------------------------------ snapshots during fit
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_not_sharded(trainer, "ModelSoup")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # after the epoch's last optimizer step, before the epoch-end validation and checkpoint
        if is_last_training_batch(trainer, batch_idx):
            self._snapshot(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer, pl_module)  # epochs cut short (max_steps, a stop signal)

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch <= self._last_epoch or epoch < self.start_epoch or (epoch - self.start_epoch) % self.every_n_epochs:
            return
        self._last_epoch = epoch
        state = pl_module.state_dict()
        if _distributed() and trainer.world_size > 1:
            state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    torch.distributed.broadcast(value, src=0)
        entry: dict[str, Any] = {"epoch": epoch, "step": trainer.global_step, "version": _weights_version(pl_module)}
        if self.on_disk:
            path = Path(self.storage) / f"ingredient-epoch={epoch:04d}.pt"
            if trainer.is_global_zero:
                save_ingredient(state, path)
            entry["path"] = str(path)
        else:
            entry["state_dict"] = {
                k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in state.items()
            }
        self._ingredients.append(entry)
        if self.max_ingredients is not None:
            while len(self._ingredients) > self.max_ingredients:
                dropped = self._ingredients.pop(0)
                if "path" in dropped and trainer.is_global_zero:
                    Path(dropped["path"]).unlink(missing_ok=True)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"ingredients": list(self._ingredients), "last_epoch": self._last_epoch, "storage": self.storage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._ingredients = [dict(ing) for ing in state_dict.get("ingredients", [])]
        self._last_epoch = int(state_dict.get("last_epoch", -1))
        missing = [ing["path"] for ing in self._ingredients if "path" in ing and not Path(ing["path"]).is_file()]
        if missing:
            warnings.warn(
                f"ModelSoup: {len(missing)} ingredient file(s) from the checkpoint are missing ({missing[:3]}); "
                "they are dropped. Keep the storage directory when resuming.",
                stacklevel=2,
            )
            self._ingredients = [ing for ing in self._ingredients if ing.get("path") not in missing]

    # ------------------------------------------------------------------ evaluation at the end of fit
    @contextmanager
    def _isolated(self, trainer: pl.Trainer) -> Iterator[None]:
        """Run a nested ``trainer.validate`` without the other callbacks, the loggers or touching fit's state."""
        callbacks, loggers = trainer.callbacks, trainer.loggers
        state = (trainer.state.fn, trainer.state.status, trainer.state.stage)
        connector = trainer._logger_connector
        metrics = (
            dict(connector._callback_metrics),
            dict(connector._logged_metrics),
            dict(connector._progress_bar_metrics),
        )
        trainer.callbacks = [cb for cb in callbacks if isinstance(cb, ProgressBar)]
        trainer.loggers = []
        try:
            yield
        finally:
            trainer.callbacks, trainer.loggers = callbacks, loggers
            trainer.state.fn, trainer.state.status, trainer.state.stage = state
            connector._callback_metrics, connector._logged_metrics, connector._progress_bar_metrics = metrics

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state_dict: Mapping[str, Any], label: str
    ) -> float:
        rank_zero_info(f"ModelSoup: validating {label}")
        pl_module.load_state_dict(state_dict)
        with self._isolated(trainer):
            if trainer.datamodule is not None:
                trainer.validate(pl_module, datamodule=trainer.datamodule, verbose=False)
            else:
                trainer.validate(pl_module, dataloaders=self._val_dataloaders, verbose=False)
            metrics = dict(trainer.callback_metrics)
        if self.monitor not in metrics:
            raise KeyError(
                f"ModelSoup(monitor={self.monitor!r}) was not logged by the module's validation "
                f"(logged: {sorted(metrics)}). Set monitor= to one of those."
            )
        value = torch.as_tensor(metrics[self.monitor], dtype=torch.float32).detach()
        if trainer.world_size > 1:  # ranks agree even when the module logs without sync_dist
            value = trainer.strategy.reduce(value.to(trainer.strategy.root_device), reduce_op="mean")
        return float(value)

    def _model_input(self, batch: Any) -> Any:
        """``batch[input_key]`` (the whole batch when ``input_key`` is None or the batch is a single tensor)."""
        if self.input_key is None or not isinstance(batch, (Mapping, list, tuple)):
            return batch
        try:
            return batch[self.input_key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError) as err:
            raise TypeError(
                f"ModelSoup cannot pick input_key={self.input_key!r} from a batch of type {type(batch).__name__}; "
                "set ModelSoup(input_key=...) to the index/key of the model input, input_key=None to pass the "
                "whole batch, or bn_forward=callable(module, batch)."
            ) from err

    def _feed(self, module: nn.Module, batch: Any) -> Any:
        if self.bn_forward is not None:
            return self.bn_forward(module, batch)
        return module(self._model_input(batch))

    def _batch_size(self, batch: Any) -> int:
        """Samples in a batch: the first dimension of its input (or of its first tensor)."""
        try:
            inputs = self._model_input(batch)
        except TypeError:  # a batch only bn_forward understands
            inputs = batch
        tensors = [t for t in torch.utils._pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.dim() > 0]
        return len(tensors[0]) if tensors else 1

    def _host_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[Any]:
        """Training batches for the BatchNorm pass, before the device transfer."""
        loader = self._train_dataloader
        if loader is None:
            raise RuntimeError(
                "ModelSoup found no training dataloader for the BatchNorm pass; set recalibrate_bn=False."
            )
        if isinstance(loader, (Mapping, list, tuple)):
            raise TypeError(
                "ModelSoup's BatchNorm pass supports a single training dataloader; with several, set "
                "recalibrate_bn=False (or give bn_forward and a single loader)."
            )
        batches: Iterator[Any] = iter(loader)
        limit = trainer.num_training_batches
        if self.bn_samples is None and isinstance(limit, int) and not math.isinf(limit):
            batches = islice(batches, limit)
        seen = 0
        for batch in batches:
            batch = pl_module._on_before_batch_transfer(trainer.precision_plugin.convert_input(batch), dataloader_idx=0)
            yield batch
            if self.bn_samples is not None:
                seen += self._batch_size(batch)
                if seen >= self.bn_samples:
                    return

    def _train_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[Any]:
        """The BatchNorm pass's batches on the device: the same cached ones every time, or (``bn_samples=None``) a fresh full pass."""
        if self.bn_samples is None:
            host_batches: Any = self._host_batches(trainer, pl_module)
        else:
            if self._bn_cache is None:
                self._bn_cache = list(self._host_batches(trainer, pl_module))
            host_batches = self._bn_cache
        for batch in host_batches:
            yield trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def _recalibrated(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state_dict: Mapping[str, Any]) -> dict:
        """Load ``state_dict``, recompute BatchNorm statistics on the training data, return a CPU copy."""
        pl_module.load_state_dict(state_dict)
        home = next(iter(pl_module.parameters())).device
        pl_module.to(trainer.strategy.root_device)

        def forward(module: nn.Module, batch: Any) -> Any:
            with trainer.precision_plugin.forward_context():
                return self._feed(module, batch)

        try:
            recalibrate_batchnorm(pl_module, self._train_batches(trainer, pl_module), forward=forward)
        finally:
            pl_module.to(home)
        return {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_dataloader = trainer.train_dataloader

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.val_dataloaders is not None:
            self._val_dataloaders = trainer.val_dataloaders
        self._record_fit_metric(trainer, pl_module)

    def _record_fit_metric(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the epoch-end validation's metric for the snapshot it validated, so the end of fit
        need not validate that ingredient again.

        Only when the validation ran on exactly the snapshot's weights: every in-place change of a
        parameter or buffer (an optimizer step, another callback swapping an average in or out,
        loading weights) bumps torch's version counters, so a snapshot whose counters no longer
        match is validated again at the end of fit instead.
        """
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or not self._ingredients:
            return
        entry = self._ingredients[-1]
        if "metric" in entry or entry["epoch"] != trainer.current_epoch or entry.get("version") != _weights_version(pl_module):
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = torch.as_tensor(value, dtype=torch.float32).detach()
        if trainer.world_size > 1:
            value = trainer.strategy.reduce(value.to(trainer.strategy.root_device), reduce_op="mean")
        entry["metric"] = float(value)

    _train_dataloader: Any = None
    _val_dataloaders: Any = None
    _bn_cache: list[Any] | None = None  # the BatchNorm pass's host batches, for one end of fit

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._ingredients:
            warnings.warn(
                f"ModelSoup kept no ingredient (start_epoch={self.start_epoch}, every_n_epochs={self.every_n_epochs}, "
                f"training stopped after epoch {trainer.current_epoch}); the module keeps its trained weights.",
                stacklevel=2,
            )
            return
        if trainer.datamodule is None and self._val_dataloaders is None:
            self._val_dataloaders = trainer.val_dataloaders
            if self._val_dataloaders is None:
                raise RuntimeError(
                    "ModelSoup needs validation data to judge the soups: give the Trainer a datamodule with "
                    "val_dataloader() or fit(..., val_dataloaders=...)."
                )
        trainer.strategy.barrier("ModelSoup.on_fit_end")  # rank 0's ingredient files are complete
        self._bn_cache = None
        try:
            self._cook(trainer, pl_module)
        finally:
            self._bn_cache = None

    def _cook(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate ingredients and soups, save the soups, load the one to keep, report."""
        self.results, self.greedy_epochs, self.soup_paths = {}, [], {}
        recalibrate = self.recalibrate_bn and bool(batchnorm_layers(pl_module))
        sources = self._sources()
        last_state = None
        if self._ingredients[-1]["step"] != trainer.global_step:
            last_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        epochs = self.ingredient_epochs
        count = len(sources)
        finals: dict[str, Mapping[str, Any]] = {}

        ingredient_metrics = []
        for i, (source, epoch, entry) in enumerate(zip(sources, epochs, self._ingredients)):
            label = f"ingredient {i + 1}/{count} (epoch {epoch})"
            if "metric" in entry:  # validated during fit on exactly these weights
                metric = entry["metric"]
            else:
                metric = self._evaluate(trainer, pl_module, load_ingredient(source), label)
            ingredient_metrics.append(metric)
            self.results[f"epoch={epoch}"] = metric

        if self._ingredients[-1]["step"] == trainer.global_step:
            # the last snapshot holds the final trained weights (even if another callback, such as EMA
            # or SWA, swapped its average into the module at the end of training)
            self.results["last"] = ingredient_metrics[-1]
            finals["last"] = load_ingredient(sources[-1])
        else:
            self.results["last"] = self._evaluate(trainer, pl_module, last_state, "the last weights")
            finals["last"] = last_state

        if "uniform" in self.recipes:
            soup = uniform_soup(sources)
            if recalibrate:
                soup = self._recalibrated(trainer, pl_module, soup)
            self.results["uniform"] = self._evaluate(trainer, pl_module, soup, f"the uniform soup of {count}")
            self._save(trainer, "uniform")
            finals["uniform"] = soup

        if "greedy" in self.recipes:
            tried = iter(range(2, count + 1))

            def evaluate(state_dict: Mapping[str, Any]) -> float:
                label = f"greedy soup candidate {next(tried, count)}/{count}"
                return self._evaluate(trainer, pl_module, state_dict, label)

            greedy = greedy_soup(
                sources,
                evaluate,
                metrics=ingredient_metrics,
                mode=self.mode,
                strict=self.strict,
                recalibrate=(lambda sd: self._recalibrated(trainer, pl_module, sd)) if recalibrate else None,
            )
            self.greedy_epochs = [epochs[i] for i in greedy.kept]
            soup = dict(greedy)
            if len(greedy.kept) == 1 or recalibrate:
                # exactly the weights that were scored: the best ingredient, or the last accepted candidate
                self.results["greedy"] = greedy.metric
                pl_module.load_state_dict(soup)
            else:  # the running mean after undone rejections differs by float32 rounding: measure it
                self.results["greedy"] = self._evaluate(trainer, pl_module, soup, "the greedy soup")
            self._save(trainer, "greedy")
            finals["greedy"] = soup

        self.kept = self._choose()
        pl_module.load_state_dict(finals[self.kept])
        self._report(trainer)

    def _choose(self) -> str:
        if self.keep != "best":
            return self.keep
        sign = 1.0 if self.mode == "max" else -1.0
        candidates = [name for name in ("greedy", "uniform", "last") if name in self.results]
        def rank(item: tuple[int, str]) -> tuple[float, int]:
            k, name = item
            value = self.results[name]
            return (-math.inf if math.isnan(value) else sign * value, -k)

        return max(enumerate(candidates), key=rank)[1]

    def _soup_dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        if self.on_disk:
            return Path(self.storage)
        return Path(trainer.log_dir or trainer.default_root_dir) / "soups"

    def _save(self, trainer: pl.Trainer, name: str) -> None:
        """Save the weights now in the module as a Lightning checkpoint (rank 0 writes; temporary name, then rename)."""
        if not self.save_soups:
            return
        directory = self._soup_dir(trainer)
        path = directory / f"soup-{name}.ckpt"
        tmp = directory / f".soup-{name}.ckpt.tmp"
        if trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=True)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("ModelSoup.save")
        self.soup_paths[name] = str(path)

    def _report(self, trainer: pl.Trainer) -> None:
        monitor = self.monitor
        rows = [(name, value) for name, value in self.results.items() if name.startswith("epoch=")]
        kept = set(self.greedy_epochs)
        lines = [f"ModelSoup ({monitor}, {'higher' if self.mode == 'max' else 'lower'} is better)"]
        width = max(len(name) for name in self.results) + 2
        for name, value in rows:
            epoch = int(name.split("=")[1])
            mark = "  in greedy soup" if epoch in kept else ""
            lines.append(f"  {name:<{width}} {value:.6g}{mark}")
        for name in ("last", "uniform", "greedy"):
            if name in self.results:
                extra = f"  epochs {self.greedy_epochs}" if name == "greedy" else ""
                chosen = "  <- kept" if name == self.kept else ""
                lines.append(f"  {name:<{width}} {self.results[name]:.6g}{extra}{chosen}")
        rank_zero_info("\n".join(lines))

        logged = {f"soup/{name}/{monitor}": value for name, value in self.results.items()}
        if "greedy" in self.results:
            logged["soup/greedy/num_kept"] = float(len(self.greedy_epochs))
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
            logger.save()
        trainer._logger_connector._callback_metrics.update({k: torch.tensor(v) for k, v in logged.items()})
