"""The OpenAPI 3 document of ``/api/v1`` (and ``/healthz``), written by hand.

It must match what :mod:`web.api` answers: ``tests/web/test_api_schema.py`` runs
schemathesis against it, in process, with and without a token.
"""

from __future__ import annotations

from typing import Any

from kiosk.commands import CommandKind
from kiosk.models import CommandStatus, CustodyKind, CustodyState, ExemptionKind

from .core import MAX_ID
from .queries import GRID_STATES


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


STRING = {"type": "string"}
NSTRING = _nullable(STRING)
DATETIME = {"type": "string", "format": "date-time"}
NDATETIME = _nullable(DATETIME)
NDATE = _nullable({"type": "string", "format": "date"})
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


#: What :func:`kiosk.text.clean_text` refuses in free text: control characters other
#: than tab and newline (an ECMA-262 pattern, as OpenAPI's are).
NO_CONTROL = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f]*$"
NO_CONTROL_TEXT = "No control characters (tab and newline are allowed)."


def _text(max_length: int, *, min_length: int = 1) -> dict[str, Any]:
    """Free text typed by a person: trimmed, at most ``max_length`` characters, no control
    characters (400 otherwise)."""
    schema: dict[str, Any] = {
        "type": "string",
        "maxLength": max_length,
        "pattern": NO_CONTROL,
        "description": NO_CONTROL_TEXT,
    }
    if min_length:
        schema["minLength"] = min_length
    return schema


PUPIL = _object(
    {"admission_number": STRING, "display_name": STRING, "form": NSTRING},
)

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": STRING}),
    "Pupil": PUPIL,
    "CompartmentCustody": _object(
        {
            "id": ID,
            "state": {"type": "string", "enum": [s.value for s in CustodyState]},
            "kind": {"type": "string", "enum": [k.value for k in CustodyKind]},
            "since": NDATETIME,
            "stored": {"type": "boolean"},
            "flag": NSTRING,
            "flag_detail": NSTRING,
            "pupil": _ref("Pupil"),
        }
    ),
    "Compartment": _object(
        {
            "id": ID,
            "kiosk": STRING,
            "number": {"type": "integer", "minimum": 1},
            "label": STRING,
            "kind": {"type": "string", "enum": ["pupil", "secure"]},
            "state": {"type": "string", "enum": list(GRID_STATES)},
            "door": {"type": "string", "enum": ["open", "closed"], "nullable": True},
            "locked": {"type": "boolean", "nullable": True},
            "alarm": NSTRING,
            "out_of_service": {"type": "boolean"},
            "out_of_service_reason": NSTRING,
            "custody": {**_ref("CompartmentCustody"), "nullable": True},
        }
    ),
    "Kiosk": _object(
        {
            "name": STRING,
            "label": STRING,
            "status": {"type": "string", "enum": ["ok", "fault", "stopped", "offline", "unknown"]},
            "heartbeat_at": NDATETIME,
            "faults": {"type": "array", "items": STRING},
            "alarms": {
                "type": "array",
                "items": _object(
                    {
                        "compartment": {"type": "integer", "nullable": True},
                        "kind": NSTRING,
                        "since": NSTRING,
                    }
                ),
            },
        }
    ),
    "Custody": _object(
        {
            "id": ID,
            "state": {"type": "string", "enum": [s.value for s in CustodyState]},
            "kind": {"type": "string", "enum": [k.value for k in CustodyKind]},
            "since": NDATETIME,
            "pupil": _ref("Pupil"),
            "location": STRING,
            "compartment": _nullable(
                _object({"kiosk": NSTRING, "number": {"type": "integer", "minimum": 1}})
            ),
            "device": NSTRING,
            "started_at": DATETIME,
            "stored_at": NDATETIME,
            "ended_at": NDATETIME,
            "confiscated_at": NDATETIME,
            "confiscated_by": NSTRING,
            "confiscation_reason": NSTRING,
            "release_not_before": NDATETIME,
            "held": {"type": "boolean"},
            "notice": NSTRING,
            "hold_reason": NSTRING,
            "held_by": NSTRING,
            "police_reference": NSTRING,
            "collector": _nullable(
                _object(
                    {"name": STRING, "relationship": NSTRING, "id_checked": {"type": "boolean"}}
                )
            ),
            "flag": NSTRING,
        }
    ),
    "Command": _object(
        {
            "id": ID,
            "kind": {"type": "string", "enum": [k.value for k in CommandKind]},
            "status": {"type": "string", "enum": [s.value for s in CommandStatus]},
            "payload": {"type": "object"},
            "created_at": DATETIME,
            "finished_at": NDATETIME,
            "result": {"type": "object", "nullable": True},
            "error": NSTRING,
        }
    ),
    "Exemption": _object(
        {
            "id": ID,
            "pupil": _ref("Pupil"),
            "kind": {"type": "string", "enum": [k.value for k in ExemptionKind]},
            "starts_on": {"type": "string", "format": "date"},
            "ends_on": NDATE,
            "review_on": NDATE,
            "agreement_reference": STRING,
            "approved_by": STRING,
            "created_at": DATETIME,
            "revoked_at": NDATETIME,
            "revoke_reason": NSTRING,
            "active": {"type": "boolean"},
        }
    ),
    "Event": _object(
        {
            "seq": {"type": "integer", "minimum": 1},
            "occurred_at": DATETIME,
            "kind": STRING,
            "actor": STRING,
            "kiosk": NSTRING,
            "custody_id": {"type": "integer", "nullable": True},
            "pupil_id": {"type": "integer", "nullable": True},
            "restricted": {"type": "boolean"},
            "details": {"type": "object", "nullable": True},
        }
    ),
    "CustodyOutcome": _object(
        {"custody": _ref("Custody"), "command": {**_ref("Command"), "nullable": True}}
    ),
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["ok", "degraded", "error"]},
            "database": {"type": "string", "enum": ["ok", "unreachable"]},
            "kiosks": {
                "type": "array",
                "items": _object(
                    {
                        "name": STRING,
                        "status": {
                            "type": "string",
                            "enum": ["ok", "fault", "stopped", "offline", "unknown"],
                        },
                        "heartbeat_age_s": {"type": "number", "nullable": True},
                    }
                ),
            },
        }
    ),
}

