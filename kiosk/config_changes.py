"""Configuration changes in the audit trail.

Each Pi keeps its own ``config.toml`` (and its ``LOCKER_*`` environment), and the school's
rules live there: the windows, who may release a confiscated device, how long records are
kept. So whenever a process that acts on them starts (``locker init``, the kiosk, the web
app), it compares the settings it runs with against the last ones recorded by the same kind
of process for the same kiosk, and records a ``config.changed`` event with the difference.
The first start records every setting. The database URL is left out: it may hold a password.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .actors import Actor
from .audit import AuditTrail
from .clock import Clock
from .config import Config
from .models import AuditEvent

log = logging.getLogger(__name__)

EVENT = "config.changed"
#: The sections recorded (``[database]`` is not: its URL may carry a password).
SECTIONS = ("site", "policy", "kiosk", "web", "hardware")


def settings_of(config: Config) -> dict[str, Any]:
    """Every recorded setting as ``{"section.key": value}``, in plain JSON values (times and
    windows as their text, tuples as lists)."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        part = getattr(config, section)
        values = dataclasses.asdict(part) if dataclasses.is_dataclass(part) else dict(part)
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return json.loads(json.dumps(flat, default=str, sort_keys=True))


def record_changes(
    session: Session,
    audit: AuditTrail,
    clock: Clock,
    config: Config,
    *,
    process: str,
) -> dict[str, list[Any]] | None:
    """Record ``config.changed`` in the caller's transaction when the settings differ from
    the last recorded by ``process`` (``init``, ``kiosk`` or ``web``) for this kiosk.

    Returns the difference (``{"section.key": [before, after]}``; before is None for a
    setting not recorded before), or None when nothing changed.
    """
    current = settings_of(config)
    kiosk = config.kiosk.name
    actor = Actor.system(process)
    last = session.execute(
        select(AuditEvent.details)
        .where(AuditEvent.kind == EVENT, AuditEvent.kiosk == kiosk, AuditEvent.actor == actor.label)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    before: dict[str, Any] = json.loads(last).get("settings", {}) if last is not None else {}
    changed = {
        key: [before.get(key), value]
        for key, value in current.items()
        if key not in before or before[key] != value
    }
    changed.update({key: [value, None] for key, value in before.items() if key not in current})
    if not changed:
        return None
    audit.record(
        session,
        clock,
        actor,
        EVENT,
        kiosk=kiosk,
        details={
            "process": process,
            "first": last is None,
            "changed": changed,
            "settings": current,
        },
    )
    if last is not None:
        log.info("configuration changed since the last %s start: %s", process, sorted(changed))
    return changed


__all__ = ["EVENT", "SECTIONS", "record_changes", "settings_of"]
