"""Shared fixtures: a broker runtime on SQLite and on the PostgreSQL the test command started.

Async tests run on uvloop, the loop ``serve`` runs on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop
from moto.server import ThreadedMotoServer
from sqlalchemy import Engine, create_engine, text

from broker.app import open_runtime
from broker.auth import SYSTEM, Caller
from broker.config import Config, from_mapping
from broker.db import upgrade_sync
from broker.runtime import Runtime
from broker.service import users

PG_ENV = "CLOUDBROKER_TEST_PG"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test and fixture on uvloop, as in ``serve`` (see broker/cli.py)."""
    return {"uvloop": uvloop.new_event_loop}


def pg_admin_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.fail(f"{PG_ENV} is not set: run the tests with `make test`, which starts PostgreSQL")
    return url


def drop_database(engine: Engine, name: str) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that each test's database is copied from."""
    admin = pg_admin_url()
    name = f"cbtemplate_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    upgrade_sync(admin.rsplit("/", 1)[0] + "/" + name)
    try:
        yield name
    finally:
        drop_database(engine, name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test's database is copied from."""
    path = tmp_path_factory.mktemp("template") / "broker.db"
    upgrade_sync(f"sqlite:///{path}")
    return path


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    admin = pg_admin_url()
    name = f"cbtest_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        drop_database(engine, name)


def make_config(tmp: Path, url: str = "", **broker: object) -> Config:
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp), "local_host": "none", **broker},
            "database": {"url": url},
        },
        env={},
    )
    return cfg


def sqlite_copy(template: Path, tmp: Path) -> str:
    shutil.copyfile(template, tmp / "broker.db")
    return f"sqlite+aiosqlite:///{tmp / 'broker.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_copy(request.getfixturevalue("sqlite_template"), tmp_path)
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def rt(tmp_path: Path, db_url: str) -> AsyncIterator[Runtime]:
    runtime = await open_runtime(make_config(tmp_path, db_url), migrate=False)
    try:
        yield runtime
    finally:
        await runtime.aclose()


@pytest.fixture
async def sqlite_rt(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Runtime]:
    url = sqlite_copy(sqlite_template, tmp_path)
    runtime = await open_runtime(make_config(tmp_path, url), migrate=False)
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def make_user(rt: Runtime, name: str, role: str = "user") -> Caller:
    creds = await users.create_user(rt, SYSTEM, name, role=role)
    return Caller(creds.user.id, creds.user.name, creds.user.group_id, creds.user.role)


@dataclasses.dataclass
class Tenants:
    alice: Caller
    bob: Caller
    admin: Caller


@pytest.fixture
async def tenants(rt: Runtime) -> Tenants:
    return Tenants(
        await make_user(rt, "alice"),
        await make_user(rt, "bob"),
        await make_user(rt, "root", "admin"),
    )


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server on loopback standing in for EC2, fresh for each test module."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
