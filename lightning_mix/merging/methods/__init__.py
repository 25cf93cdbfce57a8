"""The registered merge methods: importing this package registers every module in it.

A new method is one module here that defines its parameter dataclass, its per-tensor combine
function and its public function, and calls :func:`~lightning_mix.merging.registry.register`.
"""

import importlib
import pkgutil

__all__: list[str] = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
