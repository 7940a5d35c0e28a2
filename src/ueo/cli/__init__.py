"""The command line: ``ueo COMMAND ...`` (see ``ueo --help``)."""

from .main import main

__all__ = ["main"]