REQUESTS: dict[str, Any] = {
    "Release": _object(
        {
            "id_checked": {
                "type": "boolean",
                "description": "The collector's photo ID was checked (must be true).",
            },
            "contact_id": {**ID, "description": "One of the pupil's authorised contacts."},
            "collector_name": _text(120),
            "relationship": _text(60),
        },
        required=["id_checked"],
    ),
    "Hold": _object({"reason": _text(1000)}),
    "LiftHold": _object({"note": _text(1000)}),
    "Police": _object({"reference": _text(80)}),
    "Confiscation": _object(
        {
            "admission_number": _text(20),
            "reason": _text(500),
            "where": {
                "type": "string",
                "description": "safe (the office safe), locker (where the pupil's device is) "
                "or kiosk:NAME (a secure compartment of that kiosk, which opens)",
                "pattern": "^(safe|locker|kiosk:[a-z0-9_-]+)$",
            },
            "device": _text(120, min_length=0),
            "referral": {
                **_text(1000),
                "description": "An urgent safeguarding referral: the device goes under hold.",
            },
        },
        required=["admission_number", "reason"],
    ),
    "Exemption": _object(
        {
            "admission_number": _text(20),
            "kind": {"type": "string", "enum": [k.value for k in ExemptionKind]},
            "starts_on": {"type": "string", "format": "date"},
            "ends_on": {"type": "string", "format": "date"},
            "review_on": {"type": "string", "format": "date"},
            "agreement_reference": _text(120),
            "notes": _text(500, min_length=0),
        },
        required=["admission_number", "kind", "starts_on", "agreement_reference"],
    ),
    "Revoke": _object({"reason": _text(500)}),
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }


ERRORS = {
    "400": _error("Bad input"),
    "401": _error("Not signed in, or a bad token"),
    "403": _error("The role may not do this"),
    "404": _error("No such record"),
    "409": _error("Not allowed in the record's current state or by the policy"),
}
BODY_ERRORS = {**ERRORS, "415": _error("The body is not JSON")}


def _ok(schema: dict[str, Any], description: str = "OK", status: str = "200") -> dict[str, Any]:
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _list(key: str, item: str) -> dict[str, Any]:
    return _object({key: {"type": "array", "items": _ref(item)}})


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": ID}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _body(name: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


