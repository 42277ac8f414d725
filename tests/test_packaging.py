"""The wheel carries every package, including the top-level migrations/ (as syncd.migrations)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_for_the_wheel() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "syncd").rglob("__init__.py")
    }
    found |= {"syncd.migrations", "syncd.migrations.versions"}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
