"""Errors of a training run."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot start or continue (bad resume, config mismatch, ...)."""


class DivergedError(TrainingError):
    """A loss became NaN or Inf; the run stopped before writing another checkpoint."""
