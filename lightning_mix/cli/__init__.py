"""The ``lightning-mix`` command: a LightningCLI over any LightningModule and LightningDataModule."""

from __future__ import annotations

import sys

import torch.distributed as dist
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class LightningMixCLI(LightningCLI):
    """LightningCLI with ``lightning_mix`` imported, so its callbacks and demos resolve by short name.

    After ``fit`` it runs ``test`` on the datamodule's test set (``--test_after_fit false`` turns
    that off), so the main job prints its test metrics at the end.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, run the test loop on the datamodule's test data and print the metrics.",
        )

    def after_fit(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        if not config.get("test_after_fit", True) or self.trainer.interrupted:
            return
        if self.datamodule is None or not hasattr(self.datamodule, "test_dataloader"):
            return
        self.trainer.test(self.model, datamodule=self.datamodule)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-mix`` console script."""
    try:
        run_cli(args)
    except BaseException:
        close_process_group(wait_for_other_ranks=False)  # the other ranks may never reach a barrier
        raise
    close_process_group()


def close_process_group(wait_for_other_ranks: bool = True) -> None:
    """Destroy the default process group if this process still has one.

    Lightning destroys it at exit only for NCCL. A gloo group (DDP on CPU) left alive until
    interpreter shutdown can abort the finished process ("terminate called without an active
    exception", exit code 134) when gloo's threads outlive Python, so a successful run would
    report failure. With ``wait_for_other_ranks`` the ranks meet at a barrier first, so none tears
    down while another still talks to it; after an error, skip the barrier (it could hang).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait_for_other_ranks:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_cli(args: list[str] | None = None) -> LightningMixCLI | None:
    """Run the ``lightning-mix`` command with ``args``; returns the LightningCLI (handy in tests).

    ``fit``, ``validate``, ``test`` and ``predict`` go to LightningCLI; ``merge`` and ``soup``
    (model merging and soups of separate runs' checkpoints) to :mod:`lightning_mix.cli.merge`.
    """
    args = list(args) if args is not None else sys.argv[1:]
    if args and args[0] in ("merge", "soup"):
        from lightning_mix.cli import merge as merge_cli

        command = merge_cli.merge_main if args[0] == "merge" else merge_cli.soup_main
        command(args[1:])
        return None
    # --- compare: runs methods over seeds and compares their test predictions (lightning_mix/cli/compare.py) ---
    if args and args[0] == "compare":
        from lightning_mix.cli import compare as compare_cli

        compare_cli.main(args[1:])
        return None
    # --- end compare ---
    import lightning_mix.callbacks  # noqa: F401  (registers our callbacks for short class names)
    import lightning_mix.demos  # noqa: F401

    return LightningMixCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


