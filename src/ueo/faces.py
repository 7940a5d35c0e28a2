"""How a package's face (``ueo``'s wings) loads its names: each from the room that defines it, when first
used, so that importing a face costs nothing until a name is needed."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def loader(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``'s face: ``where`` maps each name to its room; a name, once
    loaded, is kept on the face."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
