"""Alembic migrations. ``locker init`` runs them (see :func:`kiosk.migrate.upgrade`)."""