def _custody_action(summary: str, request: str, operation_id: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "parameters": [_path_id("custody_id")],
            "requestBody": _body(request),
            "responses": {**_ok(_ref("CustodyOutcome")), **BODY_ERRORS},
        }
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document."""
    schemas = dict(SCHEMAS)
    schemas.update({f"{name}Request": schema for name, schema in REQUESTS.items()})
    secured = [{"bearer": []}, {"session": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "School phone locker API",
            "version": "1",
            "description": "Custody of pupils' devices. Authenticate with a session cookie "
            "(changes need the X-CSRFToken header) or Authorization: Bearer TOKEN "
            "(`locker token create USERNAME`). Safeguarding details are returned to the DSL "
            "and admin roles only.",
        },
        "servers": [{"url": "/"}],
        "security": secured,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "locker_session"},
            },
            "schemas": schemas,
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness: database reachable, kiosks' heartbeat ages",
                    "operationId": "health",
                    "security": [],
                    "responses": {
                        **_ok(_ref("Health")),
                        **_ok(_ref("Health"), "The database is unreachable", "503"),
                    },
                }
            },
            "/api/v1/compartments": {
                "get": {
                    "summary": "Every compartment and its state",
                    "operationId": "listCompartments",
                    "parameters": [_query("kiosk", STRING, "Only this kiosk (its name)")],
                    "responses": {
                        **_ok(
                            _object(
                                {
                                    "kiosks": {"type": "array", "items": _ref("Kiosk")},
                                    "compartments": {
                                        "type": "array",
                                        "items": _ref("Compartment"),
                                    },
                                    "awaiting_collection": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "Confiscated devices (held ones "
                                        "included) awaiting collection, in every cabinet",
                                    },
                                }
                            )
                        ),
                        "304": {"description": "Not modified (If-None-Match)"},
                        **ERRORS,
                    },
                }
            },
            "/api/v1/kiosks": {
                "get": {
                    "summary": "Kiosks' health",
                    "operationId": "listKiosks",
                    "responses": {**_ok(_list("kiosks", "Kiosk")), **ERRORS},
                }
            },
            "/api/v1/custody": {
                "get": {
                    "summary": "Custody records (active ones unless state says otherwise)",
                    "operationId": "listCustody",
                    "parameters": [
                        {
                            **_query(
                                "state",
                                {
                                    "type": "array",
                                    "items": {
                                        "type": "string",
                                        "enum": [s.value for s in CustodyState],
                                    },
                                },
                                "Comma-separated states, e.g. CONFISCATED,SAFEGUARDING_HOLD "
                                "(case-insensitive; default: the active ones); an unknown "
                                "state is a 400",
                            ),
                            "style": "form",
                            "explode": False,
                        },
                        _query("pupil", STRING, "Only this pupil (admission number)"),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                            "At most this many, newest first",
                        ),
                    ],
                    "responses": {**_ok(_list("custody", "Custody")), **ERRORS},
                }
            },
            "/api/v1/custody/{custody_id}": {
                "get": {
                    "summary": "One custody record",
                    "operationId": "getCustody",
                    "parameters": [_path_id("custody_id")],
                    "responses": {**_ok(_object({"custody": _ref("Custody")})), **ERRORS},
                }
            },
            "/api/v1/custody/{custody_id}/release": _custody_action(
                "Release a confiscated device to a parent or carer (its compartment opens)",
                "ReleaseRequest",
                "releaseCustody",
            ),
            "/api/v1/custody/{custody_id}/hold": _custody_action(
                "Place a safeguarding hold (urgent referral to the DSL)",
                "HoldRequest",
                "holdCustody",
            ),
            "/api/v1/custody/{custody_id}/lift-hold": _custody_action(
                "Lift a safeguarding hold (DSL, admin)", "LiftHoldRequest", "liftHold"
            ),
            "/api/v1/custody/{custody_id}/police": _custody_action(
                "Hand a held device to the police (DSL, admin)", "PoliceRequest", "handToPolice"
            ),
            "/api/v1/confiscations": {
                "get": {
                    "summary": "Confiscated devices awaiting collection",
                    "operationId": "listConfiscations",
                    "responses": {**_ok(_list("custody", "Custody")), **ERRORS},
                },
                "post": {
                    "summary": "Record a confiscation",
                    "operationId": "confiscate",
                    "requestBody": _body("ConfiscationRequest"),
                    "responses": {
                        **_ok(_ref("CustodyOutcome"), "Recorded", "201"),
                        **BODY_ERRORS,
                    },
                },
            },
            "/api/v1/exemptions": {
                "get": {
                    "summary": "Exemptions in force on a day",
                    "operationId": "listExemptions",
                    "parameters": [
                        _query(
                            "active_on",
                            {"type": "string", "format": "date"},
                            "The day (default today)",
                        )
                    ],
                    "responses": {**_ok(_list("exemptions", "Exemption")), **ERRORS},
                },
                "post": {
                    "summary": "Approve an exemption (admin)",
                    "operationId": "grantExemption",
                    "requestBody": _body("ExemptionRequest"),
                    "responses": {
                        **_ok(_object({"exemption": _ref("Exemption")}), "Recorded", "201"),
                        **BODY_ERRORS,
                    },
                },
            },
            "/api/v1/exemptions/{exemption_id}/revoke": {
                "post": {
                    "summary": "Revoke an exemption (admin)",
                    "operationId": "revokeExemption",
                    "parameters": [_path_id("exemption_id")],
                    "requestBody": _body("RevokeRequest"),
                    "responses": {
                        **_ok(_object({"exemption": _ref("Exemption")})),
                        **BODY_ERRORS,
                        "409": _error("The exemption was already revoked"),
                    },
                }
            },
            "/api/v1/events": {
                "get": {
                    "summary": "Audit events after a sequence number, oldest first",
                    "operationId": "listEvents",
                    "parameters": [
                        _query(
                            "since",
                            {"type": "integer", "minimum": 0, "maximum": 2**62, "default": 0},
                            "Events with a larger seq",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                            "At most this many",
                        ),
                    ],
                    "responses": {
                        **_ok(
                            _object(
                                {
                                    "events": {"type": "array", "items": _ref("Event")},
                                    "next_since": {"type": "integer", "minimum": 0},
                                }
                            )
                        ),
                        **ERRORS,
                    },
                }
            },
            "/api/v1/commands/{command_id}": {
                "get": {
                    "summary": "A command sent to a kiosk, and its result",
                    "operationId": "getCommand",
                    "parameters": [_path_id("command_id")],
                    "responses": {**_ok(_object({"command": _ref("Command")})), **ERRORS},
                }
            },
        },
    }
