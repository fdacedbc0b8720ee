"""audit head moved by the database: every inserted event becomes the chain's head

The application used to update ``audit_head`` after each insert. A trigger does it inside
the same statement instead: one round trip less per event on the tap path, and the head can
never disagree with the last event written (a later delete still leaves it pointing at the
removed event, which is how ``locker audit verify`` notices removed tail events).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("""
            CREATE TRIGGER trg_audit_head_follows AFTER INSERT ON audit_events
            FOR EACH ROW
            BEGIN
                UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash,
                    updated_at = NEW.occurred_at
                WHERE id = 1;
            END""")
    else:
        op.execute("""
            CREATE FUNCTION audit_head_follows() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash,
                    updated_at = NEW.occurred_at
                WHERE id = 1;
                RETURN NEW;
            END
            $$""")
        op.execute("""
            CREATE TRIGGER trg_audit_head_follows AFTER INSERT ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_head_follows()""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS trg_audit_head_follows")
    else:
        op.execute("DROP TRIGGER IF EXISTS trg_audit_head_follows ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_head_follows()")
