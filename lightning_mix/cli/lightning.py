"""``lightning-mix fit | validate | test | predict``: LightningCLI over any LightningModule and LightningDataModule."""

from __future__ import annotations

import argparse

import torch.distributed as dist
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

__all__ = ["LightningMixCLI", "build_parser", "close_process_group", "main", "run_cli"]


class LightningMixCLI(LightningCLI):
    """LightningCLI with ``lightning_mix`` imported, so its callbacks and demos resolve by short name.

    After ``fit`` it runs ``test`` on the datamodule's test set (``--test_after_fit false`` turns
    that off), so the main job prints its test metrics at the end.
    """

    def add_arguments_to_parser(self, parser) -> None:
        """Add ``--test_after_fit``."""
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, run the test loop on the datamodule's test data and print the metrics.",
        )

    def parse_arguments(self, parser, args) -> None:
        """Parse ``args`` when given (the dispatcher's), without LightningCLI's warning about ``sys.argv``.

        ``lightning-mix`` always hands LightningCLI the arguments it should parse (the ``soup``
        command builds its own), so the warning about also having command-line arguments would
        be printed on every normal invocation.
        """
        if args is None:
            super().parse_arguments(parser, args)
        elif isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def after_fit(self) -> None:
        """Run the test loop after fit unless ``--test_after_fit false`` or the fit was interrupted."""
        config = self.config.get(self.subcommand, self.config)
        if not config.get("test_after_fit", True) or self.trainer.interrupted:
            return
        if self.datamodule is None or not hasattr(self.datamodule, "test_dataloader"):
            return
        self.trainer.test(self.model, datamodule=self.datamodule)


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


def build_cli(args: list[str] | None, run: bool = True, **kwargs) -> LightningMixCLI:
    """The LightningCLI of every command that takes a LightningCLI config (``fit`` ... and ``soup``)."""
    import lightning_mix.callbacks  # noqa: F401  (registers our callbacks for short class names)
    import lightning_mix.demos  # noqa: F401

    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return LightningMixCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        **kwargs,
    )


def run_cli(args: list[str] | None = None) -> LightningMixCLI:
    """Run a LightningCLI command (``args`` starts with ``fit``, ``validate``, ``test`` or ``predict``)."""
    return build_cli(list(args) if args is not None else [])


def build_parser() -> argparse.ArgumentParser:
    """A stub parser for the dispatcher's listing; LightningCLI parses the real options."""
    return argparse.ArgumentParser(prog="lightning-mix fit", description="LightningCLI: see 'lightning-mix fit --help'")


def main(argv: list[str]) -> None:
    """Run ``argv`` (the subcommand first) and close a leftover process group, also after an error."""
    try:
        build_cli(list(argv))
    except BaseException:
        close_process_group(wait_for_other_ranks=False)  # the other ranks may never reach a barrier
        raise
    close_process_group()
