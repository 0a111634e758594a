"""The ClientApp a SuperNode runs: it reads only the partition file its own node config names."""

from __future__ import annotations

from flwr.app import Context

from fl_server.client import make_client_app
from fl_server.data import Partition, load_partition

#: node_config key of the holder's partition file (written by the sandbox, one per holder).
DATA_PATH = "data-path"


def _load(context: Context) -> Partition:
    return load_partition(str(context.node_config[DATA_PATH]))


app = make_client_app(_load)
