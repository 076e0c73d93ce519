"""The HTTP control API (aiohttp). Every error is JSON with a reason; none is a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from aiohttp import web
from pydantic import ValidationError

from broadcaster.announcements import (
    compose_spec,
    prepare_spoken,
    spoken_language,
    spoken_texts,
)
from broadcaster.announcer import AlreadyClaimed, Announcer, QueueFull
from broadcaster.audio.chimes import ChimeError, load_chime_file, resolve_chime_name
from broadcaster.auth import (
    FailureLimiter,
    OriginPolicy,
    Principal,
    Refusal,
    Role,
    may_announce,
    may_cancel,
    may_change_template,
    may_manage_schedule,
    may_set_gain,
    may_silence,
)
from broadcaster.clock import Clock, within_us
from broadcaster.config import ALL_ZONES, Config, ScheduleConfig, check_request_chime
from broadcaster.events import EventLog
from broadcaster.gains import GainKind, Gains
from broadcaster.journal import row_as_dict, to_row
from broadcaster.logsetup import quiet_bad_requests
from broadcaster.model import AnnouncementSpec, AnnouncementState
from broadcaster.monitoring import Readiness, ServiceMetrics
from broadcaster.scheduling.library import TemplateLibrary, TemplateProblem, effective_priority
from broadcaster.scheduling.runner import ScheduleError, ScheduleRunner
from broadcaster.scheduling.templates import TemplateError
from broadcaster.store import AsyncStore, GainRow, IdempotencyRow, StoreError
from broadcaster.streaming.hub import Hub
from broadcaster.streaming.supervision import Supervisor
from broadcaster.web.pages import add_pages

from . import idempotency
from .access import (
    ACCESS,
    AUDIT_CREATED,
    AUDIT_DETAIL,
    PRINCIPAL,
    PUBLIC,
    READ_ONLY,
    Access,
    access_middleware,
    refusal_response,
    requires,
)
from .idempotency import IdempotencyKeys
from .openapi import OPENAPI_PATH, serve_document
from .schemas import (
    CONTROL_CHARS,
    DUE_AT_MAX_AHEAD_DAYS,
    DUE_AT_MAX_PAST_DAYS,
    MAX_EXPIRES_AFTER_S,
    MAX_JSON_DEPTH,
    AnnouncementRequest,
    GainRequest,
    SilenceRequest,
    check_json,
    field_errors,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ANNOUNCER: web.AppKey[Announcer] = web.AppKey("announcer", Announcer)
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
CLOCK: web.AppKey[Clock] = web.AppKey("clock", object)  # type: ignore[arg-type]  # Protocol
STORE: web.AppKey[AsyncStore] = web.AppKey("store", AsyncStore)
RUNNER: web.AppKey[ScheduleRunner] = web.AppKey("runner", ScheduleRunner)
SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor", Supervisor)
EVENTS: web.AppKey[EventLog] = web.AppKey("events", EventLog)
METRICS: web.AppKey[ServiceMetrics] = web.AppKey("metrics", ServiceMetrics)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness", Readiness)
IDEMPOTENCY: web.AppKey[IdempotencyKeys] = web.AppKey("idempotency", IdempotencyKeys)
TEMPLATES: web.AppKey[TemplateLibrary] = web.AppKey("templates", TemplateLibrary)
GAINS: web.AppKey[Gains] = web.AppKey("gains", Gains)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BodyRefused as exc:  # a body refused before it was parsed (depth, Unicode...)
        return exc.response
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].limits.max_body_bytes
        return _error(
            413,
            "request_entity_too_large",
            f"the request body is over the limit of {limit} bytes (limits.max_body_bytes)",
        )
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal_error", "internal error; see the server log")


def _principal(request: web.Request) -> Principal:
    """The caller the access middleware authenticated (every non-public route has one)."""
    principal = request.get(PRINCIPAL)
    if not isinstance(principal, Principal):  # only a route declared PUBLIC lacks one
        raise RuntimeError(f"{request.path}: no principal; is the route declared public?")
    return principal


def _forbid(request: web.Request, refusal: Refusal) -> web.Response:
    request[AUDIT_DETAIL] = refusal.message
    return refusal_response(refusal)


class _BodyRefused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__("body refused")
        self.response = response


async def _json_body(request: web.Request) -> Any:
    """The body as JSON; ``_BodyRefused`` (400, 408 or 422) when no route could accept it."""
    limits = request.app[CONFIG].limits
    try:
        raw = await within_us(request.app[CLOCK], request.read(), int(limits.body_timeout_s * 1e6))
    except TimeoutError:
        late = _error(
            408,
            "request_timeout",
            f"the body did not arrive within {limits.body_timeout_s:g} s (limits.body_timeout_s)",
        )
        late.force_close()  # the rest of the body is not waited for
        raise _BodyRefused(late) from None
    try:
        # NaN and Infinity are not JSON; read them as floats so check_json names the field.
        body = json.loads(raw, parse_constant=float)
    except RecursionError:
        raise _BodyRefused(
            _invalid("(body)", f"nested deeper than {MAX_JSON_DEPTH} levels")
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BodyRefused(
            _error(400, "invalid_json", f"body is not JSON: {str(exc)[:200]}")
        ) from None
    problems = check_json(body)
    if problems:
        raise _BodyRefused(_error(422, "validation_failed", "invalid fields", fields=problems))
    return body


@requires(Role.OPERATOR)
async def create_announcement(request: web.Request) -> web.Response:
    """POST /v1/announcements: a text, or a template with variables (or both)."""
    try:
        body = await _json_body(request)
    except _BodyRefused as exc:
        return exc.response
    return await _idempotent(
        request, body, lambda key: _announce(request, body, template_from_path=None, key=key)
    )


@requires(Role.OPERATOR)
async def trigger_template(request: web.Request) -> web.Response:
    """POST /v1/triggers/{template}: an event (a delay feed, a sensor) fires a template."""
    try:
        body = await _json_body(request)
    except _BodyRefused as exc:
        return exc.response
    template = request.match_info["template"]
    return await _idempotent(
        request, body, lambda key: _announce(request, body, template_from_path=template, key=key)
    )


@requires(Role.OPERATOR)
async def preview_announcement(request: web.Request) -> web.Response:
    """POST /v1/preview: what announcing this body would say, without announcing it.

    The body is that of POST /v1/announcements (a trigger is previewed with its
    template named in the body). The same validation and role rules apply; the
    ``spoken`` texts come from the function the playout uses. Audited only when
    refused (it changes nothing).
    """
    request[READ_ONLY] = True
    try:
        body = await _json_body(request)
    except _BodyRefused as exc:
        return exc.response
    composed = await _compose(request, body, template_from_path=None)
    if isinstance(composed, web.Response):
        return composed
    s = composed.spec
    return web.json_response(
        {
            "text": s.text,
            "language": s.language,
            "also": [{"language": lang, "text": text} for lang, text in s.also],
            "spoken": [{"language": lang, "text": text} for lang, text in spoken_texts(s)],
            "priority": s.priority,
            "zones": list(s.zones),
            "template": s.template,
            "voice": s.voice,
            "chime_before": s.chime_before,
            "chime_after": s.chime_after,
            "repeats": s.repeats,
            "due_at": composed.due_at.isoformat() if composed.due_at else None,
            "expires_at": composed.expires_at.isoformat() if composed.expires_at else None,
        }
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
    scope = idempotency.scope_of(request.get(PRINCIPAL))
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


@dataclass(frozen=True, slots=True)
class _Composed:
    """A request to announce, validated and checked against the caller's role."""

    spec: AnnouncementSpec
    due_at: datetime | None
    expires_at: datetime | None


