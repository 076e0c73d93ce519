"""The OpenAPI 3.1 document of the HTTP API, served at ``/v1/openapi.json``.

Built from what is really there: the routes are read from the aiohttp router,
and each is described by an entry of :data:`DOCS` keyed by (method, path) whose
request and response bodies are the pydantic models the routes validate with.
A route without an entry still appears (marked undocumented) and
:func:`undocumented` lists it, so a test can fail on it; :func:`unrouted` lists
entries naming a route that does not exist.

Every route but ``/healthz`` is documented as needing ``Authorization: Bearer``
(the ``bearerAuth`` scheme).
"""

from __future__ import annotations

import copy
import re
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from broadcaster import __version__
from broadcaster.audio.chimes import CHIMES
from broadcaster.auth import Role
from broadcaster.config import Config, ScheduleConfig, TemplateConfig
from broadcaster.model import LANGUAGES, PRIORITY_BANDS, VOICES
from broadcaster.web.pages import is_page

from .access import requires
from .schemas import (
    AnnouncementList,
    AnnouncementRecord,
    AnnouncementRequest,
    AuditList,
    EndpointList,
    ErrorResponse,
    EventList,
    GainRequest,
    GainResult,
    HealthResponse,
    OpenApiDocument,
    ReadinessResponse,
    ScheduleDeleted,
    ScheduleList,
    ScheduleRecord,
    SilenceRequest,
    SilenceResult,
    TemplateDeleted,
    TemplateList,
    TemplateRecord,
    ZoneList,
)

__all__ = ["DOCS", "Doc", "build_document", "undocumented", "unrouted"]

OPENAPI_PATH = "/v1/openapi.json"

#: Why each error status may come back (those a route lists in ``Doc.errors``).
_ERROR_TEXT = {
    400: "the body is not JSON, or the request is malformed",
    401: "no token, or a wrong one",
    403: "the token's role or zones do not allow this",
    404: "no such resource",
    408: "the body did not arrive in time (limits.body_timeout_s)",
    409: "a resource with this id exists already",
    413: "the body is too large",
    415: "the body is not application/json",
    422: "invalid fields; `fields` names each one and says why",
    429: "too many failed attempts from this address",
    503: "not accepted now (queue full, store unavailable)",
}
#: Errors any route behind a bearer token may answer.
_AUTH_ERRORS = (400, 401, 403, 429)
_BODY_ERRORS = (400, 408, 413, 415, 422)
#: POSTs that create work take an Idempotency-Key: a retry with the same key returns
#: the same record and never creates a second one.
_IDEMPOTENCY = (
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
        "description": "a retry with the same key returns the same record",
    },
)


@dataclass(frozen=True)
class Doc:
    """How one route is documented."""

    summary: str
    ok_status: int
    #: The success body's model; None for a text body (e.g. Prometheus metrics).
    ok: type[BaseModel] | None
    body: str | None = None  # a component name under components.schemas
    errors: tuple[int, ...] = ()
    #: Query and header parameters (OpenAPI parameter objects).
    query: tuple[dict[str, Any], ...] = ()
    public: bool = False
    description: str = ""
    tags: tuple[str, ...] = field(default=())
    #: Media type of the success body.
    ok_media: str = "application/json"
    body_required: bool = True
    #: Error statuses answered with the success body's schema (e.g. /readyz's 503).
    same_body: tuple[int, ...] = ()


_ID_404 = (404,)

