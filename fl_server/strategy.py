"""The Flower Message-API strategy a plan trains with: FedAvg or FedProx, wrapped for DP when the plan adds noise.

Without DP, updates are averaged weighted by each holder's training rows
(``num-examples``), as centralised training would weight them. With DP every
holder weighs the same (see ``privacy``). Metrics are always averaged by the
rows they were computed on, so a federated accuracy is the pooled accuracy
over the holders' held-out rows.
"""

from __future__ import annotations

import math

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from fl_server.client import NUM_EXAMPLES, UNIT_WEIGHT
from fl_server.plan import TrainingPlan
from fl_server.privacy import OpenDpFixedClipping

#: Metrics each reply carries besides the weights.
TRAIN_METRICS = ("train-loss",)
EVAL_METRICS = ("loss", "accuracy")


def aggregate_metrics(records: list[RecordDict], _weighted_by_key: str) -> MetricRecord:
    """Mean of each metric weighted by the rows it was computed on; the weights themselves are dropped."""
    sums: dict[str, float] = {}
    total = 0.0
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        n = float(metrics[NUM_EXAMPLES])  # type: ignore[arg-type]
        total += n
        for key, value in metrics.items():
            if key not in (NUM_EXAMPLES, UNIT_WEIGHT) and isinstance(value, (int, float)):
                sums[key] = sums.get(key, 0.0) + n * float(value)
    if total <= 0.0:
        return MetricRecord()
    return MetricRecord({k: v / total for k, v in sums.items() if math.isfinite(v)})


def build_strategy(plan: TrainingPlan) -> tuple[Strategy, FedAvg]:
    """The strategy to drive, and the FedAvg/FedProx inside it (whose sampling the driver sets each round)."""
    common = dict(weighted_by_key=UNIT_WEIGHT if plan.dp else NUM_EXAMPLES,
                  train_metrics_aggr_fn=aggregate_metrics, evaluate_metrics_aggr_fn=aggregate_metrics)
    inner: FedAvg = (FedProx(proximal_mu=plan.proximal_mu, **common)  # type: ignore[arg-type]
                     if plan.strategy == "fedprox" else FedAvg(**common))  # type: ignore[arg-type]
    return (OpenDpFixedClipping(inner, plan) if plan.dp else inner), inner


def set_sampling(inner: FedAvg, nodes: int, *, train: int | None = None, evaluate: int | None = None) -> None:
    """Make the next configure_train ask exactly ``train`` of the ``nodes`` it sees (configure_evaluate: ``evaluate``).

    Flower samples max(int(nodes * fraction), min_nodes) and waits, forever, until that many are connected;
    setting fraction and minimum from the driver's snapshot of the nodes keeps it from waiting.
    """
    inner.min_available_nodes = 0
    if train is not None:
        inner.fraction_train, inner.min_train_nodes = train / nodes, train
    if evaluate is not None:
        inner.fraction_evaluate, inner.min_evaluate_nodes = evaluate / nodes, evaluate
