"""The HTTP control API (aiohttp). Every error is JSON with a reason; none is a traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from aiohttp import web
from pydantic import ValidationError

from broadcaster.announcements import compose_spec, spoken_language
from broadcaster.announcer import AlreadyClaimed, Announcer, QueueFull
from broadcaster.clock import Clock
from broadcaster.config import Config, ScheduleConfig
from broadcaster.journal import row_as_dict, to_row
from broadcaster.scheduling.runner import ScheduleError, ScheduleRunner
from broadcaster.scheduling.templates import TemplateError
from broadcaster.store import AsyncStore, IdempotencyRow, StoreError
from broadcaster.streaming.hub import Hub
from broadcaster.streaming.supervision import Supervisor

from . import idempotency
from .idempotency import IdempotencyKeys
from .schemas import AnnouncementRequest, field_errors

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ANNOUNCER: web.AppKey[Announcer] = web.AppKey("announcer", Announcer)
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
CLOCK: web.AppKey[Clock] = web.AppKey("clock", object)  # type: ignore[arg-type]  # Protocol
STORE: web.AppKey[AsyncStore] = web.AppKey("store", AsyncStore)
RUNNER: web.AppKey[ScheduleRunner] = web.AppKey("runner", ScheduleRunner)
SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor", Supervisor)
IDEMPOTENCY: web.AppKey[IdempotencyKeys] = web.AppKey("idempotency", IdempotencyKeys)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal_error", "internal error; see the server log")


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid_json", "message": f"body is not JSON: {exc}"}),
            content_type="application/json",
        ) from None


async def create_announcement(request: web.Request) -> web.Response:
    """POST /v1/announcements: a text, or a template with variables (or both)."""
    body = await _json_body(request)
    return await _idempotent(
        request, body, lambda key: _announce(request, body, template_from_path=None, key=key)
    )


async def trigger_template(request: web.Request) -> web.Response:
    """POST /v1/triggers/{template}: an event (a delay feed, a sensor) fires a template."""
    body = await _json_body(request)
    template = request.match_info["template"]
    return await _idempotent(
        request, body, lambda key: _announce(request, body, template_from_path=template, key=key)
    )


class _Key:
    """The Idempotency-Key of a request being handled for the first time."""

    def __init__(self, keys: IdempotencyKeys, scope: str, key: str, fingerprint: str) -> None:
        self.keys, self.scope, self.key, self.fingerprint = keys, scope, key, fingerprint

    def row(self, status: int, resource: str, body: dict[str, Any]) -> IdempotencyRow:
        return self.keys.row(self.scope, self.key, self.fingerprint, status, resource, body)


async def _idempotent(
    request: web.Request,
    body: Any,
    create: Callable[[_Key | None], Awaitable[web.Response]],
) -> web.Response:
    """Run ``create`` once per Idempotency-Key; a retry gets the first answer back."""
    raw = request.headers.get(idempotency.HEADER)
    keys = request.app.get(IDEMPOTENCY)
    if raw is None or keys is None:
        return await create(None)
    problem = idempotency.check_key(raw)
    if problem is not None:
        return _invalid(idempotency.HEADER, problem)
    scope = idempotency.scope_of(request.get("principal"))
    fp = idempotency.fingerprint(request.method, request.path, body)
    found = await keys.claim(scope, raw)
    if found is None:
        try:
            return await create(_Key(keys, scope, raw, fp))
        finally:
            keys.release(scope, raw)
    if found.fingerprint != fp:
        message = "already used for a different request; use a new key for a new request"
        return _error(
            422,
            "idempotency_key_reused",
            f"{idempotency.HEADER} {message}",
            fields=[{"field": idempotency.HEADER, "message": message}],
        )
    kind, _, rid = found.resource.partition(":")
    answer: dict[str, Any] = found.body
    headers = {"Idempotent-Replayed": "true"}
    if kind == "announcement":
        live = request.app[ANNOUNCER].registry.get(rid)
        store = request.app.get(STORE)
        row = None if live is not None or store is None else await store.get_announcement(rid)
        if live is not None:
            answer = live.as_dict()
        elif row is not None:
            answer = row_as_dict(row)
        headers["Location"] = f"/v1/announcements/{rid}"
    elif kind == "schedule":
        headers["Location"] = f"/v1/schedules/{rid}"
    return web.json_response(answer, status=found.status, headers=headers)


async def _announce(
    request: web.Request, body: Any, *, template_from_path: str | None, key: _Key | None = None
) -> web.Response:
    cfg = request.app[CONFIG]
    if not isinstance(body, dict):
        return _error(
            422,
            "validation_failed",
            "body must be a JSON object",
            fields=[{"field": "(body)", "message": "must be an object"}],
        )
    if template_from_path is not None:
        if "template" in body:
            return _invalid("template", "given in the path; not allowed in the body")
        body = {**body, "template": template_from_path}
    try:
        req = AnnouncementRequest.model_validate(body)
    except ValidationError as exc:
        return _error(422, "validation_failed", "invalid fields", fields=field_errors(exc))
    problems: list[dict[str, str]] = []
    tpl = None
    if req.template is not None:
        tpl = cfg.template(req.template)
        if tpl is None:
            known = ", ".join(t.name for t in cfg.templates) or "none configured"
            if template_from_path is not None:
                return _error(404, "not_found", f"no template {req.template!r} (known: {known})")
            problems.append({"field": "template", "message": f"unknown template (known: {known})"})
    elif req.variables:
        problems.append({"field": "variables", "message": "only with a template"})
    language = spoken_language(cfg, tpl, req.language)
    text = req.text
    also: tuple[tuple[str, str], ...] = tuple((a.language, a.text) for a in req.also or [])
    if text is None and tpl is not None:
        try:
            text, rendered_also = tpl.render_all(req.variables, language)
            also = also or rendered_also
        except TemplateError as exc:
            field = f"variables.{exc.variable}" if exc.variable else "variables"
            problems.append({"field": field, "message": str(exc)})
    zones = req.zones if req.zones is not None else (tpl.zones if tpl and tpl.zones else None)
    if text is None and not problems:
        problems.append({"field": "text", "message": "required (or give a template)"})
    if zones is None and not problems:
        problems.append({"field": "zones", "message": "required"})
    if text is not None and len(text) > cfg.announcements.max_text_chars:
        problems.append(
            {
                "field": "text",
                "message": f"{len(text)} characters; at most "
                f"{cfg.announcements.max_text_chars} are accepted",
            }
        )
    unknown = [z for z in zones or [] if z not in cfg.zone_ids]
    if unknown:
        problems.append({"field": "zones", "message": f"unknown zone(s): {', '.join(unknown)}"})
    if req.expires_at is not None and req.expires_after_s is not None:
        problems.append({"field": "expires_at", "message": "give expires_at or expires_after_s"})
    if problems or text is None or zones is None:
        return _error(422, "validation_failed", "invalid fields", fields=problems)

    now = request.app[CLOCK].wall()
    due_at = req.due_at.astimezone(UTC) if req.due_at else None
    expires_at = req.expires_at.astimezone(UTC) if req.expires_at else None
    after_s = req.expires_after_s or (tpl.expires_after_s if tpl else None)
    if expires_at is None and after_s is not None:
        expires_at = (due_at or now) + timedelta(seconds=after_s)
    if expires_at is not None and expires_at <= now:
        return _invalid("expires_at", "is in the past")
    spec = compose_spec(
        cfg,
        tpl,
        text=text,
        zones=zones,
        language=language,
        also=also,
        voice=req.voice,
        speed=req.speed,
        style=req.style,
        priority=cast(int | None, req.priority),  # the validator made a band a number
        on_preempt=req.on_preempt,
        chime_before=req.chime_before,
        chime_after=req.chime_after,
        repeats=req.repeats,
        repeat_gap_ms=req.repeat_gap_ms,
    )
    announcer = request.app[ANNOUNCER]
    store = request.app.get(STORE)
    persist = None
    if key is not None and store is not None:
        # The record and its key in one transaction: a retry after a crash finds both.
        async def persist(ann: Any) -> bool:
            assert key is not None and store is not None
            row = key.row(202, f"announcement:{ann.id}", {"id": ann.id})
            return await store.insert_announcement_with_key(to_row(ann), row)

    try:
        try:
            ann = await announcer.accept(
                spec, due_at=due_at, expires_at=expires_at, persist=persist
            )
        except StoreError:
            if persist is None or spec.priority < cfg.announcements.emergency_priority:
                raise
            # An emergency is held in memory when the store cannot write; its key too.
            ann = await announcer.accept(spec, due_at=due_at, expires_at=expires_at)
            assert key is not None
            key.keys.remember(key.row(202, f"announcement:{ann.id}", {"id": ann.id}))
    except QueueFull as exc:
        return _error(503, "queue_full", str(exc))
    except AlreadyClaimed:  # the key was stored meanwhile (another process on this store?)
        return _error(
            409,
            "idempotency_key_in_progress",
            f"{idempotency.HEADER} is being used by another request; retry",
            fields=[{"field": idempotency.HEADER, "message": "in use by another request"}],
        )
    except StoreError as exc:
        log.error("announcement not accepted: %s", exc)
        return _error(
            503,
            "store_unavailable",
            "the announcement could not be stored (routine and operational announcements "
            "are refused while the store cannot write; emergencies are still accepted)",
        )
    if key is not None and store is None:
        key.keys.remember(key.row(202, f"announcement:{ann.id}", {"id": ann.id}))
    return web.json_response(
        ann.as_dict(),
        status=202,
        headers={"Location": f"/v1/announcements/{ann.id}"},
    )


def _store_unavailable(what: str, exc: StoreError) -> web.Response:
    log.error("%s: %s", what, exc)
    return _error(503, "store_unavailable", f"{what}: the store cannot write; try again later")


def _invalid(field: str, message: str) -> web.Response:
    return _error(
        422, "validation_failed", "invalid fields", fields=[{"field": field, "message": message}]
    )


# --- schedules ----------------------------------------------------------------------------


def _runner(request: web.Request) -> ScheduleRunner:
    return request.app[RUNNER]


async def list_schedules(request: web.Request) -> web.Response:
    return web.json_response({"schedules": _runner(request).list()})


async def create_schedule(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return await _idempotent(request, body, lambda key: _create_schedule(request, body, key))


async def _create_schedule(request: web.Request, body: Any, key: _Key | None) -> web.Response:
    if not isinstance(body, dict):
        return _invalid("(body)", "must be an object")
    try:
        spec = ScheduleConfig.model_validate(body)
    except ValidationError as exc:
        return _error(422, "validation_failed", "invalid fields", fields=field_errors(exc))
    try:
        created = await _runner(request).create(spec)
    except StoreError as exc:
        return _store_unavailable("schedule not created", exc)
    except ScheduleError as exc:
        status = 409 if exc.field == "id" else 422
        return _error(
            status,
            "validation_failed" if status == 422 else "conflict",
            str(exc),
            fields=[{"field": exc.field, "message": str(exc)}],
        )
    if key is not None:
        try:
            await key.keys.save(key.row(201, f"schedule:{spec.id}", created))
        except StoreError as exc:  # the schedule exists; a retry would get 409
            log.error("schedule %s: its %s was not stored: %s", spec.id, idempotency.HEADER, exc)
    return web.json_response(created, status=201, headers={"Location": f"/v1/schedules/{spec.id}"})


async def get_schedule(request: web.Request) -> web.Response:
    runner = _runner(request)
    sid = request.match_info["id"]
    if sid not in {s["id"] for s in runner.list()}:
        return _error(404, "not_found", "no such schedule")
    return web.json_response(runner.describe(sid, upcoming=10))


async def delete_schedule(request: web.Request) -> web.Response:
    try:
        deleted = await _runner(request).delete(request.match_info["id"])
    except StoreError as exc:
        return _store_unavailable("schedule not deleted", exc)
    except ScheduleError as exc:  # defined in the config: 409, naming the file
        return _error(409, "conflict", str(exc), fields=[{"field": exc.field, "message": str(exc)}])
    if not deleted:
        return _error(404, "not_found", "no such schedule")
    return web.json_response({"deleted": request.match_info["id"]})


async def pause_schedule(request: web.Request) -> web.Response:
    return await _pause(request, True)


async def resume_schedule(request: web.Request) -> web.Response:
    return await _pause(request, False)


async def _pause(request: web.Request, paused: bool) -> web.Response:
    try:
        described = await _runner(request).set_paused(request.match_info["id"], paused)
    except StoreError as exc:
        return _store_unavailable(f"schedule not {'paused' if paused else 'resumed'}", exc)
    if described is None:
        return _error(404, "not_found", "no such schedule")
    return web.json_response(described)


async def get_announcement(request: web.Request) -> web.Response:
    ann_id = request.match_info["id"]
    ann = request.app[ANNOUNCER].registry.get(ann_id)
    if ann is not None:
        return web.json_response(ann.as_dict())
    store = request.app.get(STORE)
    row = await store.get_announcement(ann_id) if store is not None else None
    if row is None:
        return _error(404, "not_found", "no such announcement")
    return web.json_response(row_as_dict(row))


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _query_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _Invalid(name, "must be an ISO 8601 date-time, e.g. 2026-11-26T08:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def list_announcements(request: web.Request) -> web.Response:
    """History, newest first: ?since=&until= (ISO 8601), &state= (repeatable), &limit=."""
    try:
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise _Invalid("limit", "must be an integer") from None
        since = _query_time(request, "since")
        until = _query_time(request, "until")
    except _Invalid as exc:
        return _error(
            422,
            "validation_failed",
            "invalid query",
            fields=[{"field": exc.field, "message": str(exc)}],
        )
    limit = max(1, min(limit, 1000))
    states = request.query.getall("state", None)
    store = request.app.get(STORE)
    registry = request.app[ANNOUNCER].registry
    if store is None:
        items = [a.as_dict() for a in registry.recent(limit)]
    else:
        # The store has every record; live ones are shown from memory (fresher).
        rows = await store.list_announcements(since=since, until=until, limit=limit, states=states)
        items = []
        for row in rows:
            live = registry.get(row.id)
            items.append(live.as_dict() if live is not None else row_as_dict(row))
    return web.json_response({"announcements": items})


async def cancel_announcement(request: web.Request) -> web.Response:
    announcer = request.app[ANNOUNCER]
    ann = announcer.cancel(request.match_info["id"])
    if ann is None:
        return _error(404, "not_found", "no such announcement")
    return web.json_response(ann.as_dict(), status=202)


async def list_endpoints(request: web.Request) -> web.Response:
    now = request.app[CLOCK].monotonic_us()
    hub = request.app[HUB]
    cfg = request.app[CONFIG]
    connected = {link.endpoint_id: link.as_dict(now) for link in hub.links()}
    supervisor = request.app.get(SUPERVISOR)
    items = []
    for ep in cfg.endpoints:
        entry: dict[str, Any] = {"endpoint_id": ep.id, "allowed_zones": ep.zones}
        if supervisor is not None:
            entry["supervision"] = supervisor.status(ep.id)
        entry["connected"] = ep.id in connected
        if ep.id in connected:
            entry.update(connected[ep.id])
        items.append(entry)
    return web.json_response({"endpoints": items})


async def list_events(request: web.Request) -> web.Response:
    """Supervision events (endpoint faults, recoveries), oldest first."""
    supervisor = request.app.get(SUPERVISOR)
    events = supervisor.events() if supervisor is not None else []
    return web.json_response({"events": [e.as_dict() for e in events]})


async def list_zones(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    arbiter = request.app[ANNOUNCER].arbiter
    cfg = request.app[CONFIG]
    zones = [
        {
            "id": z.id,
            "name": z.name,
            "endpoints": hub.zone_members(z.id),
            "playing": arbiter.holder(z.id),
        }
        for z in cfg.zones
    ]
    return web.json_response({"zones": zones})


async def health(request: web.Request) -> web.Response:
    announcer = request.app[ANNOUNCER]
    fallback = announcer.speech.fallback
    client = getattr(announcer.engine, "client", None)
    store = request.app.get(STORE)
    store_health = (
        {**store.health.as_dict(), "pending_writes": announcer.pending_writes}
        if store is not None
        else None
    )
    # Still 200 (the process is alive); "status" says when the store cannot write.
    status = "ok" if store is None or store.health.ok else "store_failing"
    return web.json_response(
        {
            "status": status,
            "store": store_health,
            "engine": announcer.engine.name,
            "fallback_engine": fallback.name if fallback is not None else None,
            "engine_connected": getattr(client, "connected", None),
            "endpoints_connected": len(request.app[HUB].links()),
            "announcements_waiting": len(announcer.arbiter),
        }
    )


def build_app(
    *,
    config: Config,
    announcer: Announcer,
    hub: Hub,
    clock: Clock,
    store: AsyncStore | None = None,
    runner: ScheduleRunner | None = None,
    supervisor: Supervisor | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=4 * 1024 * 1024)
    if supervisor is not None:
        app[SUPERVISOR] = supervisor
    if store is not None:
        app[STORE] = store
    if runner is not None:
        app[RUNNER] = runner
        app.router.add_get("/v1/schedules", list_schedules)
        app.router.add_post("/v1/schedules", create_schedule)
        app.router.add_get("/v1/schedules/{id}", get_schedule)
        app.router.add_delete("/v1/schedules/{id}", delete_schedule)
        app.router.add_post("/v1/schedules/{id}/pause", pause_schedule)
        app.router.add_post("/v1/schedules/{id}/resume", resume_schedule)
    app[IDEMPOTENCY] = IdempotencyKeys(
        store, clock, timedelta(hours=config.store.idempotency_hours)
    )
    app[CONFIG] = config
    app[ANNOUNCER] = announcer
    app[HUB] = hub
    app[CLOCK] = clock
    app.router.add_post("/v1/announcements", create_announcement)
    app.router.add_get("/v1/announcements", list_announcements)
    app.router.add_get("/v1/announcements/{id}", get_announcement)
    app.router.add_post("/v1/announcements/{id}/cancel", cancel_announcement)
    app.router.add_post("/v1/triggers/{template}", trigger_template)
    app.router.add_get("/v1/endpoints", list_endpoints)
    app.router.add_get("/v1/zones", list_zones)
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/healthz", health)
    return app
