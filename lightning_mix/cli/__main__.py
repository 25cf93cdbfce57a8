"""``python -m lightning_mix.cli`` runs the ``lightning-mix`` command."""

from lightning_mix.cli import main

__all__: list[str] = []

main()
