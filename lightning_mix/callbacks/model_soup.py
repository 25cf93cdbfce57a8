"""Model soups of epoch-end snapshots inside the Trainer: keep ingredients during fit, cook soups at its end."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_mix.averaging.batchnorm import batchnorm_layers, recalibrate_batchnorm
from lightning_mix.averaging.soups import (
    greedy_soup,
    load_ingredient,
    save_ingredient,
    uniform_soup,
)
from lightning_mix.callbacks._batch_feed import (
    model_input,
    on_host,
    to_device,
    transferred,
)
from lightning_mix.callbacks._ownership import WeightOwner, resolve_weight_owner
from lightning_mix.callbacks._soup_scoring import (
    LabelScore,
    Scorer,
    default_mode,
    mean_score,
    resolve_scorer,
    score_name,
)
from lightning_mix.callbacks._soup_storage import (
    INGREDIENT_GLOB,
    earlier_run_files,
    ingredient_path,
    remove_stale_tmp_files,
    soup_path,
)
from lightning_mix.callbacks._trainer_state import (
    check_not_sharded,
    is_last_training_batch,
)
from lightning_mix.callbacks._validation_reuse import (
    ValidationCapture,
    weights_fingerprint,
)
from lightning_mix.checkpoint_io import atomic_write_path

__all__ = ["ModelSoup"]

_RECIPES = ("uniform", "greedy")
_KEEP = ("best", "uniform", "greedy", "last")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _cpu_copy(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _non_finite_keys(state: Mapping[str, Any]) -> list[str]:
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


def _first_batched_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value if value.dim() > 0 else None
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_batched_tensor(item)
        if found is not None:
            return found
    return None


class ModelSoup(WeightOwner, Callback):
    r"""Keep epoch-end snapshots as soup ingredients; at the end of training, cook and score uniform and greedy soups.

    **Ingredients.** After the last training batch of every ``every_n_epochs``-th epoch from
    ``start_epoch`` on (before the epoch-end validation, so a checkpoint saved there already holds
    it), the module's state dict is kept: in CPU memory (``storage="memory"``) or as a file
    ``ingredient-epoch=EEEE.pt`` in the directory ``storage`` (rank 0 writes, atomically: a
    temporary file, then a rename). ``max_ingredients`` keeps only the latest ones.

    **Scoring.** Every candidate is scored by a light loop of the callback's own over the validation
    batches of dataloader ``dataloader_idx`` (``limit_val_batches`` respected): each batch goes
    through the precision plugin, the module's (or datamodule's) ``on_before_batch_transfer``,
    ``trainer.strategy.batch_to_device`` (``transfer_batch_to_device``, ``on_after_batch_transfer``)
    and the forward runs in eval mode inside ``precision_plugin.forward_context()``. The score is the
    mean of per-sample values over all batches and ranks (sum and count reduced over ranks, so exact
    under DDP): ``score="accuracy"`` (default, held-out top-1 accuracy as in Wortsman et al. 2022),
    ``"nll"`` (cross-entropy), or any ``score(module, batch) -> tensor`` of per-sample values (a
    callable, or from YAML its import path ``"package.module.function"``). Labels are
    ``batch[target_key]`` (default: ``batch[1]`` of a list/tuple batch; dense targets are argmaxed),
    the model input ``batch[input_key]`` (default: the batch if a tensor, ``batch[0]``, or a dict's one
    tensor entry). The module's logged metrics are not used. On a single process with a built-in
    score, an ingredient is scored from the logits of the fit's own epoch-end validation when that
    validation ran on exactly its weights and called the module once per batch on the model input
    (a forward hook removed by its handle; a fingerprint of the weights checked before and after);
    otherwise it is scored by the callback's loop at the end.

    **Cooking** (``on_train_end``, so whatever evaluates the final model in ``on_fit_end`` sees the
    result): each ingredient is scored as it was saved; ``"uniform"`` is the mean of all
    ingredients; ``"greedy"`` sorts them by score, best first, and adds each if the score of the
    average does not get worse (``strict=True``: only if it gets strictly better); ``"last"`` is the
    trained weights at the end of training. An ingredient with a NaN or infinite weight is left out
    of both soups with a warning. With ``recalibrate_bn`` (and BatchNorm layers), the BatchNorm
    statistics of every average are recomputed first from at least ``bn_samples`` training samples
    (whole batches, drawn once and reused for every candidate; ``None``: all the batches the fit
    used), see :func:`~lightning_mix.averaging.recalibrate_batchnorm`.

    **Results.** A table is printed (rank 0); the scores are logged to the loggers and put in
    ``trainer.callback_metrics`` as ``soup/<name>/<score>`` (``<name>``: ``epoch=E``, ``last``,
    ``uniform``, ``greedy``; ``<score>``: ``acc``, ``nll`` or the scorer's name) and
    ``soup/greedy/num_kept``; the same numbers are in :attr:`results`, the greedy soup's epochs in
    :attr:`greedy_epochs`. Each soup is saved as a Lightning checkpoint (``soup-uniform.ckpt``,
    ``soup-greedy.ckpt`` in ``dirpath``; default the ``storage`` directory, or ``<log_dir>/soups``
    with in-memory storage) that ``LightningModule.load_from_checkpoint`` reads; paths in
    :attr:`soup_paths`.

    **Weights at the end** (the weight-owner rule of EMA, SWA and ModelSoup, see
    ``owns_final_weights``): when ModelSoup owns the final weights it leaves ``keep`` in the module:
    ``"best"`` (highest/lowest score among last, uniform and greedy; ties prefer greedy, then
    uniform), ``"uniform"``, ``"greedy"`` or ``"last"``; :attr:`kept` names it. When it does not own
    them, the module gets back exactly what it held before cooking (:attr:`kept` is ``None``), and
    the soups stay available as files and in :attr:`results`. If cooking fails, the module also gets
    those weights back before the error propagates. A checkpoint saved after fit holds what the
    module holds in ``state_dict`` and, when that is a soup, the trained weights in
    ``current_model_state`` (Lightning's ``WeightAveraging`` layout); a fit resumed from it trains on
    from the trained weights.

    **Misconfiguration** is caught before training: no validation (no val dataloader, no
    ``validation_step``, ``limit_val_batches=0``) at setup; an empty validation set, a batch the
    scorer cannot read or whose input/labels cannot be picked at the start of training (from the
    first validation batch); a training batch whose input cannot be picked for the BatchNorm pass
    at the first training batch; ingredients or soups of an earlier run in the directories it
    writes to at ``on_fit_start`` (``FileExistsError``; ``overwrite=True`` deletes them first).
    Stale temporary files of a crashed write are removed at ``on_fit_start``.

    **Resume.** Ingredients kept in memory are part of the callback state; on-disk ingredients are
    referenced by path, so keep the directory. ``fit(ckpt_path=...)`` continues with the same
    ingredients (ingredient files of that run newer than the checkpoint are removed).

    **Distributed.** Under DDP the snapshot is broadcast from rank 0, scores are reduced over
    ranks (sum and count) and BatchNorm statistics pooled, so every rank makes the same choices and
    ends with identical weights. The directories must be visible to all ranks. Sharded strategies
    (FSDP, DeepSpeed, ModelParallel) are not supported: they raise at setup.

    Args:
        every_n_epochs: keep a snapshot every this many epochs.
        start_epoch: first 0-based epoch whose snapshot is kept.
        max_ingredients: keep only the latest this many snapshots (``None``: all).
        storage: ``"memory"`` or a directory for ingredient files.
        score: ``"accuracy"``, ``"nll"``, an import path, or a callable ``score(module, batch)``
            returning per-sample values.
        mode: ``"max"`` if a larger score is better, ``"min"`` if smaller; default from ``score``
            (accuracy: max, nll: min; a custom score needs it).
        recipes: which soups to cook: any of ``"uniform"``, ``"greedy"``.
        recalibrate_bn: recompute BatchNorm statistics of averaged weights before scoring them.
        keep: what the module holds after fit when ModelSoup owns the final weights:
            ``"best"``, ``"uniform"``, ``"greedy"`` or ``"last"``.
        strict: greedy soup's rule: ``False`` adds an ingredient when the score does not get
            worse, ``True`` only when it gets strictly better (the original rule).
        save_soups: save each soup as a Lightning checkpoint.
        dirpath: where to save soup checkpoints (see above for the default).
        overwrite: delete the ingredient and soup files of an earlier run found in the directories
            ModelSoup writes to, instead of refusing to start.
        bn_samples: training samples (per rank) for each BatchNorm pass, rounded up to whole
            batches (a batch's size is the first dimension of its model input). ``None``: as many
            batches as the fit used (streamed, not cached).
        input_key: the model input in a batch (index or key; ``None``: see above).
        target_key: the labels in a batch for the built-in scores (``None``: ``batch[1]``).
        dataloader_idx: the validation dataloader to score on, when there are several.
        bn_forward: ``bn_forward(module, batch)`` replaces ``module(batch[input_key])`` in the
            BatchNorm pass (Python use).
        owns_final_weights: whether ModelSoup puts its choice in the module at the end of fit:
            ``None`` (default) when no other averaging callback claims it, ``True`` to win over
            them, ``False`` never.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import ModelSoup
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        soup = ModelSoup(storage="soup_ingredients")          # scores held-out accuracy
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
        score: str | Callable[[nn.Module, Any], torch.Tensor] = "accuracy",
        mode: str | None = None,
        recipes: Sequence[str] = ("uniform", "greedy"),
        recalibrate_bn: bool = True,
        keep: str = "best",
        strict: bool = False,
        save_soups: bool = True,
        dirpath: str | None = None,
        overwrite: bool = False,
        bn_samples: int | None = 256,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
        dataloader_idx: int = 0,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
        owns_final_weights: bool | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"ModelSoup(every_n_epochs={every_n_epochs}): must be >= 1.")
        if start_epoch < 0:
            raise ValueError(f"ModelSoup(start_epoch={start_epoch}): must be >= 0.")
        if max_ingredients is not None and max_ingredients < 1:
            raise ValueError(f"ModelSoup(max_ingredients={max_ingredients}): must be >= 1 or None (keep all).")
        recipes = (recipes,) if isinstance(recipes, str) else tuple(recipes)
        unknown = [r for r in recipes if r not in _RECIPES]
        if unknown:
            raise ValueError(f"ModelSoup(recipes={list(recipes)}): unknown {unknown}; choose from {list(_RECIPES)}.")
        if keep not in _KEEP:
            raise ValueError(f"ModelSoup(keep={keep!r}): choose one of {list(_KEEP)}.")
        if keep in _RECIPES and keep not in recipes:
            raise ValueError(f"ModelSoup(keep={keep!r}) needs {keep!r} in recipes (got {list(recipes)}).")
        if bn_samples is not None and bn_samples < 1:
            raise ValueError(
                f"ModelSoup(bn_samples={bn_samples}): must be >= 1 or None (as many batches as the fit used)."
            )
        if dataloader_idx < 0:
            raise ValueError(f"ModelSoup(dataloader_idx={dataloader_idx}): must be >= 0.")
        self.every_n_epochs = every_n_epochs
        self.start_epoch = start_epoch
        self.max_ingredients = max_ingredients
        self.storage = storage
        self.score = score
        self.mode = default_mode(score, mode)
        self.recipes = recipes
        self.recalibrate_bn = recalibrate_bn
        self.keep = keep
        self.strict = strict
        self.save_soups = save_soups
        self.dirpath = dirpath
        self.overwrite = overwrite
        self.bn_samples = bn_samples
        self.input_key = input_key
        self.target_key = target_key
        self.dataloader_idx = dataloader_idx
        self.bn_forward = bn_forward
        self.owns_final_weights = owns_final_weights
        self._scorer: Scorer = resolve_scorer(score, input_key, target_key)
        self.score_name = score_name(score)

        self._ingredients: list[dict[str, Any]] = []  # {"epoch", "step", "state_dict" | "path"}
        self._last_epoch = -1
        self._restored = False
        self._owner = False
        self._val_checked = False
        self._train_checked = False
        self._trained: tuple[int, dict[str, Any]] | None = None  # (step, weights) when no snapshot has them
        self._bn_cache: list[Any] | None = None
        self._in_module: Mapping[str, Any] | None = None  # a state the module holds right now (skip a reload)
        self._pending: tuple[dict[str, Any], torch.Tensor] | None = None  # a snapshot its validation may score
        self._capture: ValidationCapture | None = None
        self._capture_entry: dict[str, Any] = {}
        self._trained_after_cooking: Mapping[str, Any] | None = None  # when the module holds a soup instead
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
        return self._generate_state_key(storage=self.storage, score=self.score_name)

    @property
    def ingredient_epochs(self) -> list[int]:
        """The epochs of the ingredients currently kept."""
        return [ing["epoch"] for ing in self._ingredients]

    def ingredient_state_dicts(self) -> list[Mapping[str, torch.Tensor]]:
        """The ingredients as state dicts (files are memory-mapped)."""
        return [load_ingredient(source) for source in self._sources()]

    def _sources(self) -> list[Any]:
        return [ing["path"] if "path" in ing else ing["state_dict"] for ing in self._ingredients]

    # ------------------------------------------------------------------ checks before training
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_not_sharded(trainer, "ModelSoup")
        self._owner = resolve_weight_owner(trainer, self)
        if not trainer.enable_validation:
            raise RuntimeError(
                "ModelSoup scores its soups on the validation data, and this fit has none: give the Trainer a "
                "datamodule with val_dataloader() or fit(..., val_dataloaders=...), define validation_step in the "
                f"module, and keep limit_val_batches > 0 (it is {trainer.limit_val_batches})."
            )
        self._val_checked = self._train_checked = False
        self._trained_after_cooking = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prepare_directories(trainer)

    def _directories(self, trainer: pl.Trainer) -> list[Path]:
        directories = [Path(self.storage)] if self.on_disk else []
        if self.save_soups and self._soup_dir(trainer) not in directories:
            directories.append(self._soup_dir(trainer))
        return directories

    def _prepare_directories(self, trainer: pl.Trainer) -> None:
        """Remove stale temporary files; refuse (or, with ``overwrite``, delete) an earlier run's files."""
        directories = self._directories(trainer)
        ours = [ing["path"] for ing in self._ingredients if "path" in ing] + list(self.soup_paths.values())
        earlier = earlier_run_files(directories, ours)
        resuming = self._restored
        if earlier and not resuming and not self.overwrite:
            raise FileExistsError(
                f"ModelSoup would overwrite files of an earlier run in {sorted({str(p.parent) for p in earlier})}: "
                f"{[p.name for p in earlier[:5]]}{' ...' if len(earlier) > 5 else ''}. Use another storage/dirpath, "
                "delete them, resume that run with fit(ckpt_path=...), or set ModelSoup(overwrite=True) to delete them."
            )
        trainer.strategy.barrier("ModelSoup.check_directories")  # every rank has looked before rank 0 deletes
        if trainer.is_global_zero:
            remove_stale_tmp_files(directories)
            # an overwrite, or (resuming) ingredients of that run newer than its checkpoint; its soups are cooked again
            for path in earlier:
                if not resuming or path.match(INGREDIENT_GLOB):
                    path.unlink(missing_ok=True)
        trainer.strategy.barrier("ModelSoup.prepare_directories")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.val_dataloaders is None:  # no sanity check ran: load them now, as the first validation would
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
        loader, _ = self._val_loader(trainer)
        if not self._val_checked:
            batch = next(iter(transferred(trainer, pl_module, loader, 1, self.dataloader_idx)), None)
            if batch is None:
                raise RuntimeError(f"ModelSoup: validation dataloader {self.dataloader_idx} yields no batch.")
            self._check_val_batch(trainer, pl_module, batch)

    def _val_loader(self, trainer: pl.Trainer) -> tuple[Any, int | float]:
        loaders = trainer.val_dataloaders
        counts = trainer.num_val_batches
        if loaders is None:
            raise RuntimeError("ModelSoup found no validation dataloader to score the soups on.")
        if not isinstance(loaders, (list, tuple)):
            loaders = [loaders]
        if self.dataloader_idx >= len(loaders):
            raise ValueError(
                f"ModelSoup(dataloader_idx={self.dataloader_idx}): the fit has {len(loaders)} validation dataloader(s)."
            )
        limit = counts[self.dataloader_idx] if self.dataloader_idx < len(counts) else float("inf")
        if limit == 0:
            raise RuntimeError(
                f"ModelSoup: validation dataloader {self.dataloader_idx} is empty (0 batches after limit_val_batches); "
                "the soups cannot be scored. Give it data or remove ModelSoup."
            )
        return loaders[self.dataloader_idx], limit

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._val_checked and dataloader_idx == self.dataloader_idx:
            self._check_val_batch(trainer, pl_module, batch)
        if self._capture is not None:
            self._capture.start_batch()

    # ------------------------------------------------------------------ ingredient scores from the fit's validation
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is None or trainer.sanity_checking:
            return
        entry, fingerprint = pending
        same_weights = entry["step"] == trainer.global_step and torch.equal(weights_fingerprint(pl_module), fingerprint)
        if same_weights and isinstance(self._scorer, LabelScore):
            self._capture = ValidationCapture(pl_module, self._scorer, fingerprint)
            self._capture_entry = entry

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._capture is not None and dataloader_idx == self.dataloader_idx:
            self._capture.end_batch(batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        capture, self._capture = self._capture, None
        if capture is None:
            return
        counts = trainer.num_val_batches
        expected = counts[self.dataloader_idx] if self.dataloader_idx < len(counts) else -1
        score = capture.finish(expected)
        if score is not None:
            self._capture_entry["score"] = score

    def _check_val_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """Score one validation batch now, so a scorer that cannot read the batches fails before training."""
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                values = self._scorer(pl_module, batch)
        finally:
            for module, training in modes:
                module.training = training
        if not isinstance(values, torch.Tensor) or values.numel() == 0:
            raise TypeError(
                f"ModelSoup(score={self.score!r}) must return a non-empty tensor of per-sample values, "
                f"got {values if not isinstance(values, torch.Tensor) else 'an empty tensor'}."
            )
        self._val_checked = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._train_checked:
            self._train_checked = True
            if self.recalibrate_bn and self.bn_forward is None and batchnorm_layers(pl_module):
                model_input(batch, self.input_key, "ModelSoup (BatchNorm pass)")

    # ------------------------------------------------------------------ snapshots during fit
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # after the epoch's last optimizer step, before the epoch-end validation and checkpoint
        if is_last_training_batch(trainer, batch_idx):
            self._snapshot(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer, pl_module)  # epochs cut short (max_steps, a stop signal)
        if not self._ingredients or self._ingredients[-1]["step"] != trainer.global_step:
            # no snapshot holds these trained weights: keep them for the "last" candidate
            self._trained = (trainer.global_step, self._broadcast_state(trainer, pl_module, cpu=True))

    def _broadcast_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule, cpu: bool) -> dict[str, Any]:
        state = pl_module.state_dict()
        if _distributed() and trainer.world_size > 1:  # BatchNorm buffers may differ per rank: take rank 0's
            state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    torch.distributed.broadcast(value, src=0)
        return _cpu_copy(state) if cpu else state

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch <= self._last_epoch or epoch < self.start_epoch or (epoch - self.start_epoch) % self.every_n_epochs:
            return
        self._last_epoch = epoch
        state = self._broadcast_state(trainer, pl_module, cpu=not self.on_disk)
        entry: dict[str, Any] = {"epoch": epoch, "step": trainer.global_step}
        if self.on_disk:
            path = ingredient_path(self.storage, epoch)
            if trainer.is_global_zero:
                save_ingredient(state, path)
            entry["path"] = str(path)
        else:
            entry["state_dict"] = state
        self._ingredients.append(entry)
        if isinstance(self._scorer, LabelScore) and trainer.world_size == 1:
            self._pending = (entry, weights_fingerprint(pl_module))
        if self.max_ingredients is not None:
            while len(self._ingredients) > self.max_ingredients:
                dropped = self._ingredients.pop(0)
                if "path" in dropped and trainer.is_global_zero:
                    Path(dropped["path"]).unlink(missing_ok=True)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"ingredients": list(self._ingredients), "last_epoch": self._last_epoch, "storage": self.storage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = True
        self._ingredients = [
            {k: v for k, v in ing.items() if k in ("epoch", "step", "state_dict", "path", "score")}
            for ing in state_dict.get("ingredients", [])
        ]
        self._last_epoch = int(state_dict.get("last_epoch", -1))
        missing = [ing["path"] for ing in self._ingredients if "path" in ing and not Path(ing["path"]).is_file()]
        if missing:
            warnings.warn(
                f"ModelSoup: {len(missing)} ingredient file(s) from the checkpoint are missing ({missing[:3]}); "
                "they are dropped. Keep the storage directory when resuming.",
                stacklevel=2,
            )
            self._ingredients = [ing for ing in self._ingredients if ing.get("path") not in missing]

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # state_dict holds what the module holds (the soup); the trained weights go where Lightning's
        # WeightAveraging puts them, so a fit resumed from this checkpoint trains on from them
        if self._trained_after_cooking is not None:
            checkpoint["current_model_state"] = dict(self._trained_after_cooking)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING and "current_model_state" in checkpoint:
            pl_module.load_state_dict(checkpoint["current_model_state"])  # train on from the trained weights

    # ------------------------------------------------------------------ scoring and BatchNorm passes
    def _score_weights(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Mapping[str, Any], label: str
    ) -> float:
        rank_zero_info(f"ModelSoup: scoring {label}")
        if state is not self._in_module:
            pl_module.load_state_dict(state)
        self._in_module = None
        loader, limit = self._val_loader(trainer)
        return mean_score(
            pl_module,
            transferred(trainer, pl_module, loader, limit, self.dataloader_idx),
            self._scorer,
            trainer.precision_plugin.forward_context,
            lambda totals: trainer.strategy.reduce(totals, reduce_op="sum"),
            trainer.strategy.root_device,
        )

    def _bn_feed(self, module: nn.Module, batch: Any) -> Any:
        if self.bn_forward is not None:
            return self.bn_forward(module, batch)
        return module(model_input(batch, self.input_key, "ModelSoup (BatchNorm pass)"))

    def _batch_size(self, batch: Any) -> int:
        """Samples in a batch: the first dimension of its model input (or of its first tensor)."""
        try:
            inputs = model_input(batch, self.input_key, "ModelSoup")
        except (KeyError, TypeError):  # a batch only bn_forward understands
            inputs = batch
        first = _first_batched_tensor(inputs)
        return len(first) if first is not None else 1

    def _host_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[Any]:
        """Training batches for the BatchNorm pass, before the device transfer."""
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError(
                "ModelSoup found no training dataloader for the BatchNorm pass; set recalibrate_bn=False."
            )
        if isinstance(loader, (Mapping, list, tuple)):
            raise TypeError(
                "ModelSoup's BatchNorm pass supports a single training dataloader; with several, set "
                "recalibrate_bn=False."
            )
        limit = trainer.num_training_batches
        seen = 0
        for index, batch in enumerate(loader):
            if self.bn_samples is None and index >= limit:
                return
            batch = on_host(trainer, pl_module, batch, 0)
            yield batch
            if self.bn_samples is not None:
                seen += self._batch_size(batch)
                if seen >= self.bn_samples:
                    return

    def _train_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[Any]:
        """The BatchNorm pass's batches on the device.

        The same cached ones every time, or (``bn_samples=None``) a fresh full pass.
        """
        if self.bn_samples is None:
            host_batches: Any = self._host_batches(trainer, pl_module)
        else:
            if self._bn_cache is None:
                self._bn_cache = list(self._host_batches(trainer, pl_module))
            host_batches = self._bn_cache
        for batch in host_batches:
            yield to_device(trainer, batch, 0)

    def _recalibrated(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Mapping[str, Any]) -> dict:
        """Load ``state``, recompute its BatchNorm statistics on training data, return a CPU copy of the result."""
        pl_module.load_state_dict(state)

        def forward(module: nn.Module, batch: Any) -> Any:
            with trainer.precision_plugin.forward_context():
                return self._bn_feed(module, batch)

        recalibrate_batchnorm(pl_module, self._train_batches(trainer, pl_module), forward=forward)
        result = _cpu_copy(pl_module.state_dict())
        self._in_module = result
        return result

    # ------------------------------------------------------------------ cooking at the end of training
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results, self.greedy_epochs, self.soup_paths, self.kept = {}, [], {}, None
        if not self._ingredients:
            warnings.warn(
                f"ModelSoup kept no ingredient (start_epoch={self.start_epoch}, every_n_epochs={self.every_n_epochs}, "
                f"training stopped after epoch {trainer.current_epoch}); the module keeps its weights.",
                stacklevel=2,
            )
            return
        trainer.strategy.barrier("ModelSoup.on_train_end")  # rank 0's ingredient files are complete
        held = _cpu_copy(pl_module.state_dict())  # what the module holds now, given back on failure or to a non-owner
        self._bn_cache, self._in_module = None, None
        try:
            choice, weights = self._cook(trainer, pl_module, held)
            if self._owner and choice is not None:
                pl_module.load_state_dict(weights)
                self.kept = choice
                if choice != "last":
                    self._trained_after_cooking = self._trained_weights(trainer, held)
            else:
                pl_module.load_state_dict(held)
        except BaseException:
            pl_module.load_state_dict(held)
            raise
        finally:
            self._bn_cache, self._in_module = None, None
        self._report(trainer)

    def _trained_weights(self, trainer: pl.Trainer, held: dict[str, Any]) -> Mapping[str, Any]:
        """The trained weights at the end of training, whatever another callback swapped into the module."""
        if self._ingredients[-1]["step"] == trainer.global_step:
            return load_ingredient(self._sources()[-1])
        if self._trained is not None and self._trained[0] == trainer.global_step:
            return self._trained[1]
        return held

    def _cook(self, trainer: pl.Trainer, pl_module: pl.LightningModule, held: dict[str, Any]) -> tuple[str | None, Any]:
        """Score ingredients and soups, save the soups; return the choice and its weights."""
        recalibrate = self.recalibrate_bn and bool(batchnorm_layers(pl_module))
        sources, epochs = self._sources(), self.ingredient_epochs
        count = len(sources)
        finals: dict[str, Mapping[str, Any]] = {}

        usable, scores, diverged = [], [], []
        for i, (source, epoch) in enumerate(zip(sources, epochs)):
            state = load_ingredient(source)
            bad = _non_finite_keys(state)
            if bad:
                diverged.append(epoch)
                self.results[f"epoch={epoch}"] = float("nan")
                warnings.warn(
                    f"ModelSoup: the ingredient of epoch {epoch} has NaN or infinite values (in {bad[:3]}); it is "
                    "left out of the soups (training diverged?).",
                    stacklevel=2,
                )
                continue
            if "score" in self._ingredients[i]:  # scored by the fit's own validation, on exactly these weights
                score = self._ingredients[i]["score"]
            else:
                score = self._score_weights(trainer, pl_module, state, f"ingredient {i + 1}/{count} (epoch {epoch})")
            self.results[f"epoch={epoch}"] = score
            usable.append(i)
            scores.append(score)

        trained = self._trained_weights(trainer, held)
        if _non_finite_keys(trained):
            self.results["last"] = float("nan")
        elif self._ingredients[-1]["step"] == trainer.global_step and count - 1 in usable:
            self.results["last"] = scores[usable.index(count - 1)]
        else:
            self.results["last"] = self._score_weights(trainer, pl_module, trained, "the last weights")
        finals["last"] = trained

        if not usable:
            warnings.warn(
                "ModelSoup: every ingredient has NaN or infinite values; no soup is cooked and the module keeps "
                "its weights.",
                stacklevel=2,
            )
            return None, None
        kept_sources, kept_epochs = [sources[i] for i in usable], [epochs[i] for i in usable]

        if "uniform" in self.recipes:
            soup = uniform_soup(kept_sources)
            if recalibrate:
                soup = self._recalibrated(trainer, pl_module, soup)
            label = f"the uniform soup of {len(kept_sources)}"
            self.results["uniform"] = self._score_weights(trainer, pl_module, soup, label)
            self._save(trainer, pl_module, "uniform", soup)
            finals["uniform"] = soup

        if "greedy" in self.recipes:
            tried = iter(range(2, len(kept_sources) + 1))

            def evaluate(state: Mapping[str, Any]) -> float:
                label = f"greedy soup candidate {next(tried, len(kept_sources))}/{len(kept_sources)}"
                return self._score_weights(trainer, pl_module, state, label)

            greedy = greedy_soup(
                kept_sources,
                evaluate,
                metrics=scores,
                mode=self.mode,
                strict=self.strict,
                recalibrate=(lambda sd: self._recalibrated(trainer, pl_module, sd)) if recalibrate else None,
            )
            self.greedy_epochs = [kept_epochs[i] for i in greedy.kept]
            soup = dict(greedy)
            if len(greedy.kept) == 1 or recalibrate:
                # exactly the weights that were scored: the best ingredient, or the last accepted candidate
                self.results["greedy"] = greedy.metric
            else:  # the running mean after undone rejections differs by float32 rounding: score it
                self.results["greedy"] = self._score_weights(trainer, pl_module, soup, "the greedy soup")
            self._save(trainer, pl_module, "greedy", soup)
            finals["greedy"] = soup

        choice = self._choose()
        return choice, finals[choice]

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

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, state: Mapping[str, Any]) -> None:
        """Save ``state`` as a Lightning checkpoint (rank 0 writes, atomically: no file left on failure)."""
        if not self.save_soups:
            return
        if state is not self._in_module:
            pl_module.load_state_dict(state)
        self._in_module = state
        path = soup_path(self._soup_dir(trainer), name)
        # Lightning builds the checkpoint (hyper-parameters, module hooks); checkpoint_io makes the write
        # atomic. Every rank calls save_checkpoint (it synchronises); only rank 0 writes, so only its
        # temporary file exists to be renamed.
        with atomic_write_path(path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=True)
        trainer.strategy.barrier("ModelSoup.save")
        self.soup_paths[name] = str(path)

    def _report(self, trainer: pl.Trainer) -> None:
        name = self.score_name
        rows = [(key, value) for key, value in self.results.items() if key.startswith("epoch=")]
        kept = set(self.greedy_epochs)
        lines = [f"ModelSoup ({name}, {'higher' if self.mode == 'max' else 'lower'} is better)"]
        width = max(len(key) for key in self.results) + 2
        for key, value in rows:
            epoch = int(key.split("=")[1])
            mark = "  in greedy soup" if epoch in kept else ""
            lines.append(f"  {key:<{width}} {value:.6g}{mark}")
        for key in ("last", "uniform", "greedy"):
            if key in self.results:
                extra = f"  epochs {self.greedy_epochs}" if key == "greedy" else ""
                chosen = "  <- kept" if key == self.kept else ""
                lines.append(f"  {key:<{width}} {self.results[key]:.6g}{extra}{chosen}")
        rank_zero_info("\n".join(lines))

        logged = {f"soup/{key}/{name}": value for key, value in self.results.items()}
        if "greedy" in self.results:
            logged["soup/greedy/num_kept"] = float(len(self.greedy_epochs))
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
            logger.save()
        # trainer.callback_metrics is the Trainer's own dict (public property): what the module logged stays
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in logged.items()})
