"""Schema upgrades through Alembic: ``locker init`` calls :func:`upgrade` on every start of a
new version, so a Pi in a school upgrades in place and keeps its records."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from kiosk.db import Database
from kiosk.errors import InstanceError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``revision``; returns (revision before, revision after)."""
    before = current_revision(database)
    config = alembic_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    after = current_revision(database)
    if before != after:
        log.info("database schema upgraded from %s to %s", before or "nothing", after)
    return before, after


def ensure_current(database: Database) -> None:
    """InstanceError (saying to run ``locker init``) unless the schema is at the head."""
    current, head = current_revision(database), head_revision()
    if current is None:
        raise InstanceError(f"the database {database.safe_url} has no tables: run `locker init`")
    if current != head:
        raise InstanceError(
            f"the database is at schema {current} but this version needs {head}: "
            "run `locker init` to upgrade it"
        )
