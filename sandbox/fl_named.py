"""A trained model with its inputs named, in units a person can apply to a table's raw columns.

Training scales every numeric feature to [0, 1] by its public bounds and one-hot codes every categorical one, so
the raw parameters mean nothing without the plan. For a logistic model the numeric weights are converted to raw
column units by the engine's own conversion (``fl_server.as_linear``, the one ``RegisterTrainedModel`` uses); a
one-hot input is already in raw units (1 where the column has that category), so its weight is kept as trained.
An MLP is not linear in its columns: its inputs are named and its weights stay in the plan's scaled units, with
each feature's public scaling stated so that a person can scale a row the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

import fl_server
from sandbox.compute_io import FeatureScaling, NamedModel
from sandbox.errors import engine_errors

LOGISTIC_NOTE = ("logit = intercept + the sum of coefficient * input, where a numeric input is the raw column value "
                 "clipped to its [lower, upper] and a column=category input is 1 where the column has that category "
                 "(else 0); probability = 1 / (1 + exp(-logit))")
MLP_NOTE = ("an mlp is not linear in its columns: its weights are in the plan's scaled units. Build each row's "
            "inputs in the order given: a numeric column as (clip(value, lower, upper) - lower) / (upper - lower), "
            "a column=category input as 1 where the column has that category (else 0); then logit = "
            "tanh(inputs @ W1 + b1) @ w2 + b2 with the weights in order [W1, b1, w2, b2]")


def input_names(plan: fl_server.TrainingPlan) -> tuple[str, ...]:
    """The model's inputs in order: a numeric feature's column, or ``column=category`` for each one-hot input."""
    return tuple(name for f in plan.features
                 for name in ([f"{f.column}={c}" for c in f.categories] if f.categories else [f.column]))


def _raw_coefficients(plan: fl_server.TrainingPlan, params: Sequence[np.ndarray]
                      ) -> tuple[tuple[tuple[str, float], ...], float]:
    """A logistic model's coefficient per input in raw units, and its intercept."""
    weights = np.asarray(params[0], dtype=np.float64)
    numeric = [f for f in plan.features if not f.categories]
    at = np.cumsum([0, *(f.width for f in plan.features)])
    numeric_at = [int(at[i]) for i, f in enumerate(plan.features) if not f.categories]
    with engine_errors():  # the engine converts the numeric inputs; one-hot inputs need no conversion
        pairs, intercept = fl_server.as_linear(dataclasses.replace(plan, features=tuple(numeric)),
                                               [weights[numeric_at], np.asarray(params[1], dtype=np.float64)])
    raw = dict(pairs)
    coefficients: list[tuple[str, float]] = []
    for i, f in enumerate(plan.features):
        if f.categories:
            block = weights[int(at[i]):int(at[i + 1])].tolist()
            coefficients += [(f"{f.column}={c}", float(w)) for c, w in zip(f.categories, block, strict=True)]
        else:
            coefficients.append((f.column, raw[f.column]))
    return tuple(coefficients), intercept


def named_model(plan: fl_server.TrainingPlan, params: Sequence[np.ndarray]) -> NamedModel:
    """The model of ``plan`` with parameters ``params``, named (raw units for a logistic model)."""
    linear = plan.model == "logistic"
    coefficients, intercept = _raw_coefficients(plan, params) if linear else ((), 0.0)
    return NamedModel(
        model=plan.model, inputs=input_names(plan), coefficients=coefficients, intercept=intercept, raw_units=linear,
        scaling=tuple(FeatureScaling(f.column, float(f.lower), float(f.upper), f.categories) for f in plan.features),
        label=plan.label.column, label_threshold=float(plan.label.threshold),
        note=LOGISTIC_NOTE if linear else MLP_NOTE)
