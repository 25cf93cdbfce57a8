"""The API reference covers the package: every public subpackage and top-level module of
``lightning_mix`` is listed in ``docs/conf.py``'s ``API_PACKAGES`` and has its page ``docs/api/<name>.md``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def api_packages() -> dict[str, bool]:
    tree = ast.parse((ROOT / "docs" / "conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "API_PACKAGES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("docs/conf.py defines no API_PACKAGES")


def public_parts() -> set[str]:
    package = ROOT / "lightning_mix"
    subpackages = {p.parent.name for p in package.glob("*/__init__.py")}
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    return {name for name in subpackages | modules if not name.startswith("_")}


def test_every_public_part_of_the_package_has_an_api_page():
    listed = api_packages()
    missing = public_parts() - set(listed)
    assert not missing, f"add {sorted(missing)} to API_PACKAGES in docs/conf.py and write docs/api/<name>.md"
    for name in listed:
        assert (ROOT / "docs" / "api" / f"{name}.md").exists(), f"docs/api/{name}.md is missing"


def test_required_packages_exist():
    """Only packages that arrive from other branches may be marked optional (their page is left out
    while they are absent); a required one that is missing is an error here, not a silent gap."""
    present = public_parts()
    for name, optional in api_packages().items():
        assert optional or name in present, (
            f"API_PACKAGES lists {name!r} as required but lightning_mix.{name} is absent"
        )
