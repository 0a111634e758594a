"""The training plan: what is trained on what, how, and at what privacy cost; frozen and checked once.

A plan names the model, the feature columns with their public scaling (schema
bounds, or declared categories for one-hot codes), the label rule (a numeric
column binarised at a public threshold), the federated schedule (rounds, local
epochs, learning rate, holders per round, FedAvg or FedProx) and the DP
settings (clipping norm and noise multiplier; noise 0 means no DP). Nothing in
a plan comes from the data: that is what lets its cost be priced before it runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fl_server.errors import PlanError

MODELS = ("logistic", "mlp")
STRATEGIES = ("fedavg", "fedprox")


@dataclass(frozen=True)
class Limits:
    """The largest plan this engine accepts; each bound keeps a round's time and memory small."""

    max_rounds: int = 200
    max_local_epochs: int = 50
    max_inputs: int = 64  # model input width, after one-hot codes
    max_hidden_units: int = 256
    max_batch_size: int = 4096
    max_learning_rate: float = 10.0
    max_proximal_mu: float = 100.0
    max_noise_multiplier: float = 1000.0
    max_clipping_norm: float = 1000.0
    max_delta: float = 1e-2
    max_eval_fraction: float = 0.5


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Feature:
    """One input column. Numeric: scaled to [0, 1] by its public bounds (values outside are clamped).
    Categorical (``categories`` given): one-hot over the declared codes.

    ``impute`` is a public value used for a missing entry (a numeric NaN, a categorical code -1);
    None drops the row instead.
    """

    column: str
    lower: float = 0.0
    upper: float = 1.0
    categories: tuple[str, ...] = ()
    impute: float | None = None

    @property
    def width(self) -> int:
        return len(self.categories) if self.categories else 1


@dataclass(frozen=True)
class Label:
    """The label: 1 where ``column`` is above the public ``threshold``, else 0; rows without it are dropped."""

    column: str
    threshold: float


