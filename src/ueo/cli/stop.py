"""Stop requests: SIGINT/SIGTERM ask a run to stop at its next step and save a checkpoint."""

from __future__ import annotations

import contextlib
import signal

from ..errors import TrainingInterrupted
from .common import warn


class StopRequest:
    """SIGINT/SIGTERM become a request: the run stops at the next step (or batch of an evaluation, or image
    of the check), saves a checkpoint and says how to resume. A second signal quits at once."""

    def __init__(self):
        self.signum = None

    def __call__(self) -> bool:
        return self.signum is not None

    def _heard(self, signum, frame):
        self.signum = signum
        warn(
            "\nueo: heard the stop request; stopping at the next step and saving a checkpoint "
            "(press ctrl-C again to quit at once)."
        )
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
            raise TrainingInterrupted(f"stopped while {phase}")


def _quit_now(signum, frame):
    raise KeyboardInterrupt
