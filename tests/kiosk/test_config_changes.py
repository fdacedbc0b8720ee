"""Configuration changes reach the audit trail: the first start records every setting, a
start with the same settings records nothing, a changed setting is recorded with its old and
new value; the database URL (which may hold a password) never is."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from kiosk import config_changes
from kiosk.cli import cli
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import AuditEvent


def _events(instance: Instance) -> list[dict]:
    with instance.database.reader() as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.kiosk, AuditEvent.details)
            .where(AuditEvent.kind == config_changes.EVENT)
            .order_by(AuditEvent.seq)
        ).all()
    return [{"actor": a, "kiosk": k, **json.loads(d)} for a, k, d in rows]


def _record(instance: Instance, clock: ManualClock, process: str = "kiosk") -> dict | None:
    with instance.database.transaction() as session:
        return config_changes.record_changes(
            session, instance.audit, clock, instance.config, process=process
        )


def test_first_start_records_everything_then_only_changes(
    instance: Instance, clock: ManualClock
) -> None:
    first = _record(instance, clock)
    assert first is not None
    assert first["policy.retention_days"] == [None, instance.config.policy.retention_days]
    assert first["policy.release_roles"][1] == list(instance.config.policy.release_roles)
    assert not any(key.startswith("database.") for key in first)
    assert _record(instance, clock) is None  # the same settings: nothing new
    assert _record(instance, clock, process="web")  # another process keeps its own record

    kept = instance.config.policy.retention_days
    policy = dataclasses.replace(instance.config.policy, retention_days=kept + 35)
    instance.config = dataclasses.replace(instance.config, policy=policy)
    changed = _record(instance, clock)
    assert changed == {"policy.retention_days": [kept, kept + 35]}
    events = _events(instance)
    assert [(e["actor"], e["first"]) for e in events] == [
        ("system:kiosk", True),
        ("system:web", True),
        ("system:kiosk", False),
    ]
    assert events[-1]["settings"]["policy.retention_days"] == kept + 35
    assert all(e["kiosk"] == instance.config.kiosk.name for e in events)
    with instance.database.reader() as session:
        instance.audit.verify(session)


def test_init_records_a_changed_policy_and_never_the_database_url(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = CliRunner()
    assert runner.invoke(cli, ["--home", str(home), "init"], env={}).exit_code == 0
    assert runner.invoke(cli, ["--home", str(home), "init"], env={}).exit_code == 0
    changed = runner.invoke(
        cli,
        ["--home", str(home), "init"],
        env={"LOCKER_POLICY_RELEASE_ROLES": "dsl,admin"},
    )
    assert changed.exit_code == 0, changed.output
    instance = Instance.open(home, env={})
    try:
        events = _events(instance)
        assert [e["first"] for e in events] == [True, False]
        assert events[1]["changed"] == {
            "policy.release_roles": [["office", "dsl", "admin"], ["dsl", "admin"]]
        }
        assert all("database" not in json.dumps(e["settings"]).lower() for e in events)
    finally:
        instance.close()
