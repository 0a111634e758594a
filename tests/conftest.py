"""Shared fixtures: a real TLS sandbox server on a free port, and SDK clients talking to it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clients import AdminClient, ApplicantClient, ResearcherClient, generate_key, public_key_of
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.server import RunningServer, start_server
from tests.support.postgres import PostgresServer, fresh_database, running_postgres_server

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
SCHEMAS = DATA / "schemas"


@dataclass
class Sandbox:
    """A running server and what a test needs to talk to it."""

    data_dir: Path
    running: RunningServer
    admin_key_path: Path
    overrides: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def admin(self, **kw) -> AdminClient:  # type: ignore[no-untyped-def]
        return AdminClient(self.address, key=self.admin_key_path, ca=self.ca, **kw)

    def restart(self) -> None:
        self.running.stop(grace=1)
        cfg = load_config(self.data_dir, flags={"port": self.running.port, **self.overrides}, environ={})
        self.running = start_server(cfg)

    def stop(self) -> None:
        self.running.stop(grace=1)


def start_sandbox(tmp: Path, **overrides) -> Sandbox:  # type: ignore[no-untyped-def]
    result = init_data_dir(tmp / "sbx")
    cfg = load_config(result.config.data_dir, flags={"port": 0, **overrides}, environ={})
    return Sandbox(result.config.data_dir, start_server(cfg), result.admin_key_path, overrides)


@pytest.fixture()
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sbx = start_sandbox(tmp_path)
    yield sbx
    sbx.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL for the session (started only if a test asks for it)."""
    with running_postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url


@pytest.fixture()
def pg_database(postgres_url: str) -> Iterator[str]:
    """The URL of a database of its own for one test, dropped after it."""
    with fresh_database(postgres_url) as url:
        yield url


@dataclass
class World:
    """A sandbox with the census and credit datasets imported and a bank, an office and a lab enrolled."""

    sbx: Sandbox
    admin: AdminClient
    bank: ApplicantClient
    lab: ResearcherClient
    census_version: str
    credit_version: str


def enrol_client(admin: AdminClient, sbx: Sandbox, cls, name: str, roles) -> object:  # type: ignore[no-untyped-def]
    key = generate_key()
    admin.enrol(name=name, organisation=f"{name} Ltd", roles=roles, public_key=public_key_of(key))
    return cls(sbx.address, key=key, ca=sbx.ca)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sbx = start_sandbox(tmp_path_factory.mktemp("world"))
    admin = sbx.admin()
    census = admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    credit = admin.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
    bank = enrol_client(admin, sbx, ApplicantClient, "Bank", ["applicant"])
    lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
    yield World(sbx, admin, bank, lab, census.dataset.version, credit.dataset.version)  # type: ignore[arg-type]
    for c in (admin, bank, lab):
        c.close()
    sbx.stop()


def apply_dp(client: ApplicantClient, **kw) -> object:  # type: ignore[no-untyped-def]
    args = dict(title="Income statistics", purpose="Publish income statistics by education",
                legal_basis="Statistics Act art. 7", kind="DP_QUERY",
                datasets={"adult_census": ["age", "education", "sex", "hours_per_week"]},
                epsilon=1.0, delta=0, quota=100, valid_for=dt.timedelta(days=30))
    args.update(kw)
    return client.apply(**args)
