"""a sealed audit head, events that never change, facts of a finished record that stay

- ``audit_head.seal``: a keyed hash of the head's seq and hash, written by the application
  with every commit that appends events (``kiosk.audit``). Without the site secret nobody can
  point the head at an earlier event, so removing the most recent events (or all of them) is
  found by ``locker audit verify`` like any other removal. NULL until the next event.
- ``audit_events`` refuse UPDATE: an event, once written, is never changed (a retention
  purge deletes whole runs and leaves a checkpoint; verification accounts for each one).
- A hold is lifted only with a note, and a record that has ended keeps its facts: who
  collected it, the police reference, the reasons. Only its flag (for the office to check)
  may still change.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TERMINAL_STATES = (
    "CANCELLED",
    "COLLECTED",
    "RELEASED_TO_PARENT",
    "HANDED_TO_POLICE",
    "RETURNED_TO_PUPIL",
)
# What a finished record says happened. Not its flag (the office may still be asked to check
# it), nor links that a deleted compartment, kiosk or contact sets to NULL.
FINAL_FACTS = (
    "state",
    "pupil_id",
    "kind",
    "device",
    "started_at",
    "started_by",
    "ended_at",
    "ended_by",
    "end_reason",
    "stored_at",
    "confiscated_at",
    "confiscated_by",
    "confiscation_reason",
    "release_not_before",
    "ever_held",
    "held_at",
    "held_by",
    "hold_reason",
    "hold_lifted_note",
    "collector_name",
    "collector_relationship",
    "id_checked",
    "police_reference",
)


def _terminal() -> str:
    return "(" + ", ".join(f"'{state}'" for state in TERMINAL_STATES) + ")"


def upgrade() -> None:
    op.add_column("audit_head", sa.Column("seal", sa.String(length=64), nullable=True))
    terminal = _terminal()
    if op.get_bind().dialect.name == "sqlite":
        changed = " OR ".join(f"NEW.{column} IS NOT OLD.{column}" for column in FINAL_FACTS)
        op.execute("""
            CREATE TRIGGER trg_audit_events_append_only BEFORE UPDATE ON audit_events
            BEGIN SELECT RAISE(ABORT, 'audit guard: an audit event is never changed'); END""")
        op.execute("""
            CREATE TRIGGER trg_custody_lift_guard BEFORE UPDATE ON custody_records
            FOR EACH ROW WHEN OLD.state = 'SAFEGUARDING_HOLD' AND NEW.state = 'CONFISCATED'
                AND NEW.hold_lifted_note IS NULL
            BEGIN SELECT RAISE(ABORT, 'custody guard: a hold is lifted only with a note'); END""")
        op.execute(f"""
            CREATE TRIGGER trg_custody_final_guard BEFORE UPDATE ON custody_records
            FOR EACH ROW WHEN OLD.state IN {terminal} AND ({changed})
            BEGIN SELECT RAISE(ABORT,
                'custody guard: the facts of a finished record never change');
            END""")
    else:
        changed = " OR ".join(
            f"NEW.{column} IS DISTINCT FROM OLD.{column}" for column in FINAL_FACTS
        )
        op.execute("""
            CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit guard: an audit event is never changed'
                    USING ERRCODE = 'check_violation';
            END
            $$""")
        op.execute("""
            CREATE TRIGGER trg_audit_events_append_only BEFORE UPDATE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""")
        op.execute(f"""
            CREATE FUNCTION custody_final_guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.state = 'SAFEGUARDING_HOLD' AND NEW.state = 'CONFISCATED'
                    AND NEW.hold_lifted_note IS NULL THEN
                    RAISE EXCEPTION 'custody guard: a hold is lifted only with a note'
                        USING ERRCODE = 'check_violation';
                END IF;
                IF OLD.state IN {terminal} AND ({changed}) THEN
                    RAISE EXCEPTION 'custody guard: the facts of a finished record never change'
                        USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END
            $$""")
        op.execute("""
            CREATE TRIGGER trg_custody_final_guard BEFORE UPDATE ON custody_records
            FOR EACH ROW EXECUTE FUNCTION custody_final_guard()""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("trg_audit_events_append_only", "trg_custody_lift_guard"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TRIGGER IF EXISTS trg_custody_final_guard")
    else:
        op.execute("DROP TRIGGER IF EXISTS trg_audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
        op.execute("DROP TRIGGER IF EXISTS trg_custody_final_guard ON custody_records")
        op.execute("DROP FUNCTION IF EXISTS custody_final_guard()")
    # Not a batch (copy and rename) on SQLite: the head trigger of 0002 names the table.
    op.execute("ALTER TABLE audit_head DROP COLUMN seal")
