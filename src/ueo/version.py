"""The version of ueo, in a leaf that every room may import."""

__version__ = "0.1.0"
