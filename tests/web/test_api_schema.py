"""Schemathesis against the OpenAPI document, in process (WSGI), with and without a token:
every answer matches the document (status, content type, body schema), bad input gets a
4xx, and nothing gives a 5xx."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from kiosk import exemptions, users
from kiosk.actors import Actor
from kiosk.clock import ManualClock
from kiosk.instance import Instance
from kiosk.models import ExemptionKind, Role
from web import openapi

from .conftest import confiscate, deposit, hold, pupil_of, user_of

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
PUBLIC = {"/healthz"}


@pytest.fixture
def token(instance: Instance, clock: ManualClock) -> str:
    """An admin's token, with records of every kind in the database to find."""
    deposit(instance, clock, "1001")
    confiscate(instance, clock, "1002")
    held = confiscate(instance, clock, "1003")
    hold(instance, clock, held, "reason")
    with instance.database.transaction() as session:
        admin = user_of(session, Role.ADMIN)
        exemptions.grant(
            session,
            Actor.for_user(admin),
            clock,
            instance.audit,
            pupil=pupil_of(session, "1005"),
            kind=ExemptionKind.MEDICAL,
            starts_on=clock.now().date(),
            ends_on=clock.now().date() + timedelta(days=3),
            agreement_reference="MED-1",
        )
        return users.create_token(session, Actor.system("test"), clock, instance.audit, admin)


def _labels() -> list[tuple[str, str]]:
    document = schemathesis.openapi.from_dict(openapi.document())
    return [
        (operation.method.upper(), operation.path)
        for operation in (result.ok() for result in document.get_all_operations())
    ]


OPERATIONS = _labels()
# Negative data needs something to break: a parameter or a body.
_DOC = openapi.document()["paths"]
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or _DOC[path][method.lower()].get("parameters")
    or _DOC[path][method.lower()].get("requestBody")
]
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def _operation(app: Flask, method: str, path: str) -> Any:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    return schema[path][method]


def test_every_operation_is_exercised() -> None:
    assert len(OPERATIONS) == 16
    assert ("POST", "/api/v1/custody/{custody_id}/release") in OPERATIONS


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES]
)
def test_api_with_a_token(
    app: Flask, token: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = _operation(app, method, path)
    statuses: list[int] = []

    @SETTINGS
    @given(case=operation.as_strategy(mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {token}"}, checks=CHECKS
        )
        statuses.append(response.status_code)

    run()
    assert statuses and max(statuses) < 500


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_without_a_token(app: Flask, method: str, path: str) -> None:
    operation = _operation(app, method, path)
    statuses: list[int] = []

    @settings(SETTINGS, max_examples=5)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def run(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS)
        statuses.append(response.status_code)
        if path not in PUBLIC:
            assert response.status_code == 401
            assert "error" in response.json()

    run()
    assert statuses
