"""lightning-mix: mixed-sample augmentation, calibration and weight averaging for PyTorch Lightning.

Layers (see DESIGN.md): ``mixing``, ``losses``, ``metrics`` and ``averaging`` are torch-only (plus
torchmetrics for ``metrics``); ``callbacks`` and ``mixins`` adapt them to Lightning; ``demos`` holds
embedded data and small models; ``cli`` is the ``lightning-mix`` command.
"""

__version__ = "0.1.0"
