"""Exceptions for user mistakes; the CLI prints them as one line, never a traceback."""

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, missing optional package)."""
