"""The benchmarks' protocols, the toy world and the demo.

Rooms: demo, protocols, toyworld. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["DEMO_OUTPUTS", "run_demo"], "demo"),
    **dict.fromkeys(["BENCHMARKS", "SCENARIOS", "SHIFT_SCENARIOS"], "protocols"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .demo import DEMO_OUTPUTS, run_demo
    from .protocols import BENCHMARKS, SCENARIOS, SHIFT_SCENARIOS
