"""PostgreSQL for tests: one real server per session (``postgres_server``), a clean ledger per test (``ledger_url``).

The server is :class:`provisioning_lab.postgres.PostgresServer` (initdb + postgres on a free
loopback port in a temporary directory, as Mosquitto is started). Without the PostgreSQL
binaries or psycopg the tests that need them are skipped with a message that says how to
install them; ``.ci/run`` installs them where missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning_lab.postgres import POSTGRES_MISSING, PostgresNotFound, PostgresServer, find_postgres

__all__ = ["ledger_url_fixture", "postgres_server_fixture", "reset_ledger"]


@pytest.fixture(name="postgres_server", scope="session")
def postgres_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The session's PostgreSQL (fsync off: no test cuts the power, and the machine is shared)."""
    try:
        find_postgres()
    except PostgresNotFound:
        pytest.skip(POSTGRES_MISSING)
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg not installed: pip install 'provisioning-agent[postgres]'")
    server = PostgresServer(Path(tmp_path_factory.mktemp("postgres")), fsync=False)
    server.start()
    yield server
    server.close()


@pytest.fixture(name="ledger_url")
def ledger_url_fixture(postgres_server: PostgresServer) -> str:
    """The URL of an empty ledger database (every table of the previous test dropped)."""
    reset_ledger(postgres_server.url)
    return postgres_server.url


def reset_ledger(url: str) -> None:
    """Drop every table of the ledger (sessions of agents still connected are ended first)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid != pg_backend_pid()"
        )
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