#: The documentation of every route, keyed by (method, path as registered).
DOCS: dict[tuple[str, str], Doc] = {
    ("POST", "/v1/announcements"): Doc(
        "Announce a text, or a template with variables",
        202,
        AnnouncementRecord,
        body="AnnouncementRequest",
        errors=(*_BODY_ERRORS, 409, 503),
        query=_IDEMPOTENCY,
        description="Accepted announcements are stored before the answer; `Location` "
        "names the record.",
        tags=("announcements",),
    ),
    ("GET", "/v1/announcements"): Doc(
        "History, newest first",
        200,
        AnnouncementList,
        errors=(422,),
        query=(
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
            },
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {
                "name": "state",
                "in": "query",
                "schema": {"type": "array", "items": {"type": "string"}},
                "style": "form",
                "explode": True,
            },
        ),
        tags=("announcements",),
    ),
    ("GET", "/v1/announcements/{id}"): Doc(
        "One announcement's record",
        200,
        AnnouncementRecord,
        errors=_ID_404,
        tags=("announcements",),
    ),
    ("POST", "/v1/announcements/{id}/cancel"): Doc(
        "Cancel an announcement (endpoints drop what they buffered)",
        202,
        AnnouncementRecord,
        errors=_ID_404,
        tags=("announcements",),
    ),
    ("POST", "/v1/triggers/{template}"): Doc(
        "Fire a configured template from an event feed",
        202,
        AnnouncementRecord,
        body="TriggerRequest",
        errors=(*_BODY_ERRORS, 404, 409, 503),
        query=_IDEMPOTENCY,
        tags=("announcements",),
    ),
    ("GET", "/v1/schedules"): Doc("Every schedule", 200, ScheduleList, tags=("schedules",)),
    ("POST", "/v1/schedules"): Doc(
        "Create a schedule (cron, every_s or at)",
        201,
        ScheduleRecord,
        body="ScheduleConfig",
        errors=(*_BODY_ERRORS, 409),
        query=_IDEMPOTENCY,
        tags=("schedules",),
    ),
    ("GET", "/v1/schedules/{id}"): Doc(
        "One schedule with its next ten firings",
        200,
        ScheduleRecord,
        errors=_ID_404,
        tags=("schedules",),
    ),
    ("DELETE", "/v1/schedules/{id}"): Doc(
        "Delete a schedule", 200, ScheduleDeleted, errors=_ID_404, tags=("schedules",)
    ),
    ("POST", "/v1/schedules/{id}/pause"): Doc(
        "Pause a schedule", 200, ScheduleRecord, errors=_ID_404, tags=("schedules",)
    ),
    ("POST", "/v1/schedules/{id}/resume"): Doc(
        "Resume a schedule", 200, ScheduleRecord, errors=_ID_404, tags=("schedules",)
    ),
    ("GET", "/v1/endpoints"): Doc(
        "Configured endpoints: connected, supervision status", 200, EndpointList, tags=("status",)
    ),
    ("GET", "/v1/zones"): Doc("Zones: members and what plays", 200, ZoneList, tags=("status",)),
    ("GET", "/v1/events"): Doc(
        "Supervision events, oldest first", 200, EventList, tags=("status",)
    ),
    ("GET", "/healthz"): Doc("Liveness", 200, HealthResponse, public=True, tags=("status",)),
    ("GET", "/readyz"): Doc(
        "Readiness, with the reasons when not ready",
        200,
        ReadinessResponse,
        errors=(503,),
        same_body=(503,),
        public=True,
        description="503 with the same body (`ready: false`) when a check fails: the store "
        "cannot write, a zone has no endpoint, an endpoint is faulty, speech is on the "
        "fallback engine.",
        tags=("status",),
    ),
    ("GET", "/metrics"): Doc(
        "Prometheus metrics (text exposition format)",
        200,
        None,
        ok_media="text/plain",
        tags=("status",),
    ),
    ("POST", "/v1/zones/{id}/silence"): Doc(
        "Silence a zone: cancel what plays and waits there (dispatcher)",
        202,
        SilenceResult,
        body="SilenceRequest",
        body_required=False,
        errors=(*_BODY_ERRORS, 404),
        tags=("zones",),
    ),
    ("GET", "/v1/audit"): Doc(
        "The audit log, oldest first (dispatcher)",
        200,
        AuditList,
        errors=(422,),
        query=(
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        ),
        tags=("status",),
    ),
    ("GET", OPENAPI_PATH): Doc("This document", 200, OpenApiDocument, tags=("status",)),
    ("GET", "/v1/templates"): Doc(
        "Every template: the config's (read-only) and the API's",
        200,
        TemplateList,
        description="Each template's `variables` are described as "
        "`{name: {type, default, choices, max_length, required}}` so a form can be built; "
        '`source` is "config" (change it in the config file) or "api".',
        tags=("templates",),
    ),
    ("POST", "/v1/templates"): Doc(
        "Create a template (operator; emergency band: dispatcher)",
        201,
        TemplateRecord,
        body="TemplateConfig",
        errors=(*_BODY_ERRORS, 409, 503),
        description="Validated like a config template (typed variables, the sandboxed "
        "template parse); chimes are built-in or file:NAME from [audio] chime_dir; zones "
        "may name zone groups. Kept in the store. 409 when the name is taken.",
        tags=("templates",),
    ),
    ("GET", "/v1/templates/{template}"): Doc(
        "One template", 200, TemplateRecord, errors=_ID_404, tags=("templates",)
    ),
    ("PUT", "/v1/templates/{template}"): Doc(
        "Replace a template made through the API",
        200,
        TemplateRecord,
        body="TemplateConfig",
        errors=(*_BODY_ERRORS, 404, 409, 503),
        description="Operators for templates below the emergency band (before and after the "
        "edit), dispatchers and admins for any. 409 for a config template, or when a "
        "schedule announcing it would no longer render.",
        tags=("templates",),
    ),
    ("DELETE", "/v1/templates/{template}"): Doc(
        "Delete a template made through the API",
        200,
        TemplateDeleted,
        errors=(404, 409, 503),
        description="The same roles as editing it. 409 for a config template, or while a "
        "schedule announces it.",
        tags=("templates",),
    ),
    ("PUT", "/v1/zones/{id}/gain"): Doc(
        "Set a zone's gain (admin): -60..0 dB, null for the config's",
        200,
        GainResult,
        body="GainRequest",
        errors=(*_BODY_ERRORS, 503),
        description="Kept in the store, overriding `[[zones]] gain_db`. Sent to endpoints as "
        "`gain_db` in announcement_started from the next announcement on.",
        tags=("zones",),
    ),
    ("PUT", "/v1/endpoints/{id}/gain"): Doc(
        "Set an endpoint's gain (admin): -60..0 dB, null for the config's",
        200,
        GainResult,
        body="GainRequest",
        errors=(*_BODY_ERRORS, 503),
        description="Kept in the store, overriding `[[endpoints]] gain_db`; added to the zone "
        "gain in announcement_started.",
        tags=("status",),
    ),
}

