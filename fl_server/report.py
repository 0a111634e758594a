"""What a run reports: one RoundReport per round as it happens, one TrainingResult at the end. Aggregates only.

Nothing here holds one holder's update or metrics: participation is named
(which holders contributed, which failed), values are federated aggregates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RoundReport:
    round: int
    rounds: int
    #: Whether this round changed the model (at least ``min_holders`` usable updates).
    aggregated: bool
    #: Holders whose update is in this round's aggregate.
    participants: tuple[str, ...]
    #: Holders that were asked (or expected) and gave no usable reply: error, timeout, malformed, not connected.
    failed: tuple[str, ...]
    #: Federated evaluation of the model after this round, weighted by held-out rows (None if not released).
    loss: float | None
    accuracy: float | None
    #: Mean local training loss, weighted by training rows (None if not released).
    train_loss: float | None
    #: Epsilon spent by the rounds so far, at ``delta`` (None without DP).
    epsilon: float | None
    delta: float | None
    seconds: float
    #: Why the round changed nothing, or what went wrong in it, in words (empty if nothing did).
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["participants"], d["failed"] = list(self.participants), list(self.failed)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundReport:
        return cls(**{**d, "participants": tuple(d["participants"]), "failed": tuple(d["failed"])})


@dataclass(frozen=True, eq=False)
class TrainingResult:
    #: The final global model, in ``fl_server.model``'s parameter order.
    params: tuple[np.ndarray, ...]
    history: tuple[RoundReport, ...]
    #: Holders that failed in at least one round.
    dropped: tuple[str, ...]
    epsilon: float | None
    delta: float | None
    plan_digest: str

    @property
    def final(self) -> RoundReport:
        return self.history[-1]
