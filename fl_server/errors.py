"""The errors fl_server raises.

    FlServerError          base: anything fl_server reports on purpose
    ├── PlanError          the training plan is malformed or outside the limits (INVALID_ARGUMENT)
    ├── TrainingError      the run produced no model, or the runtime could not run it (INTERNAL / UNAVAILABLE)
    └── TrainingCancelled  the caller asked to stop between rounds (CANCELLED)

Messages are fixed phrases for the researcher: they name plan fields, rounds
and holder ids, never a data value, a path or a holder's exception text (that
goes to the log of the process where it happened).
"""

from __future__ import annotations


class FlServerError(Exception):
    """Base of every error fl_server raises on purpose; ``message`` is safe to show the researcher."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PlanError(FlServerError):
    """The plan is malformed or outside fl_server's limits; the same plan will always fail."""


class TrainingError(FlServerError):
    """Training ran (or tried to) but produced no model."""


class TrainingCancelled(FlServerError):
    """``should_stop()`` returned True; the run stopped between rounds and releases no model."""

    def __init__(self, message: str, *, rounds_completed: int, epsilon_spent: float = 0.0) -> None:
        super().__init__(message)
        self.rounds_completed = rounds_completed
        self.epsilon_spent = epsilon_spent