_PARAM = re.compile(r"\{([^}/]+)\}")


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of ``app`` (HEAD added for GET left out)."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        if is_page(route):  # a browser page or its static files, not an API call
            continue
        found.add((route.method, resource.canonical))
    return found


def undocumented(app: web.Application) -> list[tuple[str, str]]:
    """Routes of ``app`` that :data:`DOCS` does not describe."""
    return sorted(routes(app) - set(DOCS))


def unrouted(app: web.Application) -> list[tuple[str, str]]:
    """Entries of :data:`DOCS` naming a route ``app`` does not have."""
    return sorted(set(DOCS) - routes(app))


def _components() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        AnnouncementRequest,
        ScheduleConfig,
        TemplateConfig,
        GainRequest,
        SilenceRequest,
        ErrorResponse,
        *{doc.ok for doc in DOCS.values() if doc.ok is not None},
    ]
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    # What the validators accept, stated in the document too.
    chime = {
        "anyOf": [
            {"type": "string", "enum": list(CHIMES)},
            {"type": "string", "pattern": r"^file:[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
            {"type": "null"},
        ],
        "default": None,
        "description": "a built-in chime, or file:NAME from [audio] chime_dir",
    }
    for name in ("AnnouncementRequest", "AlsoSpoken"):
        props = schemas[name]["properties"]
        props["language"] = _nullable(
            {"type": "string", "enum": list(LANGUAGES)}, required=name == "AlsoSpoken"
        )
        props["text"] = _nullable(
            {"type": "string", "pattern": r"\S", "maxLength": 100_000},
            required=name == "AlsoSpoken",
        )
        if name == "AnnouncementRequest":
            props["voice"] = _nullable({"type": "string", "enum": [*VOICES, "auto"]})
            props["chime_before"] = props["chime_after"] = chime
    # A number 0-255 or a band name (the validator takes either).
    schemas["AnnouncementRequest"]["properties"]["priority"] = {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 255},
            {"type": "string", "enum": list(PRIORITY_BANDS)},
            {"type": "null"},
        ],
        "default": None,
        "title": "Priority",
    }
    trigger = copy.deepcopy(schemas["AnnouncementRequest"])
    trigger["properties"].pop("template", None)
    trigger["title"] = "TriggerRequest"
    trigger["description"] = "POST /v1/triggers/{template}: the template comes from the path."
    schemas["TriggerRequest"] = trigger
    return schemas


