"""User-facing errors.

Every error raised at a user boundary (CLI arguments, files, feeds, checkpoints) is an
``EdgevisError``: the CLI prints its message on one line and exits non-zero, without a
traceback. Messages name what was received, what was expected and the fix.
"""

from __future__ import annotations


class EdgevisError(Exception):
    """An error caused by user input or environment, reported without a traceback."""


class SpecError(EdgevisError, ValueError):
    """A feed or file does not match a stage's IOSpec."""


class SourceError(EdgevisError):
    """A video source cannot be opened or read."""


class MissingDependencyError(EdgevisError, ImportError):
    """An optional dependency (tensorrt, a GPU, qemu, ...) is not available."""
