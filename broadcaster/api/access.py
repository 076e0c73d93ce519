"""The HTTP adapter of broadcaster.auth: the access middleware and the audit writer.

Every request passes, in this order: the Host check (421), the Origin check
(403), CORS preflight refusal (405), then — except on routes declared public —
the failed-attempt limit per source address (429), the bearer token (401) and
the route's declared role (403); a POST body must be JSON (415). The handler
then applies finer rules (priority band, zones, ownership) with the principal
the middleware put in ``request[PRINCIPAL]``.

Routes declare their role with :func:`requires`; a route that declares nothing
needs ``admin`` (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from broadcaster.auth import (
    FailureLimiter,
    OriginPolicy,
    Principal,
    Refusal,
    Role,
    TokenTable,
    allowed_hosts,
    bearer_token,
    host_allowed,
    may_call,
    origin_allowed,
    source_key,
)
from broadcaster.clock import Clock, SystemClock, within_us
from broadcaster.config import Config
from broadcaster.store import AsyncStore, AuditRow

log = logging.getLogger(__name__)
audit_log = logging.getLogger("broadcaster.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_F = TypeVar("_F", bound=Callable[..., Any])

#: Set by handlers for the audit entry: the id of what the call created, and a detail.
AUDIT_CREATED: web.RequestKey[str] = web.RequestKey("audit_created", str)
AUDIT_DETAIL: web.RequestKey[str] = web.RequestKey("audit_detail", str)
#: The authenticated caller (set on every route that is not public).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)

#: Declared on a handler by :func:`requires`: a Role, or PUBLIC.
_ROLE_ATTR = "__broadcaster_role__"
PUBLIC = "public"

#: While the store fails, queued audit entries are retried this often.
_AUDIT_RETRY_US = 1_000_000

#: Methods that do not change state (audited only when refused).
_READ_METHODS = frozenset({"GET", "HEAD"})
#: Statuses of refused calls, audited whatever the method.
_REFUSED = frozenset({401, 403, 421, 429})
_JSON_TYPES = frozenset({"application/json"})


def requires(role: Role | str) -> Callable[[_F], _F]:
    """Declare the least role a route needs (``Role.VIEWER``…), or ``PUBLIC`` for no token."""

    def mark(handler: _F) -> _F:
        setattr(handler, _ROLE_ATTR, role)
        return handler

    return mark


def declared_role(request: web.Request) -> Role | str:
    match = request.match_info
    if match.http_exception is not None:
        return Role.VIEWER  # no such route / method: any valid token gets the 404/405
    role: Role | str = getattr(match.route.handler, _ROLE_ATTR, Role.ADMIN)
    return role


class AuditWriter:
    """Audit entries to the log (at once) and to the store (by one owned task, bounded).

    The request that an entry describes never waits for the store: ``record``
    only appends to a queue of ``limit`` entries; when it is full the entry is
    dropped and counted (the log line is still written). A failing store is
    logged at error and the batch is dropped; requests go on.
    """

    def __init__(self, store: AsyncStore | None, *, limit: int, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._store = store
        self._queue: deque[AuditRow] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed_writes = 0
        self._failing = False

    def record(self, row: AuditRow) -> None:
        audit_log.info(
            "audit: %s %r %s %s by %r (%s) from %r target=%r created=%r%s",
            row.method,
            row.path,
            row.status,
            "refused" if row.status in _REFUSED else "done",
            row.principal_id,
            row.role,
            row.source,
            row.target_id,
            row.created_id,
            f" detail={row.detail!r}" if row.detail else "",
        )
        if self._store is None:
            return
        if len(self._queue) >= self._limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit queue full: %d entries not stored so far", self.dropped)
            return
        self._queue.append(row)
        self._wake.set()

    async def _drain(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if not await self._write_batch():
                await self._clock.sleep_us(_AUDIT_RETRY_US)

    async def _write_batch(self) -> bool:
        """Write the oldest entries; False when the store failed (they stay queued)."""
        if self._store is None or not self._queue:
            return True
        batch = [self._queue.popleft() for _ in range(min(200, len(self._queue)))]
        try:
            await self._store.insert_audit(batch)
        except Exception as exc:
            self.failed_writes += len(batch)
            self._queue.extendleft(reversed(batch))  # kept in order, retried
            if not self._failing:
                log.error(
                    "audit: %d entries could not be stored (kept, retried every second): %s",
                    len(batch),
                    exc,
                )
            self._failing = True
            return False
        if self._failing:
            log.warning("audit: entries are stored again")
            self._failing = False
        return True

    async def flush(self) -> None:
        """Write what is queued; stops at the first failure (the writer task retries)."""
        while self._queue:
            if not await self._write_batch():
                return

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: owns the drain task for the app's lifetime."""
        self._task = asyncio.create_task(self._drain(), name="audit-writer")
        try:
            yield
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(Exception):  # a stuck store cannot hold up a stop
                await within_us(self._clock, self.flush(), 5_000_000)


