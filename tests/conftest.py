"""Shared fixtures: a broker runtime on SQLite and on the PostgreSQL the test command started."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from broker.app import open_runtime
from broker.auth import SYSTEM, Caller
from broker.config import Config, from_mapping
from broker.runtime import Runtime
from broker.service import users

PG_ENV = "CLOUDBROKER_TEST_PG"


def pg_admin_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.fail(f"{PG_ENV} is not set: run the tests with `make test`, which starts PostgreSQL")
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin = pg_admin_url()
    name = f"cbtest_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin.replace("+asyncpg", "+psycopg"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def make_config(tmp: Path, url: str = "", **broker: object) -> Config:
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp), "local_host": "none", **broker},
            "database": {"url": url},
        },
        env={},
    )
    return cfg


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def rt(tmp_path: Path, db_url: str) -> AsyncIterator[Runtime]:
    runtime = await open_runtime(make_config(tmp_path, db_url), migrate=True)
    try:
        yield runtime
    finally:
        await runtime.aclose()


@pytest.fixture
async def sqlite_rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    runtime = await open_runtime(make_config(tmp_path), migrate=True)
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