def _nullable(schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return schema if required else {"anyOf": [schema, {"type": "null"}], "default": None}


def _operation(method: str, path: str, doc: Doc | None) -> dict[str, Any]:
    if doc is None:
        return {
            "summary": "undocumented",
            "responses": {"default": {"description": "undocumented route"}},
        }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    ok_schema = (
        {"type": "string"}
        if doc.ok is None
        else {"$ref": f"#/components/schemas/{doc.ok.__name__}"}
    )
    responses: dict[str, Any] = {
        str(doc.ok_status): {
            "description": doc.summary,
            "content": {doc.ok_media: {"schema": ok_schema}},
        }
    }
    codes = set(doc.errors) | (set() if doc.public else set(_AUTH_ERRORS))
    if _PARAM.search(path):
        codes.add(404)
    for code in sorted(codes):
        content = {doc.ok_media: {"schema": ok_schema}} if code in doc.same_body else error
        responses[str(code)] = {"description": _ERROR_TEXT[code], "content": content}
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_')}".replace(
            "{", ""
        ).replace("}", ""),
        "summary": doc.summary,
        "responses": responses,
    }
    if doc.description:
        op["description"] = doc.description
    if doc.tags:
        op["tags"] = list(doc.tags)
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(path)
    ]
    params += [dict(q) for q in doc.query]
    if params:
        op["parameters"] = params
    if doc.body is not None:
        op["requestBody"] = {
            "required": doc.body_required,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{doc.body}"}}
            },
        }
    if doc.public:
        op["security"] = []
    return op


def _narrow_to(schemas: dict[str, Any], config: Config) -> None:
    """Zones: exactly the configured zones and zone groups (others get 422). Template
    names are not narrowed: templates made through the API come and go."""
    zones = {"type": "string", "enum": [*config.zone_ids, *config.groups]}
    for name in ("AnnouncementRequest", "TriggerRequest", "ScheduleConfig", "TemplateConfig"):
        props = schemas[name]["properties"]
        if config.zone_ids:
            for branch in props["zones"].get("anyOf", [props["zones"]]):
                if branch.get("type") == "array":
                    branch["items"] = zones


def build_document(app: web.Application, config: Config | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the routes ``app`` really has (for ``config``)."""
    schemas = _components()
    if config is not None:
        _narrow_to(schemas, config)
    paths: dict[str, dict[str, Any]] = {}
    for method, path in sorted(routes(app)):
        paths.setdefault(path, {})[method.lower()] = _operation(
            method, path, DOCS.get((method, path))
        )
    post = paths.get("/v1/announcements", {}).get("post")
    if post is not None and config is not None and config.zone_ids:
        post["requestBody"]["content"]["application/json"]["example"] = {
            "text": "Please stand clear of the platform edge.",
            "zones": config.zone_ids[:1],
            "priority": "operational",
            "chime_before": "two-tone",
            "repeats": 1,
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "broadcaster",
            "version": __version__,
            "description": "Real-time text-to-speech public address: the HTTP control API. "
            "Errors are JSON: {error, message, fields: [{field, message}]}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


#: Built once per application, on its first request (its router is frozen by then).
_BUILT: weakref.WeakKeyDictionary[web.Application, dict[str, Any]] = weakref.WeakKeyDictionary()


@requires(Role.VIEWER)
async def serve_document(request: web.Request) -> web.Response:
    """GET /v1/openapi.json."""
    from .routes import CONFIG

    document = _BUILT.get(request.app)
    if document is None:
        document = build_document(request.app, request.app.get(CONFIG))
        _BUILT[request.app] = document
    return web.json_response(document)
