"""Keeps gRPC's C-core log off the terminal of the ``sandbox-client`` command.

The C-core reads ``GRPC_VERBOSITY`` and ``GRPC_TRACE`` once, when grpc is first imported, and importing any
module of this package imports grpc; so ``clients/__init__`` imports this module before anything else. It
acts only in the command's own process (the console script, or ``python -m clients.cli``) and never
overrides what the user set: a program that imports the SDK keeps its gRPC logging as it configured it.
Without it a wrong ``--ca`` printed a C-core line (``... ssl_transport_security.cc ... Handshake failed``)
above the command's own one-line error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping, Sequence

__all__ = ["is_command", "quiet_grpc"]

COMMAND = "sandbox-client"
MODULE = "clients.cli"


def is_command(argv: Sequence[str], orig_argv: Sequence[str]) -> bool:
    """Whether this process is the command: its script, or ``python -m clients.cli``."""
    script = os.path.basename(argv[0]) if argv else ""
    if script == COMMAND or script.startswith(COMMAND + "."):  # sandbox-client, sandbox-client.exe
        return True
    args = list(orig_argv)
    return "-m" in args[:-1] and args[args.index("-m") + 1] == MODULE


def quiet_grpc(environ: MutableMapping[str, str]) -> None:
    """No C-core log lines unless the user asked for them."""
    environ.setdefault("GRPC_VERBOSITY", "NONE")
    environ.setdefault("GRPC_TRACE", "")


if is_command(sys.argv, getattr(sys, "orig_argv", ())):
    quiet_grpc(os.environ)
