"""Stop requests: SIGINT/SIGTERM ask a run to stop at its next step and save a checkpoint."""

from __future__ import annotations

import contextlib
import signal

from ..errors import Interrupted
from .messages import warn


class StopRequest:
    """SIGINT/SIGTERM become a request: the run stops at the next step (or batch of an evaluation, or image
    of the check), saves a checkpoint and says how to resume. A second signal quits at once."""

    def __init__(self, checkpoints: bool = True):
        self.signum, self.checkpoints = None, checkpoints

    def __call__(self) -> bool:
        return self.signum is not None

    def _heard(self, signum, frame):
        self.signum = signum
        saving = " and saving a checkpoint" if self.checkpoints else ""
        warn(f"\nueo: heard the stop request; stopping at the next step{saving} (press ctrl-C again to quit at once).")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _quit_now)

    @contextlib.contextmanager
    def installed(self):
        previous = {sig: signal.signal(sig, self._heard) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check(self, phase: str) -> None:
        if self():
            raise Interrupted(f"stopped while {phase}")


@contextlib.contextmanager
def interruptible(out):
    """A command without checkpoints (eval, predict, export) that SIGINT/SIGTERM stop between steps: yields
    the StopRequest to poll; a stop says that ``out`` is incomplete and how to redo it."""
    stop = StopRequest(checkpoints=False)
    with stop.installed():
        try:
            yield stop
        except Interrupted as error:
            error.args = (f"{error}; {out} is incomplete: run the same command again with --overwrite",)
            error.signum = stop.signum
            raise


def _quit_now(signum, frame):
    raise KeyboardInterrupt
