"""The migrations build exactly the schema the model declares, and step down and up again."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from broker import db
from broker.model import Base


def _diff(url: str) -> list[object]:
    engine = create_engine(db.sync_url(url))
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def test_head_matches_the_model(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    db.upgrade_sync(url)
    assert _diff(url) == []


def test_down_to_the_first_revision_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    db.upgrade_sync(url)
    from alembic import command

    command.downgrade(db._alembic_config(url), "0001")
    assert db.current_revision(url) == "0001"
    db.upgrade_sync(url)
    assert _diff(url) == []