@dataclass
class Access:
    """What the middleware needs, built from the config."""

    tokens: TokenTable
    limiter: FailureLimiter
    hosts: frozenset[str]
    origins: OriginPolicy
    clock: Clock
    audit: AuditWriter

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        clock: Clock,
        store: AsyncStore | None,
        limiter: FailureLimiter | None = None,
        origins: OriginPolicy | None = None,
    ) -> Access:
        a = config.auth
        return cls(
            # A token limited to a zone group is limited to the group's zones.
            tokens=TokenTable(
                t
                if t.zones is None
                else t.model_copy(update={"zones": config.expand_zones(t.zones)})
                for t in config.api_tokens
            ),
            limiter=limiter if limiter is not None else limiter_from_config(config),
            hosts=allowed_hosts(a.public_hosts, config.server.http_host),
            origins=origins if origins is not None else OriginPolicy(a.allowed_origins),
            clock=clock,
            audit=AuditWriter(store, limit=a.audit_queue_limit, clock=clock),
        )


def limiter_from_config(config: Config) -> FailureLimiter:
    a = config.auth
    return FailureLimiter(
        burst=a.failed_attempts_burst,
        refill_us=int(a.failed_attempts_refill_s * 1_000_000),
        max_sources=a.failed_attempts_max_sources,
    )


ACCESS: web.AppKey[Access] = web.AppKey("access", Access)


def refusal_response(refusal: Refusal, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(refusal.as_dict(), status=refusal.status, headers=headers)


def _target(request: web.Request) -> str | None:
    info = request.match_info
    for key in ("id", "template"):
        if key in info:
            return info[key]
    return None


def audit(
    request: web.Request, status: int, *, principal: Principal | None, detail: str | None
) -> None:
    access = request.app[ACCESS]
    now: datetime = access.clock.wall()
    created = request.get(AUDIT_CREATED)
    access.audit.record(
        AuditRow(
            at=now,
            principal_id=principal.id if principal else None,
            role=principal.role if principal else None,
            source=request.remote,
            method=request.method,
            path=request.path,
            target_id=_target(request),
            status=status,
            created_id=created,
            detail=detail,
        )
    )


def _content_type_ok(request: web.Request) -> bool:
    # An empty body (cancel, pause: nothing to send) may carry any type or none;
    # a body must be JSON, so a form or text/plain post from a page is refused.
    return not request.body_exists or request.content_type in _JSON_TYPES


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = request.app[ACCESS]
    if not host_allowed(request.headers.get("Host"), access.hosts):
        return _refuse(
            request,
            Refusal(
                421,
                "misdirected_request",
                f"Host {request.headers.get('Host', '(none)')!r} is not a name of this service "
                "(add it to [auth] public_hosts)",
            ),
        )
    if not origin_allowed(request.headers.get("Origin"), access.origins):
        return _refuse(
            request,
            Refusal(
                403,
                "origin_not_allowed",
                f"Origin {request.headers['Origin']!r} may not call this API "
                "(add it to [auth] allowed_origins)",
            ),
        )
    if request.method == "OPTIONS":
        return _refuse(
            request,
            Refusal(405, "cors_closed", "cross-origin requests are not allowed (CORS is closed)"),
            audit_it=False,
        )
    needs = declared_role(request)
    principal: Principal | None = None
    if needs != PUBLIC:
        source = source_key(request.remote)
        now_us = access.clock.monotonic_us()
        wait_us = access.limiter.retry_after_us(source, now_us)
        if wait_us:
            return _too_many(request, wait_us)
        header = request.headers.get("Authorization")
        token = bearer_token(header)
        principal = access.tokens.authenticate(token) if token is not None else None
        if principal is None:
            if header is not None:  # a guess (a missing header is not one)
                access.limiter.failure(source, now_us)
            message = (
                "missing bearer token (Authorization: Bearer <token>)"
                if header is None
                else "unknown or malformed bearer token"
            )
            challenge = 'Bearer realm="broadcaster"'
            if header is not None:
                challenge += ', error="invalid_token"'  # RFC 6750 section 3.1
            return _refuse(
                request,
                Refusal(401, "unauthorized", message),
                headers={"WWW-Authenticate": challenge},
            )
        request[PRINCIPAL] = principal
        assert isinstance(needs, Role)
        refusal = may_call(principal, needs, f"{request.method} {request.path}")
        if refusal is not None:
            return _refuse(request, refusal, principal=principal)
    if request.method not in _READ_METHODS and not _content_type_ok(request):
        return _refuse(
            request,
            Refusal(
                415,
                "unsupported_media_type",
                f"request bodies must be application/json, not "
                f"{request.headers.get('Content-Type', '(none)')!r}",
            ),
            principal=principal,
        )
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if request.method not in _READ_METHODS or status in _REFUSED:
            audit(request, status, principal=principal, detail=request.get(AUDIT_DETAIL))


def _refuse(
    request: web.Request,
    refusal: Refusal,
    *,
    principal: Principal | None = None,
    headers: dict[str, str] | None = None,
    audit_it: bool = True,
) -> web.Response:
    if audit_it:
        audit(request, refusal.status, principal=principal, detail=refusal.message)
    return refusal_response(refusal, headers)


def _too_many(request: web.Request, wait_us: int) -> web.Response:
    seconds = max(1, math.ceil(wait_us / 1_000_000))
    return _refuse(
        request,
        Refusal(
            429,
            "too_many_failed_attempts",
            f"too many failed authentications from your address; retry in {seconds} s",
        ),
        headers={"Retry-After": str(seconds)},
    )
