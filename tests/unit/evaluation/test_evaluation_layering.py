"""The evaluation layer stays usable without Lightning."""

import subprocess
import sys


def test_evaluation_does_not_import_lightning():
    code = (
        "import sys, lightning_mix.evaluation; "
        "print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
