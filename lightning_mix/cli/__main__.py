"""``python -m lightning_mix.cli`` runs the ``lightning-mix`` command."""

from lightning_mix.cli import main

main()
