"""The errors a user can meet. Each message says what is wrong, where, and what to do.

Everything ueo raises for a user's mistake or a missing resource derives from :class:`UeoError`; the
command line prints those as one message (exit 2; 3 for a diverged run). Any other exception is a bug
in ueo, and the command line reports it as one. Messages name files, lines and settings in the
library's terms (``batch_size``, ``pretrained=``); the command line adds its flags.
"""

from __future__ import annotations


class UeoError(Exception):
    """Base of the errors a user can fix."""


class DataError(UeoError, ValueError):
    """Bad input data: missing or unreadable files, malformed lists, unusable class names."""


class ConfigError(UeoError, ValueError):
    """A setting out of range or of the wrong type, or settings that do not go together."""


class IncompatibleError(UeoError, ValueError):
    """An adapted state or a checkpoint that does not belong to this model, these classes or these settings,
    or whose contents are damaged."""


class ModelUnavailableError(UeoError, RuntimeError):
    """The model cannot be built here: a Python package it needs is missing, or a file it needs cannot
    be downloaded (no network)."""


class WeightsUnavailableError(ModelUnavailableError):
    """Pretrained weights could not be obtained or read (typically: no network). The message says how to
    supply them offline; ``cli_advice``, when set, says the same with command-line flags."""

    cli_advice: str | None = None


class DivergedError(UeoError, FloatingPointError):
    """The loss became NaN or infinite. ``last_good`` is the adapted state at the start of the failing epoch."""

    def __init__(self, message: str, last_good=None):
        super().__init__(message)
        self.last_good = last_good


class Interrupted(UeoError):
    """Work stopped on request (SIGINT/SIGTERM in the command line): a fit after saving a checkpoint, or the
    decoding, scoring or naming of images. ``signum``: the signal that asked for it, when one did."""

    signum: int | None = None


TrainingInterrupted = Interrupted  # (its name before it was raised where nothing trains too)
