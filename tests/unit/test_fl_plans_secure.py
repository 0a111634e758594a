"""The sandbox's secure-aggregation setting (fl_plans.secure_terms): the default by the dataset's data holders,
refused with fewer than three a round, and reviewed with the settings the SDK would start a job with."""

from __future__ import annotations

import dataclasses

import pytest

from clients.client import _settings
from sandbox import fl_plans
from sandbox.domain import DatasetInfo, TrainingSettings
from sandbox.errors import ErrorCode, SandboxError
from tests.unit.test_catalogue import bundled_schema

TEMPLATE = fl_plans.PlanTemplate("rand_hie", "logistic", ("xage", "female", "linc"), "meddol", 35.0)


def info_with_sites(n: int) -> DatasetInfo:
    """rand_hie with its partition column narrowed to ``n`` sites."""
    schema = bundled_schema("rand_hie")
    columns = tuple(dataclasses.replace(c, categories=tuple(str(i) for i in range(1, n + 1))) if c.name == "site"
                    else c for c in schema.columns)
    return DatasetInfo(dataclasses.replace(schema, columns=columns), "v1", 1000, 0, 1000)


def test_secure_aggregation_is_on_with_three_holders_off_with_two_and_refused_when_asked_for_with_two() -> None:
    run = fl_plans.SDK_DEFAULTS
    assert fl_plans.secure_terms(TEMPLATE, run, info_with_sites(3)) == fl_plans.SecureAggregationTerms(3, 3, 3, 2)
    assert fl_plans.build_plan(TEMPLATE, run, info_with_sites(3)).secure_aggregation
    two = info_with_sites(2)
    assert fl_plans.secure_terms(TEMPLATE, run, two) == fl_plans.SecureAggregationTerms(2, 2, 0, 0)
    assert not fl_plans.build_plan(TEMPLATE, run, two).secure_aggregation
    with pytest.raises(SandboxError) as refused:
        fl_plans.build_plan(TEMPLATE, dataclasses.replace(run, secure_aggregation="on"), two)
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT and "at least 3 data holders" in str(refused.value)
    off = fl_plans.build_plan(TEMPLATE, dataclasses.replace(run, secure_aggregation="off"), info_with_sites(6))
    assert not off.secure_aggregation and off.min_holders == 2


def test_an_application_without_settings_is_reviewed_with_the_sdks_defaults() -> None:
    pb = _settings()  # what start_training sends for settings left out
    sdk = TrainingSettings(rounds=pb.rounds, local_epochs=pb.local_epochs, learning_rate=pb.learning_rate,
                           fraction_per_round=pb.fraction_per_round, strategy=pb.strategy,
                           proximal_mu=pb.proximal_mu, clipping_norm=pb.clipping_norm,
                           noise_multiplier=pb.noise_multiplier, delta=pb.delta,
                           secure_aggregation=pb.secure_aggregation)
    assert fl_plans.SDK_DEFAULTS == sdk