async def _compose(
    request: web.Request, body: Any, *, template_from_path: str | None
) -> _Composed | web.Response:
    """The announcement a body asks for, or the answer refusing it (422, 404, 403).

    Shared by announcing and previewing, so a preview is refused exactly when
    announcing would be, and shows exactly what would be spoken.
    """
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
        library = request.app[TEMPLATES]
        tpl = library.get(req.template)
        if tpl is None:
            known = ", ".join(library.names()[:50]) or "none"
            if template_from_path is not None:
                return _error(404, "not_found", f"no template {req.template!r} (known: {known})")
            problems.append({"field": "template", "message": f"unknown template (known: {known})"})
    elif req.variables:
        problems.append({"field": "variables", "message": "only with a template"})
    language = spoken_language(cfg, tpl, req.language)
    text = req.text
    also: tuple[tuple[str, str], ...] = tuple((a.language, a.text) for a in req.also or [])
    # What the voice reads: the texts, or a template rendered for speech (values in
    # words by their types) while the record and captions show it as written.
    to_speak: tuple[str, tuple[tuple[str, str], ...]] | None = None
    if text is None and tpl is not None:
        try:
            text, rendered_also = tpl.render_all(req.variables, language, display=True)
            said_text, said_also = tpl.render_all(req.variables, language)
            to_speak = (said_text, also or said_also)
            also = also or rendered_also
        except TemplateError as exc:
            field = f"variables.{exc.variable}" if exc.variable else "variables"
            problems.append({"field": field, "message": str(exc)})
        else:
            rendered = (text, said_text, *(t for _, t in also), *(t for _, t in to_speak[1]))
            if any(CONTROL_CHARS.search(t) for t in rendered):
                problems.append(
                    {"field": "variables", "message": "the text would hold control characters"}
                )
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
    spoken = len(text or "") + sum(len(t) for _, t in also)
    if text is not None and len(text) <= cfg.announcements.max_text_chars < spoken:
        problems.append(
            {
                "field": "also",
                "message": f"{spoken} characters in all languages; at most "
                f"{cfg.announcements.max_text_chars} are accepted",
            }
        )
    for field in ("chime_before", "chime_after"):
        problem = await _check_request_chime(cfg, getattr(req, field))
        if problem is not None:
            problems.append({"field": field, "message": problem})
    unknown = cfg.unknown_zones(zones or [])
    if unknown:
        problems.append(
            {
                "field": "zones",
                "message": f"unknown zone(s): {', '.join(unknown)} "
                "(neither a zone nor a zone group)",
            }
        )
    if req.expires_at is not None and req.expires_after_s is not None:
        problems.append({"field": "expires_at", "message": "give expires_at or expires_after_s"})
    if problems or text is None or zones is None:
        return _error(422, "validation_failed", "invalid fields", fields=problems)

    now = request.app[CLOCK].wall()
    earliest = now - timedelta(days=DUE_AT_MAX_PAST_DAYS)
    latest = now + timedelta(days=DUE_AT_MAX_AHEAD_DAYS)
    # Compared before any arithmetic, so a date near year 9999 cannot overflow.
    if req.due_at is not None and not earliest <= req.due_at <= latest:
        return _invalid(
            "due_at",
            f"must be between {DUE_AT_MAX_PAST_DAYS} day ago and "
            f"{DUE_AT_MAX_AHEAD_DAYS} days ahead",
        )
    if req.expires_at is not None and not (
        req.expires_at <= latest + timedelta(seconds=MAX_EXPIRES_AFTER_S)
    ):
        return _invalid(
            "expires_at", f"must be at most {DUE_AT_MAX_AHEAD_DAYS} days and a week ahead"
        )
    due_at = req.due_at.astimezone(UTC) if req.due_at else None
    expires_at = req.expires_at.astimezone(UTC) if req.expires_at else None
    after_s = req.expires_after_s or (tpl.expires_after_s if tpl else None)
    if expires_at is None and after_s is not None:
        expires_at = (due_at or now) + timedelta(seconds=after_s)
    if expires_at is not None and expires_at <= now:
        return _invalid("expires_at", "is in the past")
    # Text preparation is CPU work proportional to the text: off the event loop.
    said = await asyncio.to_thread(prepare_spoken, language, *(to_speak or (text, also)))
    spec = compose_spec(
        cfg,
        tpl,
        text=text,
        spoken=said,
        zones=cfg.expand_zones(zones),  # groups become their zones here, at admission
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
    # Checked on the effective priority and zones (after template and config defaults).
    principal = _principal(request)
    refusal = may_announce(
        principal,
        priority=spec.priority,
        zones=spec.zones,
        emergency_priority=cfg.announcements.emergency_priority,
    )
    if refusal is not None:
        return _forbid(request, refusal)
    return _Composed(spec, due_at, expires_at)


async def _announce(
    request: web.Request, body: Any, *, template_from_path: str | None, key: _Key | None = None
) -> web.Response:
    cfg = request.app[CONFIG]
    composed = await _compose(request, body, template_from_path=template_from_path)
    if isinstance(composed, web.Response):
        return composed
    spec, due_at, expires_at = composed.spec, composed.due_at, composed.expires_at
    principal = _principal(request)
    announcer = request.app[ANNOUNCER]
    store = request.app.get(STORE)
    persist = None
    if key is not None and store is not None:
        # The record and its key in one transaction: a retry after a crash finds both.
        # A refusal is recorded without the key: only what was created is remembered.
        async def persist(ann: Any) -> bool:
            assert key is not None and store is not None
            if ann.state is AnnouncementState.REFUSED:
                await store.insert_announcement(to_row(ann))
                return True
            row = key.row(202, f"announcement:{ann.id}", {"id": ann.id})
            return await store.insert_announcement_with_key(to_row(ann), row)

    def accept(persist: Any) -> Awaitable[Any]:
        return announcer.accept(
            spec,
            due_at=due_at,
            expires_at=expires_at,
            persist=persist,
            created_by=principal.id,
        )

    try:
        try:
            ann = await accept(persist)
        except StoreError:
            if persist is None or spec.priority < cfg.announcements.emergency_priority:
                raise
            # An emergency is held in memory when the store cannot write; its key too.
            ann = await accept(None)
            assert key is not None
            key.keys.remember(key.row(202, f"announcement:{ann.id}", {"id": ann.id}))
    except QueueFull as exc:
        # Not admitted; the refusal is kept as a record (state "refused") with the reason.
        record = exc.record.id if exc.record is not None else None
        return _error(
            503,
            "queue_full",
            str(exc),
            id=record,
            location=f"/v1/announcements/{record}" if record else None,
        )
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
    request[AUDIT_CREATED] = ann.id
    return web.json_response(
        ann.as_dict(),
        status=202,
        headers={"Location": f"/v1/announcements/{ann.id}"},
    )


def _store_unavailable(what: str, exc: StoreError) -> web.Response:
    log.error("%s: %s", what, exc)
    return _error(503, "store_unavailable", f"{what}: the store cannot write; try again later")


async def _check_request_chime(cfg: Config, chime: str | None) -> str | None:
    """Why a request's ``file:NAME`` chime cannot be used (None: it can, or built-in)."""
    if chime is None or not chime.startswith("file:"):
        return None
    name = chime.removeprefix("file:")
    audio = cfg.audio
    if audio.chime_dir is None:
        return "no chime folder is configured ([audio] chime_dir); use a built-in chime"
    try:
        path = resolve_chime_name(audio.chime_dir, name)
    except ChimeError as exc:
        return str(exc)
    try:
        # Decoded once now, within the limits (off the event loop), so a file that is
        # too big, too long or not audio is refused here rather than skipped later.
        await asyncio.to_thread(
            load_chime_file,
            path,
            8000,
            max_bytes=audio.chime_max_kb * 1024,
            max_duration_s=audio.chime_max_s,
        )
    except ChimeError as exc:
        return str(exc).replace(repr(str(path)), repr(name))  # never the server's path
    return None


def _invalid(field: str, message: str) -> web.Response:
    return _error(
        422, "validation_failed", "invalid fields", fields=[{"field": field, "message": message}]
    )


# --- schedules ----------------------------------------------------------------------------


def _runner(request: web.Request) -> ScheduleRunner:
    return request.app[RUNNER]


def _schedule_scope(runner: ScheduleRunner, spec: ScheduleConfig) -> tuple[list[str], int]:
    """A new schedule's effective zones (groups expanded) and priority (its own, else its
    template's, else the config's)."""
    tpl = None if spec.template is None else runner.templates.get(spec.template)
    zones = spec.zones or (tpl.zones if tpl else [])
    return runner.config.expand_zones(zones), runner.priority_of(spec)


@requires(Role.VIEWER)
async def list_schedules(request: web.Request) -> web.Response:
    return web.json_response({"schedules": _runner(request).list()})


@requires(Role.OPERATOR)
async def create_schedule(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
    except _BodyRefused as exc:
        return exc.response
    return await _idempotent(request, body, lambda key: _create_schedule(request, body, key))


async def _create_schedule(request: web.Request, body: Any, key: _Key | None) -> web.Response:
    if not isinstance(body, dict):
        return _invalid("(body)", "must be an object")
    try:
        # Strict: JSON gives exact types, so true is not 1 and "60" is not 60.
        spec = ScheduleConfig.model_validate(body, strict=True)
    except ValidationError as exc:
        fields = field_errors(exc)
        for f in fields:
            # The trigger's checks span fields and say which one first ("cron: ...").
            head, sep, rest = f["message"].partition(": ")
            if f["field"] == "(body)" and sep and head in ScheduleConfig.model_fields:
                f["field"], f["message"] = head, rest
        return _error(422, "validation_failed", "invalid fields", fields=fields)
    cfg = request.app[CONFIG]
    problems = []
    for field in ("chime_before", "chime_after"):
        chime = getattr(spec, field)
        try:
            check_request_chime(chime)
        except ValueError as exc:
            problems.append({"field": field, "message": str(exc)})
            continue
        problem = await _check_request_chime(cfg, chime)
        if problem is not None:
            problems.append({"field": field, "message": problem})
    if spec.text is not None and len(spec.text) > cfg.announcements.max_text_chars:
        problems.append(
            {
                "field": "text",
                "message": f"{len(spec.text)} characters; at most "
                f"{cfg.announcements.max_text_chars} are accepted",
            }
        )
    if problems:
        return _error(422, "validation_failed", "invalid fields", fields=problems)
    runner = _runner(request)
    known_template = spec.template is None or runner.templates.get(spec.template) is not None
    if known_template:  # (an unknown one is refused by the runner)
        zones, priority = _schedule_scope(runner, spec)
        refusal = may_announce(
            _principal(request),
            priority=priority,
            zones=zones,
            emergency_priority=cfg.announcements.emergency_priority,
            verb="schedule",
        )
        if refusal is not None:
            return _forbid(request, refusal)
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
    request[AUDIT_CREATED] = spec.id
    return web.json_response(created, status=201, headers={"Location": f"/v1/schedules/{spec.id}"})


def _schedule_refusal(request: web.Request) -> web.Response | None:
    """404 for an unknown schedule, 403 when the token may not change it; None: go on."""
    runner = _runner(request)
    sid = request.match_info["id"]
    if sid not in {s["id"] for s in runner.list()}:
        return _error(404, "not_found", "no such schedule")
    zones = runner.zones_of(sid)
    refusal = may_manage_schedule(_principal(request), sid, zones)
    return _forbid(request, refusal) if refusal is not None else None


@requires(Role.VIEWER)
async def get_schedule(request: web.Request) -> web.Response:
    runner = _runner(request)
    sid = request.match_info["id"]
    if sid not in {s["id"] for s in runner.list()}:
        return _error(404, "not_found", "no such schedule")
    return web.json_response(runner.describe(sid, upcoming=10))


@requires(Role.OPERATOR)
async def delete_schedule(request: web.Request) -> web.Response:
    refused = _schedule_refusal(request)
    if refused is not None:
        return refused
    try:
        deleted = await _runner(request).delete(request.match_info["id"])
    except StoreError as exc:
        return _store_unavailable("schedule not deleted", exc)
    except ScheduleError as exc:  # defined in the config: 409, naming the file
        return _error(409, "conflict", str(exc), fields=[{"field": exc.field, "message": str(exc)}])
    if not deleted:
        return _error(404, "not_found", "no such schedule")
    return web.json_response({"deleted": request.match_info["id"]})


@requires(Role.OPERATOR)
async def pause_schedule(request: web.Request) -> web.Response:
    return await _pause(request, True)


@requires(Role.OPERATOR)
async def resume_schedule(request: web.Request) -> web.Response:
    return await _pause(request, False)


async def _pause(request: web.Request, paused: bool) -> web.Response:
    refused = _schedule_refusal(request)
    if refused is not None:
        return refused
    try:
        described = await _runner(request).set_paused(request.match_info["id"], paused)
    except StoreError as exc:
        return _store_unavailable(f"schedule not {'paused' if paused else 'resumed'}", exc)
    if described is None:
        return _error(404, "not_found", "no such schedule")
    return web.json_response(described)


# --- templates ----------------------------------------------------------------------------


@requires(Role.VIEWER)
async def list_templates(request: web.Request) -> web.Response:
    """GET /v1/templates: the config's (read-only) and the API's, by name."""
    return web.json_response({"templates": request.app[TEMPLATES].list()})


@requires(Role.VIEWER)
async def get_template(request: web.Request) -> web.Response:
    name = request.match_info["template"]
    library = request.app[TEMPLATES]
    if library.get(name) is None:
        return _error(404, "not_found", f"no template {name[:64]!r}")
    return web.json_response(library.describe(name))


@requires(Role.OPERATOR)
async def create_template(request: web.Request) -> web.Response:
    """POST /v1/templates: a new template, kept in the store."""
    try:
        body = await _json_body(request)
    except _BodyRefused as exc:
        return exc.response
    return await _save_template(request, body, path_name=None)


@requires(Role.OPERATOR)
async def update_template(request: web.Request) -> web.Response:
    """PUT /v1/templates/{template}: replace a template made through the API."""
    try:
        body = await _json_body(request)
    except _BodyRefused as exc:
        return exc.response
    return await _save_template(request, body, path_name=request.match_info["template"])


def _template_problem(exc: TemplateProblem) -> web.Response:
    return _error(
        exc.status,
        "conflict" if exc.status == 409 else "validation_failed",
        str(exc),
        fields=[{"field": exc.field, "message": str(exc)}],
    )


def _template_refusal(request: web.Request, template: Any, verb: str) -> web.Response | None:
    cfg = request.app[CONFIG]
    refusal = may_change_template(
        _principal(request),
        name=template.name,
        priority=effective_priority(cfg, template),
        zones=cfg.expand_zones(template.zones),
        emergency_priority=cfg.announcements.emergency_priority,
        verb=verb,
    )
    return _forbid(request, refusal) if refusal is not None else None


async def _save_template(request: web.Request, body: Any, *, path_name: str | None) -> web.Response:
    cfg = request.app[CONFIG]
    library = request.app[TEMPLATES]
    if not isinstance(body, dict):
        return _invalid("(body)", "must be an object")
    old = None
    if path_name is not None:
        conflict = library.config_conflict(path_name)
        if conflict is not None:
            return _template_problem(conflict)
        old = library.get(path_name)
        if old is None:
            return _error(404, "not_found", f"no template {path_name[:64]!r}")
        if body.get("name", path_name) != path_name:
            return _invalid("name", "differs from the name in the path (a template is not renamed)")
        body = {**body, "name": path_name}
    try:
        template = library.parse(body)
    except ValidationError as exc:
        return _error(422, "validation_failed", "invalid fields", fields=field_errors(exc))
    except TemplateProblem as exc:
        return _template_problem(exc)
    problems = []
    for field in ("chime_before", "chime_after"):
        problem = await _check_request_chime(cfg, getattr(template, field))
        if problem is not None:
            problems.append({"field": field, "message": problem})
    if problems:
        return _error(422, "validation_failed", "invalid fields", fields=problems)
    verb = "create" if old is None else "edit"
    if old is not None:  # the template as it is, and as it would be
        refused = _template_refusal(request, old, verb)
        if refused is not None:
            return refused
    refused = _template_refusal(request, template, verb)
    if refused is not None:
        return refused
    runner = request.app.get(RUNNER)
    for sc in runner.using_template(template.name) if runner is not None and old else []:
        # Its schedules must still work with it: they render, and they have zones.
        language = sc.language or template.language or cfg.speech.default_language
        try:
            template.compiled().render(sc.variables, language=language)
        except TemplateError as exc:
            problem = f"schedule {sc.id} announces it and would fail: {exc}"
            return _error(
                409, "conflict", problem, fields=[{"field": "variables", "message": problem}]
            )
        if not (sc.zones or template.zones):
            problem = f"schedule {sc.id} announces it and takes its zones; keep at least one"
            return _error(409, "conflict", problem, fields=[{"field": "zones", "message": problem}])
    try:
        await library.save(template, by=_principal(request).id, create=old is None)
    except TemplateProblem as exc:
        return _template_problem(exc)
    except KeyError:
        return _error(404, "not_found", f"no template {template.name!r}")
    except StoreError as exc:
        return _store_unavailable(f"template not {'created' if old is None else 'saved'}", exc)
    described = library.describe(template.name)
    if old is None:
        request[AUDIT_CREATED] = template.name
        return web.json_response(
            described, status=201, headers={"Location": f"/v1/templates/{template.name}"}
        )
    return web.json_response(described)


@requires(Role.OPERATOR)
async def delete_template(request: web.Request) -> web.Response:
    """DELETE /v1/templates/{template}: as editing it allows; not while a schedule uses it."""
    name = request.match_info["template"]
    library = request.app[TEMPLATES]
    conflict = library.config_conflict(name)
    if conflict is not None:
        return _template_problem(conflict)
    template = library.get(name)
    if template is None:
        return _error(404, "not_found", f"no template {name[:64]!r}")
    refused = _template_refusal(request, template, "delete")
    if refused is not None:
        return refused
    runner = request.app.get(RUNNER)
    users = [sc.id for sc in runner.using_template(name)] if runner is not None else []
    if users:
        problem = f"schedule(s) {', '.join(users)} announce it; delete them first"
        return _error(409, "conflict", problem, fields=[{"field": "name", "message": problem}])
    try:
        deleted = await library.delete(name)
    except TemplateProblem as exc:
        return _template_problem(exc)
    except StoreError as exc:
        return _store_unavailable("template not deleted", exc)
    if not deleted:
        return _error(404, "not_found", f"no template {name[:64]!r}")
    return web.json_response({"deleted": name})


# --- gains ----------------------------------------------------------------------------------


@requires(Role.ADMIN)
async def set_zone_gain(request: web.Request) -> web.Response:
    return await _set_gain(request, "zone")


@requires(Role.ADMIN)
async def set_endpoint_gain(request: web.Request) -> web.Response:
    return await _set_gain(request, "endpoint")


async def _set_gain(request: web.Request, kind: GainKind) -> web.Response:
    """Set (or with null clear) the gain of a zone or endpoint; kept in the store."""
    cfg = request.app[CONFIG]
    gains = request.app[GAINS]
    target = request.match_info["id"]
    if not gains.known(kind, target):
        return _error(404, "not_found", f"no {kind} {target[:64]!r}")
    try:
        body = await _json_body(request)
    except _BodyRefused as exc:
        return exc.response
    if not isinstance(body, dict):
        return _invalid("(body)", "must be an object")
    try:
        gain = GainRequest.model_validate(body).gain_db
    except ValidationError as exc:
        return _error(422, "validation_failed", "invalid fields", fields=field_errors(exc))
    endpoint = cfg.endpoint(target) if kind == "endpoint" else None
    zones = [target] if endpoint is None else endpoint.zones
    refusal = may_set_gain(_principal(request), f"{kind} {target}", zones)
    if refusal is not None:
        return _forbid(request, refusal)
    store = request.app.get(STORE)
    try:
        if store is not None and gain is None:
            await store.clear_gain(kind, target)
        elif store is not None and gain is not None:
            await store.set_gain(
                GainRow(
                    kind=kind,
                    id=target,
                    gain_db=gain,
                    updated_at=request.app[CLOCK].wall(),
                    updated_by=_principal(request).id,
                )
            )
    except StoreError as exc:
        return _store_unavailable("gain not set", exc)
    gains.set(kind, target, gain)
    request[AUDIT_DETAIL] = f"gain_db={gain}"
    return web.json_response({"kind": kind, "id": target, **gains.as_dict(kind, target)})


@requires(Role.VIEWER)
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
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        # In UTC now, so a date at the edge of the calendar fails here, not in the store.
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Invalid(name, "must be an ISO 8601 date-time, e.g. 2026-11-26T08:00:00Z") from None


_STATES = frozenset(s.value for s in AnnouncementState)


def _listing_query(
    request: web.Request, *, default_limit: int, also: frozenset[str] | set[str] = frozenset()
) -> tuple[int, datetime | None]:
    """``?limit=`` (1-1000) and ``?since=`` of a listing; other keys than ``also`` refused."""
    unknown = sorted(set(request.query) - {"limit", "since", *also})
    if unknown:
        raise _Invalid(unknown[0][:64], "unknown query parameter")
    raw_limit = request.query.get("limit", str(default_limit))
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 5):
        raise _Invalid("limit", "must be an integer 1-1000")
    limit = int(raw_limit)
    if not 1 <= limit <= 1000:
        raise _Invalid("limit", "must be an integer 1-1000")
    return limit, _query_time(request, "since")


@requires(Role.VIEWER)
async def list_announcements(request: web.Request) -> web.Response:
    """History, newest first: ?since=&until= (ISO 8601), &state= (repeatable), &limit=."""
    try:
        limit, since = _listing_query(request, default_limit=50, also={"until", "state"})
        until = _query_time(request, "until")
        states = request.query.getall("state", None)
        for state in states or []:
            if state not in _STATES:
                raise _Invalid("state", f"one of {', '.join(sorted(_STATES))}")
    except _Invalid as exc:
        return _invalid_query(exc)
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


@requires(Role.OPERATOR)
async def cancel_announcement(request: web.Request) -> web.Response:
    announcer = request.app[ANNOUNCER]
    ann_id = request.match_info["id"]
    found = announcer.registry.get(ann_id)
    if found is None:
        return _error(404, "not_found", "no such announcement")
    refusal = may_cancel(
        _principal(request),
        announcement_id=ann_id,
        created_by=found.created_by,
        zones=found.spec.zones,
    )
    if refusal is not None:
        return _forbid(request, refusal)
    ann = announcer.cancel(ann_id)
    if ann is None:
        return _error(404, "not_found", "no such announcement")
    return web.json_response(ann.as_dict(), status=202)


@requires(Role.DISPATCHER)
async def silence_zone(request: web.Request) -> web.Response:
    """POST /v1/zones/{id}/silence: cancel what plays and what waits in a zone.

    Every unfinished announcement that includes the zone (playing, waiting for
    the zone, or waiting for its due time) is cancelled; endpoints playing one
    get ``announcement_cancelled`` with ``flush`` and stop within a chunk. An
    announcement that also covers other zones is cancelled there too (playout
    is whole-announcement). Schedules are untouched: their next firings play.
    Optional body: ``{"reason": "..."}``, added to the reason, which names the token.
    """
    cfg = request.app[CONFIG]
    zone = request.match_info["id"]
    if cfg.unknown_zones([zone]):
        return _error(404, "not_found", f"no zone or zone group {zone!r}")
    zones = cfg.expand_zones([zone])  # a group silences each of its zones
    principal = _principal(request)
    refusal = may_silence(principal, zones)
    if refusal is not None:
        return _forbid(request, refusal)
    note: str | None = None
    if request.body_exists:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _invalid("(body)", "must be an object")
        try:
            note = (SilenceRequest.model_validate(body).reason or "").strip() or None
        except ValidationError as exc:
            return _error(422, "validation_failed", "invalid fields", fields=field_errors(exc))
    reason = f"zone {zone} silenced by {principal.id} ({principal.role})"
    if note:
        reason += f": {note}"
    announcer = request.app[ANNOUNCER]
    cancelled = []
    for ann in announcer.registry.unfinished():
        hit = not set(zones).isdisjoint(ann.spec.zones)
        if hit and announcer.cancel(ann.id, reason) is not None:
            cancelled.append(ann.id)
    request[AUDIT_DETAIL] = f"cancelled {len(cancelled)}: {', '.join(cancelled)}"[:500]
    log.info("%s; cancelled %d announcement(s)", reason, len(cancelled))
    return web.json_response({"zone": zone, "reason": reason, "cancelled": cancelled}, status=202)


@requires(Role.DISPATCHER)
async def list_audit(request: web.Request) -> web.Response:
    """GET /v1/audit?since=&limit=: state-changing and refused calls, oldest first."""
    try:
        limit, since = _listing_query(request, default_limit=100)
    except _Invalid as exc:
        return _invalid_query(exc)
    store = request.app.get(STORE)
    if store is None:
        return _error(503, "store_unavailable", "no store: the audit log is only in the log")
    # What was just done is in the answer (bounded: a stuck store does not hang the read).
    with contextlib.suppress(TimeoutError):
        await within_us(request.app[CLOCK], request.app[ACCESS].audit.flush(), 2_000_000)
    try:
        rows = await store.list_audit(since=since, limit=limit)
    except StoreError as exc:
        log.error("audit log not readable: %s", exc)
        return _error(503, "store_unavailable", "the audit log could not be read")
    return web.json_response({"audit": [r.as_dict() for r in rows]})


@requires(Role.VIEWER)
async def list_endpoints(request: web.Request) -> web.Response:
    return web.json_response({"endpoints": endpoint_entries(request)})


class HasApp(Protocol):
    """A request, or anything else that carries the app (the console stream)."""

    @property
    def app(self) -> web.Application: ...


def endpoint_entries(request: HasApp) -> list[dict[str, Any]]:
    """GET /v1/endpoints' items (the console stream shows the same)."""
    now = request.app[CLOCK].monotonic_us()
    hub = request.app[HUB]
    cfg = request.app[CONFIG]
    gains = request.app[GAINS]
    connected = {link.endpoint_id: link.as_dict(now) for link in hub.links()}
    supervisor = request.app.get(SUPERVISOR)
    items = []
    for ep in cfg.endpoints:
        entry: dict[str, Any] = {"endpoint_id": ep.id, "allowed_zones": ep.zones}
        entry.update(gains.as_dict("endpoint", ep.id))
        if supervisor is not None:
            entry["supervision"] = supervisor.status(ep.id)
        entry["connected"] = ep.id in connected
        entry["audio_output"] = None  # what a connected endpoint reports (status message)
        if ep.id in connected:
            entry.update(connected[ep.id])
        items.append(entry)
    return items


@requires(Role.VIEWER)
async def list_events(request: web.Request) -> web.Response:
    """Events (endpoint faults and recoveries, coverage faults, ...), oldest first.

    ``?since=`` (ISO 8601): from then on; else the newest ``?limit=`` (default 100).
    """
    try:
        limit, since = _listing_query(request, default_limit=100)
    except _Invalid as exc:
        return _invalid_query(exc)
    log_ = request.app.get(EVENTS)
    if log_ is not None:
        try:
            events = await log_.list(since=since, limit=limit)
        except StoreError as exc:
            log.error("events cannot be read: %s", exc)
            return _error(503, "store_unavailable", "events cannot be read from the store")
        return web.json_response({"events": [e.as_dict() for e in events]})
    supervisor = request.app.get(SUPERVISOR)
    found = supervisor.events(limit) if supervisor is not None else []
    return web.json_response({"events": [e.as_dict() for e in found]})


def _invalid_query(exc: _Invalid) -> web.Response:
    return _error(
        422,
        "validation_failed",
        "invalid query",
        fields=[{"field": exc.field, "message": str(exc)}],
    )


@requires(PUBLIC)
async def readiness_route(request: web.Request) -> web.Response:
    """GET /readyz: 200 when ready; 503 with the reasons when not."""
    checks = request.app.get(READINESS)
    reasons = checks.reasons() if checks is not None else []
    if reasons:
        return web.json_response({"ready": False, "reasons": reasons}, status=503)
    return web.json_response({"ready": True, "reasons": []})


@requires(Role.VIEWER)
async def _metrics_route(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text exposition of the service's registry."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return web.Response(
        body=generate_latest(request.app[METRICS].registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


@requires(Role.VIEWER)
async def list_zones(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    arbiter = request.app[ANNOUNCER].arbiter
    cfg = request.app[CONFIG]
    gains = request.app[GAINS]
    zones = [
        {
            "id": z.id,
            "name": z.name,
            "endpoints": hub.zone_members(z.id),
            "playing": arbiter.holder(z.id),
            **gains.as_dict("zone", z.id),
        }
        for z in cfg.zones
    ]
    names = {g.id: g.name for g in cfg.zone_groups}
    groups = [
        {
            "id": gid,
            "name": names.get(gid, "All zones" if gid == ALL_ZONES else None),
            "zones": list(members),
            "builtin": gid not in names,
        }
        for gid, members in cfg.groups.items()
    ]
    return web.json_response({"zones": zones, "groups": groups})


@requires(PUBLIC)
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
    # Still 200 (the process is alive); "status" says when the store cannot write,
    # or when the primary speech engine refuses our key.
    client_health = getattr(client, "health", None)
    status = "ok" if store is None or store.health.ok else "store_failing"
    if status == "ok" and getattr(client_health, "authenticated", None) is False:
        status = "speech_failing"
    speech: dict[str, object] = {
        "engine": announcer.engine.name,
        "fallback_engine": fallback.name if fallback is not None else None,
        # the last announcement's speech fell back, and why (None: it did not)
        "fallback_active": announcer.speech_fallback_reason is not None,
        "fallback_reason": announcer.speech_fallback_reason,
    }
    if client_health is not None:
        speech.update(client_health.as_dict())
    return web.json_response(
        {
            "status": status,
            "store": store_health,
            "engine": announcer.engine.name,
            "fallback_engine": fallback.name if fallback is not None else None,
            "engine_connected": getattr(client, "connected", None),
            "speech": speech,
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
    limiter: FailureLimiter | None = None,
    events: EventLog | None = None,
    metrics: ServiceMetrics | None = None,
    readiness: Readiness | None = None,
    origins: OriginPolicy | None = None,
    templates: TemplateLibrary | None = None,
    gains: Gains | None = None,
) -> web.Application:
    quiet_bad_requests()  # an unparsable request is one WARNING line, not a traceback
    """The API. Every route declares its role with ``@requires`` (undeclared: admin only)."""
    app = web.Application(
        middlewares=[_errors, access_middleware], client_max_size=config.limits.max_body_bytes
    )
    access = Access.from_config(config, clock=clock, store=store, limiter=limiter, origins=origins)
    app[ACCESS] = access
    app.cleanup_ctx.append(access.audit.context)
    if supervisor is not None:
        app[SUPERVISOR] = supervisor
    if events is not None:
        app[EVENTS] = events
    if readiness is not None:
        app[READINESS] = readiness
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get("/metrics", _metrics_route)
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
    if templates is None:
        templates = runner.templates if runner is not None else TemplateLibrary(config, store)
    app[TEMPLATES] = templates
    app[GAINS] = gains if gains is not None else (announcer.gains or Gains(config))
    app[ANNOUNCER] = announcer
    app[HUB] = hub
    app[CLOCK] = clock
    app.router.add_post("/v1/announcements", create_announcement)
    app.router.add_post("/v1/preview", preview_announcement)
    app.router.add_get("/v1/announcements", list_announcements)
    app.router.add_get("/v1/announcements/{id}", get_announcement)
    app.router.add_post("/v1/announcements/{id}/cancel", cancel_announcement)
    app.router.add_post("/v1/triggers/{template}", trigger_template)
    app.router.add_get("/v1/endpoints", list_endpoints)
    app.router.add_get("/v1/zones", list_zones)
    app.router.add_get("/v1/events", list_events)
    app.router.add_post("/v1/zones/{id}/silence", silence_zone)
    app.router.add_put("/v1/zones/{id}/gain", set_zone_gain)
    app.router.add_put("/v1/endpoints/{id}/gain", set_endpoint_gain)
    app.router.add_get("/v1/templates", list_templates)
    app.router.add_post("/v1/templates", create_template)
    app.router.add_get("/v1/templates/{template}", get_template)
    app.router.add_put("/v1/templates/{template}", update_template)
    app.router.add_delete("/v1/templates/{template}", delete_template)
    app.router.add_get("/v1/audit", list_audit)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", readiness_route)
    app.router.add_get(OPENAPI_PATH, serve_document)
    from .paging import PAGING_PATH, paging_uplink, replay_page  # (it imports this module)

    app.router.add_get(PAGING_PATH, paging_uplink)
    app.router.add_post("/v1/announcements/{id}/replay", replay_page)
    add_pages(app, config)
    from .console import add_console  # it reads this module's keys

    add_console(app, clock)
    return app
