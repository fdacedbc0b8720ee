"""A database of a benchmark's own: a new SQLite file, or a new database on a PostgreSQL
server (created from the server's URL, dropped afterwards), so a benchmark never writes into
a school's data."""

from __future__ import annotations

import uuid
from pathlib import Path


def prepare_database(url: str | None, workdir: Path) -> tuple[str, str | None]:
    """The URL to run on, and (PostgreSQL) the database to drop afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if url is None:
        path = workdir / "locker.db"
        return f"sqlite:///{path}", None
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and Path(parsed.database).exists():
            raise SystemExit(f"{parsed.database} exists: give the name of a new SQLite file")
        return url, None
    if parsed.get_backend_name() != "postgresql":
        raise SystemExit(f"unsupported database {parsed.get_backend_name()!r}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    name = f"locker_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise SystemExit(
            f"cannot create a database for the benchmark on {parsed.render_as_string()}: "
            f"{exc}\n(the user needs the CREATEDB right)"
        ) from None
    finally:
        engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False), name


def drop_database(url: str, name: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
