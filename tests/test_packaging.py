"""Every package folder under mdagent/ ships in the wheel and the zipapp.

pyproject.toml lists the packages by hand; a new folder (a provider, its fake
venue) that is not listed would work from a checkout and be missing from
``dist/mdagent.pyz``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "mdagent").rglob("__init__.py")
    }
    assert found - listed == set()
