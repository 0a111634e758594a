"""The numpy models a plan can train: logistic regression, or one hidden tanh layer then a logistic output.

Parameters are a list of float64 arrays, in this order:
    logistic  [w (d,), b (1,)]
    mlp       [W1 (d, h), b1 (h,), w2 (h,), b2 (1,)]
Local training is plain mini-batch SGD on the mean binary cross-entropy, with
FedProx's proximal term mu/2 * ||params - global||^2 when mu > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from fl_server.errors import PlanError
from fl_server.plan import TrainingPlan

Params = list[np.ndarray]


def param_shapes(plan: TrainingPlan) -> list[tuple[int, ...]]:
    d, h = plan.n_inputs, plan.hidden_units
    if plan.model == "logistic":
        return [(d,), (1,)]
    return [(d, h), (h,), (h,), (1,)]


def init_params(plan: TrainingPlan) -> Params:
    """Starting parameters, a function of the plan (its seed) only: zeros, or Glorot-scaled normals for an mlp."""
    if plan.model == "logistic":
        return [np.zeros(s) for s in param_shapes(plan)]
    rng = np.random.default_rng([plan.seed, 1])
    d, h = plan.n_inputs, plan.hidden_units
    return [rng.normal(0.0, np.sqrt(2.0 / (d + h)), (d, h)), np.zeros(h),
            rng.normal(0.0, np.sqrt(2.0 / (h + 1)), h), np.zeros(1)]


def check_params(plan: TrainingPlan, params: Sequence[np.ndarray]) -> bool:
    """True if ``params`` have the plan's shapes and are all finite."""
    shapes = param_shapes(plan)
    return (len(params) == len(shapes)
            and all(np.shape(p) == s and np.all(np.isfinite(p)) for p, s in zip(params, shapes, strict=True)))


def _logits(plan: TrainingPlan, params: Params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if plan.model == "logistic":
        return x @ params[0] + params[1][0], None
    hidden = np.tanh(x @ params[0] + params[1])
    return hidden @ params[2] + params[3][0], hidden


def _bce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy from logits, stable for large |z|."""
    return np.logaddexp(0.0, z) - y * z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def predict_proba(plan: TrainingPlan, params: Params, x: np.ndarray) -> np.ndarray:
    return _sigmoid(_logits(plan, params, x)[0])


def _gradients(plan: TrainingPlan, params: Params, x: np.ndarray, y: np.ndarray) -> tuple[Params, float]:
    z, hidden = _logits(plan, params, x)
    dz = (_sigmoid(z) - y) / x.shape[0]
    loss = float(_bce(z, y).mean())
    if plan.model == "logistic":
        return [x.T @ dz, np.array([dz.sum()])], loss
    assert hidden is not None
    dhidden = np.outer(dz, params[2]) * (1.0 - hidden**2)
    return [x.T @ dhidden, dhidden.sum(axis=0), hidden.T @ dz, np.array([dz.sum()])], loss


def train_local(plan: TrainingPlan, params: Params, x: np.ndarray, y: np.ndarray, *,
                rng: np.random.Generator) -> tuple[Params, float]:
    """``plan.local_epochs`` epochs of mini-batch SGD from ``params``; returns new params and the mean batch loss."""
    start = [p.copy() for p in params]
    current = [p.copy() for p in params]
    mu, lr, bs = plan.proximal_mu, plan.learning_rate, plan.batch_size
    losses = []
    for _ in range(plan.local_epochs):
        order = rng.permutation(x.shape[0])
        for lo in range(0, order.shape[0], bs):
            batch = order[lo:lo + bs]
            grads, loss = _gradients(plan, current, x[batch], y[batch])
            losses.append(loss)
            for p, g, p0 in zip(current, grads, start, strict=True):
                p -= lr * (g + mu * (p - p0)) if mu > 0.0 else lr * g
    return current, float(np.mean(losses)) if losses else 0.0


@dataclass(frozen=True)
class Evaluation:
    n: int
    loss: float
    accuracy: float


def evaluate(plan: TrainingPlan, params: Params, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Mean cross-entropy and accuracy at threshold 0.5 (both 0 on no rows)."""
    if x.shape[0] == 0:
        return Evaluation(0, 0.0, 0.0)
    z = _logits(plan, params, x)[0]
    return Evaluation(int(x.shape[0]), float(_bce(z, y).mean()), float(((z > 0.0) == (y > 0.5)).mean()))


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    pos, neg = int((y > 0.5).sum()), int((y <= 0.5).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    return float((ranks[y > 0.5].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def as_linear(plan: TrainingPlan, params: Sequence[np.ndarray]) -> tuple[tuple[tuple[str, float], ...], float]:
    """A trained logistic model on raw column values: (column, weight) pairs and a bias such that

        logit = bias + sum(weight * clip(value, lower, upper))

    equals the trained model's logit. Training scaled each input to (clip(value) - lower) / (upper - lower),
    so each weight is divided by its column's span and the bias absorbs the lower bounds. Only a logistic
    model with numeric inputs is linear in its columns (an MLP is not; a one-hot block has no column weight).
    """
    if plan.model != "logistic":
        raise PlanError("only a logistic model is linear in its inputs (an mlp is not)")
    if any(f.categories for f in plan.features):
        raise PlanError("a model with one-hot (categorical) inputs has no weight per column")
    if not check_params(plan, params):
        raise PlanError("the parameters do not fit the plan")
    weights = np.asarray(params[0], dtype=np.float64)
    bias = float(params[1][0])
    pairs = []
    for f, w in zip(plan.features, weights.tolist(), strict=True):
        span = f.upper - f.lower
        pairs.append((f.column, w / span))
        bias -= w * f.lower / span
    return tuple(pairs), bias


def to_array_record(params: Sequence[np.ndarray]) -> ArrayRecord:
    return ArrayRecord([np.asarray(p, dtype=np.float64) for p in params])


def from_array_record(record: ArrayRecord) -> Params:
    return [np.asarray(a, dtype=np.float64) for a in record.to_numpy_ndarrays()]
