"""Flower's server-side fixed-clipping DP wrapper, with clipping, noise and dropouts done as ``accounting`` prices them.

The class keeps ``DifferentialPrivacyServerSideFixedClipping``'s configuration
side (it remembers the global model it sends) and replaces its aggregation:

* Noise: Flower draws ``np.random.normal`` with standard deviation
  ``noise_multiplier * C / num_sampled_clients`` on the mean. Here the mean of
  the clipped updates is turned back into their sum, ``round_measurement``
  (opendp's Gaussian, scale ``noise_multiplier * C``) releases that sum, and it
  is divided again: the same distribution, from the measurement that is priced.
* Dropouts: Flower either skips the round when a reply is an error, or (without
  its accountant) averages fewer updates while still dividing the noise by the
  planned count, which under-noises the sum. Here the noise is calibrated to the
  sum of the updates that arrived: a round with a dropout trains on the others
  at the same cost.
* Clipping: Flower's divides by the update's norm and fails on an update of
  zero (a holder that did not move); here that update is kept as it is.

The inner strategy must weight every update equally (``UNIT_WEIGHT``): a sum of
clipped updates has sensitivity C only if no holder counts more than once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from fl_server.accounting import round_measurement
from fl_server.client import UNIT_WEIGHT, clip_update
from fl_server.plan import TrainingPlan


class OpenDpFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Clip each update to ``plan.clipping_norm``, sum the clipped updates, add opendp's noise, average."""

    def __init__(self, strategy: FedAvg, plan: TrainingPlan) -> None:
        if strategy.weighted_by_key != UNIT_WEIGHT:
            raise ValueError(f"a DP strategy averages with equal weights ('{UNIT_WEIGHT}')")
        super().__init__(strategy, plan.noise_multiplier, plan.clipping_norm, num_sampled_clients=1)
        self._measurement = round_measurement(plan)
        self.releases = 0

    def __repr__(self) -> str:
        return "Server-side fixed clipping, opendp Gaussian noise on the sum of clipped updates"

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        usable = [r for r in replies if not r.has_error()]
        if not usable:
            return None, None
        start = self.current_arrays.to_numpy_ndarrays()
        for reply in usable:
            for name, record in list(reply.content.array_records.items()):
                clipped = clip_update(record.to_numpy_ndarrays(), start, self.clipping_norm)
                reply.content[name] = ArrayRecord({k: Array(np.asarray(v)) for k, v in
                                                   zip(record.keys(), clipped, strict=True)})
        self.num_sampled_clients = len(usable)
        arrays, metrics = self.strategy.aggregate_train(server_round, usable)
        if arrays is None:
            return None, metrics
        return self._add_noise_to_aggregated_arrays(arrays), metrics

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        keys = list(aggregated_arrays.keys())
        mean = aggregated_arrays.to_numpy_ndarrays()
        start = self.current_arrays.to_numpy_ndarrays()
        updates = [m - s for m, s in zip(mean, start, strict=True)]
        noisy = noisy_mean_update(self._measurement, updates, self.num_sampled_clients)
        self.releases += 1
        return ArrayRecord({key: Array(np.asarray(s + u, dtype=m.dtype))
                            for key, m, s, u in zip(keys, mean, start, noisy, strict=True)})


def noisy_mean_update(measurement: Callable[[list[float]], object], mean: Sequence[np.ndarray], count: int) -> list[np.ndarray]:
    """The mean of ``count`` clipped updates released as the accountant prices it: the sum, ``mean * count``,
    through the round's opendp measurement, divided by ``count`` again."""
    total = np.concatenate([(np.asarray(m, dtype=np.float64) * count).ravel() for m in mean])
    noisy = np.asarray(measurement(total.tolist()), dtype=np.float64)  # round_measurement(plan)
    out, offset = [], 0
    for m in mean:
        out.append(noisy[offset:offset + np.size(m)].reshape(np.shape(m)) / count)
        offset += np.size(m)
    return out
