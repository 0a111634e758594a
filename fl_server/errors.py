"""The errors fl_server raises.

    FlEngineError          base: anything this engine reports on purpose
    ├── PlanError          the training plan is malformed or outside the limits (INVALID_ARGUMENT)
    ├── TrainingError      the run produced no model, or the runtime could not run it (INTERNAL / UNAVAILABLE)
    └── TrainingCancelled  the caller asked to stop between rounds (CANCELLED)

Messages are fixed phrases for the researcher: they name plan fields, rounds
and holder ids, never a data value, a path or a holder's exception text (that
goes to the log of the process where it happened).
"""

from __future__ import annotations


class FlEngineError(Exception):
    """Base of every error fl_server raises on purpose; ``message`` is safe to show the researcher."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PlanError(FlEngineError):
    """The plan is malformed or outside the engine's limits; the same plan will always fail."""


class TrainingError(FlEngineError):
    """Training ran (or tried to) but produced no model."""


class TrainingCancelled(FlEngineError):
    """``should_stop()`` returned True; the run stopped between rounds and releases no model."""

    def __init__(self, message: str, *, rounds_completed: int, epsilon_spent: float = 0.0) -> None:
        super().__init__(message)
        self.rounds_completed = rounds_completed
        self.epsilon_spent = epsilon_spent
