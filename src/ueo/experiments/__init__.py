"""The benchmarks' protocols, the toy world and the demo.

Rooms: demo, protocols, toyworld. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["DEMO_OUTPUTS", "run_demo"], "demo"),
    **dict.fromkeys(["BENCHMARKS", "SCENARIOS", "SHIFT_SCENARIOS"], "protocols"),
}
__all__ = sorted(_WHERE)

__getattr__ = loader(__name__, _WHERE)


if TYPE_CHECKING:
    from .demo import DEMO_OUTPUTS, run_demo
    from .protocols import BENCHMARKS, SCENARIOS, SHIFT_SCENARIOS
