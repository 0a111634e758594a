"""The console's SDK clients: one per kind of principal, all signing with the one key through one channel.

The console is an SDK client like any other: it holds the key in this process and every page's data comes from
signed calls, so the server trusts it exactly as it trusts ``sandbox-client``. A principal may hold several
roles, and each role's calls live on its own client class, so the console builds each class once over the
given client's channel and key (the given client owns the channel: only it is ever closed).
"""

from __future__ import annotations

from typing import TypeVar

from clients.client import AdminClient, AuditorClient, ResearcherClient, SandboxClient, StewardClient

__all__ = ["RoleClients"]

C = TypeVar("C", bound=SandboxClient)


def _over(client: SandboxClient, cls: type[C]) -> C:
    """``cls`` over ``client``'s channel and key (same principal, same deadline), or ``client`` if it is one."""
    if type(client) is cls:
        return client
    t = client.transport
    return cls("", key=t.key, channel=t.channel, principal_id=t.principal_id, timeout=t.timeout)


class RoleClients:
    """The given client and the same key as an administrator's, auditor's, researcher's and steward's client."""

    def __init__(self, client: SandboxClient) -> None:
        self.base = client
        self.admin = _over(client, AdminClient)
        self.auditor = _over(client, AuditorClient)
        self.researcher = _over(client, ResearcherClient)
        self.steward = _over(client, StewardClient)

    @property
    def principal_id(self) -> str:
        return self.base.principal_id
