"""The migrations build exactly the schema the model declares, and step down and up again,
on SQLite and on PostgreSQL (each from an empty database, not a copy of a migrated one)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from broker import db
from broker.model import Base
from tests.conftest import drop_database, pg_admin_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each engine, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
        return
    admin = pg_admin_url()
    name = f"cbmig_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        drop_database(engine, name)


def _diff(url: str) -> list[object]:
    engine = create_engine(db.sync_url(url))
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(db.sync_url(url))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_head_matches_the_model(empty_url: str) -> None:
    assert _tables(empty_url) == set()
    db.upgrade_sync(empty_url)
    assert _tables(empty_url) == set(Base.metadata.tables)
    assert _diff(empty_url) == []


def test_down_to_the_first_revision_and_up_again(empty_url: str) -> None:
    db.upgrade_sync(empty_url)
    head = db.current_revision(empty_url)
    command.downgrade(db._alembic_config(empty_url), "0001")
    assert db.current_revision(empty_url) == "0001"
    assert _diff(empty_url) != []  # the first revision is not the model: the step was real
    db.upgrade_sync(empty_url)
    assert db.current_revision(empty_url) == head
    assert _diff(empty_url) == []
