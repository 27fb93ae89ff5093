"""The package's one error type."""

from __future__ import annotations


class SynthError(ValueError):
    """A bad argument to the synthesiser: unknown machine type or fault, a bad ID, count, seed or level.

    A ValueError, so callers that caught ValueError before the families were split out still do.
    """
