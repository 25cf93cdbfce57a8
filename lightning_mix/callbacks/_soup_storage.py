"""The files ModelSoup writes: ingredient and soup names, an earlier run's files, stale temporary files.

Ingredients are ``ingredient-epoch=EEEE.pt`` and soups ``soup-<recipe>.ckpt``; both are written
through :mod:`lightning_mix.checkpoint_io` (a hidden temporary file in the same directory,
``.ingredient-epoch=....pt.<random>.tmp`` or ``.soup-<recipe>.ckpt.<random>.tmp``, then a rename),
so a crash leaves at most such a temporary file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["INGREDIENT_GLOB", "earlier_run_files", "ingredient_path", "remove_stale_tmp_files", "soup_path"]

INGREDIENT_GLOB = "ingredient-epoch=*.pt"
_SOUP_GLOB = "soup-*.ckpt"
_TMP_GLOBS = (".ingredient-epoch=*.tmp", ".soup-*.ckpt*.tmp")


def ingredient_path(directory: str | Path, epoch: int) -> Path:
    return Path(directory) / f"ingredient-epoch={epoch:04d}.pt"


def soup_path(directory: Path, recipe: str) -> Path:
    """The soup checkpoint's path."""
    return directory / f"soup-{recipe}.ckpt"


def earlier_run_files(directories: Iterable[Path], ours: Iterable[str | Path]) -> list[Path]:
    """Ingredient and soup files in ``directories`` that are not among ``ours`` (this run's files)."""
    known = {Path(path).resolve() for path in ours}
    return [
        path
        for directory in directories
        if directory.is_dir()
        for pattern in (INGREDIENT_GLOB, _SOUP_GLOB)
        for path in sorted(directory.glob(pattern))
        if path.resolve() not in known
    ]


def remove_stale_tmp_files(directories: Iterable[Path]) -> None:
    """Delete the temporary files a killed write left behind."""
    for directory in directories:
        if directory.is_dir():
            for pattern in _TMP_GLOBS:
                for path in directory.glob(pattern):
                    path.unlink(missing_ok=True)
