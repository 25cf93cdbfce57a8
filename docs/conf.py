"""Sphinx configuration of the lightning-mix documentation site.

Build (offline, warnings are errors): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document the checkout, not an installed copy

import lightning_mix  # noqa: E402

project = "lightning-mix"
author = "lightning-mix contributors"
copyright = "lightning-mix contributors"  # noqa: A001 (Sphinx's name)
release = version = lightning_mix.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
# Intersphinx (links to torch, Lightning, torchmetrics) is off: it downloads each project's
# objects.inv at build time, and the build must work offline (.ci/run, sandboxed machines). No
# installed package ships an inventory to point at instead. References to those projects'
# objects are therefore written as plain code, and nitpicky mode stays off.

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # `[text](page.md#a-heading)` links resolve to headings up to ###

# API reference: one page per subpackage (autodoc runs inside ``{eval-rst}`` blocks: MyST's own
# directive syntax does not document members) (docs/api/<name>.md). Packages marked optional arrive
# with other branches of the project; their page is left out (with a note on the console) while
# the package is absent, so the site builds on every branch. Any other import error fails the build.
API_PACKAGES = {
    "mixing": False,
    "data": False,
    "losses": False,
    "metrics": False,
    "averaging": False,
    "merging": False,
    "checkpoint_io": False,
    "evaluation": False,
    "callbacks": False,
    "mixins": False,
    "modules": False,
    "demos": False,
    "cli": False,
}
for _name, _optional in API_PACKAGES.items():
    _module = f"lightning_mix.{_name}"
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as error:
        if not (_optional and error.name == _module):
            raise
        exclude_patterns.append(f"api/{_name}.md")
        print(f"conf.py: {_module} is not in this checkout; api/{_name}.md left out")

autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# Overridden framework methods (Lightning hooks, forward, Metric.update) without a docstring of
# their own are left out: their meaning is the framework's, and Lightning's docstrings are not
# written for this site (they fail the -W build).
autodoc_inherit_docstrings = False
# Optional dependencies that the documented modules import lazily are not needed to build.
autodoc_mock_imports: list[str] = []

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" of dataclasses as fields, not a second description of each member


class _EmptyGlobFilter(logging.Filter):
    """Drop "toctree glob pattern ... didn't match any documents" (Sphinx gives it no warning type,
    so ``suppress_warnings`` cannot name it). The toctrees glob the guide and benchmark pages, which
    several branches add; a section whose pages have not arrived yet is empty, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "didn't match any documents" not in str(record.msg)


logging.getLogger("sphinx.sphinx.directives.other").addFilter(_EmptyGlobFilter())

html_theme = "furo"
html_title = f"lightning-mix {release}"
html_static_path: list[str] = []