@dataclass(frozen=True)
class TrainingPlan:
    features: tuple[Feature, ...]
    label: Label
    model: str = "logistic"
    hidden_units: int = 16  # mlp only
    rounds: int = 10
    local_epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    #: int: that many holders per round; float: that fraction of the holders (rounded up).
    clients_per_round: int | float = 1.0
    strategy: str = "fedavg"
    proximal_mu: float = 0.0  # fedprox only
    clipping_norm: float = 1.0
    noise_multiplier: float = 0.0  # 0: no DP
    delta: float = 1e-6  # the delta the epsilon is reported at (DP only)
    #: Fewer usable updates than this and a round changes nothing: an aggregate of one is one holder's update.
    min_holders: int = 2
    eval_fraction: float = 0.2  # each holder's local held-out share
    #: Under DP the per-round federated metrics are exact aggregates the epsilon does not cover: opt in to get them.
    release_metrics_under_dp: bool = False
    #: Flower's SecAgg+: the server receives only masked updates and their sum (``fl_server.secagg``).
    secure_aggregation: bool = False
    seed: int = 0

    @property
    def dp(self) -> bool:
        return self.noise_multiplier > 0.0

    @property
    def n_inputs(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def releases_metrics(self) -> bool:
        return self.eval_fraction > 0.0 and (not self.dp or self.release_metrics_under_dp)

    def sample_size(self, n_holders: int) -> int:
        """How many holders a round asks, out of ``n_holders`` connected."""
        if isinstance(self.clients_per_round, int):
            return self.clients_per_round
        return max(self.min_holders, math.ceil(self.clients_per_round * n_holders - 1e-9))

    def validate(self, limits: Limits = DEFAULT_LIMITS) -> TrainingPlan:
        """Raise PlanError on the first field outside the limits; return the plan for chaining."""
        _check_plan(self, limits)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingPlan:
        """The inverse of ``to_dict``; raises PlanError on a malformed document (then call ``validate``)."""
        try:
            doc = dict(d)
            features = tuple(Feature(**{**f, "categories": tuple(f.get("categories", ()))})
                             for f in doc.pop("features"))
            label = Label(**doc.pop("label"))
            return cls(features=features, label=label, **doc)
        except (TypeError, KeyError, AttributeError) as exc:
            raise PlanError("malformed plan document") from exc

    def canonical(self) -> bytes:
        try:
            return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        except ValueError as exc:
            raise PlanError("a plan number is not finite") from exc

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON: what a grant can pin."""
        return hashlib.sha256(self.canonical()).hexdigest()


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_plan(p: TrainingPlan, lim: Limits) -> None:  # noqa: C901 - one flat list of rules reads best
    def need(ok: bool, why: str) -> None:
        if not ok:
            raise PlanError(why)

    need(p.model in MODELS, f"model is one of {', '.join(MODELS)}")
    need(p.strategy in STRATEGIES, f"strategy is one of {', '.join(STRATEGIES)}")
    need(isinstance(p.features, tuple) and len(p.features) >= 1, "name at least one feature")
    names = [f.column for f in p.features]
    need(all(isinstance(n, str) and n for n in names), "every feature names a column")
    need(len(set(names)) == len(names), "features are distinct")
    for f in p.features:
        need(isinstance(f.categories, tuple) and all(isinstance(c, str) for c in f.categories),
             f"feature '{f.column[:64]}': categories are a tuple of strings")
        if f.categories:
            need(len(set(f.categories)) == len(f.categories) >= 1, f"feature '{f.column[:64]}': distinct categories")
        else:
            need(_finite(f.lower) and _finite(f.upper) and f.lower < f.upper,
                 f"feature '{f.column[:64]}': finite public bounds with lower < upper")
        if f.impute is not None:
            need(_finite(f.impute), f"feature '{f.column[:64]}': a finite imputation value")
            if f.categories:
                need(_int(f.impute) and 0 <= f.impute < len(f.categories),
                     f"feature '{f.column[:64]}': impute a category code")
    need(1 <= p.n_inputs <= lim.max_inputs, f"the model has 1 to {lim.max_inputs} inputs after one-hot codes")
    need(isinstance(p.label, Label) and isinstance(p.label.column, str) and bool(p.label.column), "name a label column")
    need(p.label.column not in names, "the label cannot be a feature")
    need(_finite(p.label.threshold), "the label threshold is finite")
    if p.model == "mlp":
        need(_int(p.hidden_units) and 1 <= p.hidden_units <= lim.max_hidden_units,
             f"an mlp has 1 to {lim.max_hidden_units} hidden units")
    need(_int(p.rounds) and 1 <= p.rounds <= lim.max_rounds, f"rounds is 1 to {lim.max_rounds}")
    need(_int(p.local_epochs) and 1 <= p.local_epochs <= lim.max_local_epochs,
         f"local_epochs is 1 to {lim.max_local_epochs}")
    need(_finite(p.learning_rate) and 0.0 < p.learning_rate <= lim.max_learning_rate,
         f"learning_rate is finite, above 0 and at most {lim.max_learning_rate:g}")
    need(_int(p.batch_size) and 1 <= p.batch_size <= lim.max_batch_size, f"batch_size is 1 to {lim.max_batch_size}")
    need(_int(p.min_holders) and p.min_holders >= 2, "min_holders is at least 2")
    cpr = p.clients_per_round
    if _int(cpr):
        need(cpr >= p.min_holders, "clients_per_round (a count) is at least min_holders")
    else:
        need(_finite(cpr) and 0.0 < cpr <= 1.0, "clients_per_round is a count, or a fraction in (0, 1]")
    need(_finite(p.proximal_mu) and 0.0 <= p.proximal_mu <= lim.max_proximal_mu,
         f"proximal_mu is 0 to {lim.max_proximal_mu:g}")
    need(p.strategy == "fedprox" or p.proximal_mu == 0.0, "proximal_mu is for strategy fedprox")
    # each step moves params by lr * mu * (params - global): at 1 or more it overshoots, and diverges past 2
    need(p.learning_rate * p.proximal_mu < 1.0, "learning_rate * proximal_mu is below 1")
    need(_finite(p.noise_multiplier) and 0.0 <= p.noise_multiplier <= lim.max_noise_multiplier,
         f"noise_multiplier is 0 (no DP) to {lim.max_noise_multiplier:g}")
    need(_finite(p.clipping_norm) and 0.0 < p.clipping_norm <= lim.max_clipping_norm,
         f"clipping_norm is finite, above 0 and at most {lim.max_clipping_norm:g}")
    need(_finite(p.delta) and 0.0 < p.delta <= lim.max_delta, f"delta is above 0 and at most {lim.max_delta:g}")
    need(_finite(p.eval_fraction) and 0.0 <= p.eval_fraction <= lim.max_eval_fraction,
         f"eval_fraction is 0 to {lim.max_eval_fraction:g}")
    need(isinstance(p.release_metrics_under_dp, bool), "release_metrics_under_dp is true or false")
    need(isinstance(p.secure_aggregation, bool), "secure_aggregation is true or false")
    if p.secure_aggregation:
        need(p.min_holders >= 3 and (not _int(cpr) or cpr >= 3),
             "secure aggregation needs at least 3 holders a round (min_holders, clients_per_round): with 2, each "
             "one's update is the sum minus the other's")
    need(_int(p.seed) and 0 <= p.seed < 2**63, "seed is a non-negative integer")
