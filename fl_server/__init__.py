"""Federated training on Flower: plan, numpy models, DP accounting, and a runner with two backends.

Pure library: it knows nothing of grants, budgets or audit, and imports nothing
from the sandbox, the SDK or the other engines. Every noise comes from an opendp
measurement and every privacy cost from a measurement's own map.
"""

from fl_server.accounting import Unit, epsilon_after_rounds, plan_cost, round_measurement
from fl_server.data import Partition, load_partition, partition_from_csv, prepare_partition, save_partition
from fl_server.errors import FlServerError, PlanError, TrainingCancelled, TrainingError
from fl_server.model import as_linear, auc, evaluate, init_params, predict_proba
from fl_server.plan import DEFAULT_LIMITS, Feature, Label, Limits, TrainingPlan
from fl_server.report import RoundReport, TrainingResult
from fl_server.rounds import Timing
from fl_server.runner import Backend, DeploymentBackend, InProcessBackend
from fl_server.secagg import MIN_HOLDERS as SECURE_MIN_HOLDERS
from fl_server.secagg import Protocol as SecureProtocol
from fl_server.secagg import parameters_for as secure_protocol

__all__ = [
    "DEFAULT_LIMITS",
    "Backend",
    "DeploymentBackend",
    "Feature",
    "FlServerError",
    "InProcessBackend",
    "Label",
    "Limits",
    "Partition",
    "PlanError",
    "RoundReport",
    "SECURE_MIN_HOLDERS",
    "SecureProtocol",
    "Timing",
    "TrainingCancelled",
    "TrainingError",
    "TrainingPlan",
    "TrainingResult",
    "Unit",
    "as_linear",
    "auc",
    "epsilon_after_rounds",
    "evaluate",
    "init_params",
    "load_partition",
    "partition_from_csv",
    "plan_cost",
    "predict_proba",
    "prepare_partition",
    "round_measurement",
    "save_partition",
    "secure_protocol",
]
