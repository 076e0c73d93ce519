"""What the operator console needs from the API: ``GET /v1/me`` and ``GET /v1/stream``.

``/v1/stream`` is a server-sent event stream (``text/event-stream``) of the state
an operator watches: zones (what plays, what waits), endpoints (online, faulty,
format, round trip, sync error, last heard, audio output) and recent
announcements (state, per-endpoint receipts, per-zone coverage). A page reads it
with ``fetch()`` so that the ``Authorization`` header is sent (``EventSource``
cannot send one).

Design (docs/browser.md, "The console stream"):

* One :class:`ConsoleFeed` per service, driven by one owned task. While at least
  one client listens it builds the state every ``tick_us`` (250 ms) from the
  announcer, the hub and the supervisor and sends what changed since the last
  tick; with no client it sleeps. Polling the in-memory state keeps the engine
  untouched and bounds the rate: at most one event per item per tick. Counters
  that move all the time (round trip, last heard, bytes queued) are only
  compared every ``refresh_us`` (5 s), so an idle system is quiet.
* A client first gets ``snapshot`` (everything it may see), then ``zone``,
  ``endpoint`` and ``announcement`` events, each the whole new item (an upsert by
  id), and a comment line (``: heartbeat``) every ``heartbeat_us`` (15 s) of quiet.
* Each client has a bounded queue (``queue_limit`` events). A client too slow to
  take them loses its queue and gets a fresh ``snapshot`` (``"resync": true``)
  instead: the state, never a partial history. A write that does not finish
  within ``write_timeout_us`` (10 s) closes the stream. At most ``max_clients``
  streams at once (more: 503).
* A token limited to zones sees those zones, the endpoints allowed in one of
  them and the announcements that play in one of them.
* A client that goes away is noticed at the next write to it (a change, or the
  heartbeat: within 15 s), and its queue is dropped then.
* On shutdown every stream ends (the feed task is cancelled and each handler
  returns), so no stream holds up a stop.

The pure parts (:func:`diff`, :class:`Subscriber`, :func:`visible`) have no I/O
and are unit-tested; the handlers are thin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from broadcaster.auth import Principal, Role
from broadcaster.clock import Clock, wait_event_or_deadline, within_us
from broadcaster.model import AnnouncementState

from .access import PRINCIPAL, requires

log = logging.getLogger(__name__)

#: How many recent announcements the console is shown (newest first).
RECENT_LIMIT: Final = 30
#: Endpoint fields that move all the time: compared only every refresh.
VOLATILE: Final = frozenset(
    {
        "connected_s",
        "rtt_ms",
        "queued_audio_ms",
        "audio_sent",
        "last_heard_s",
        "dropped_stale",
        "dropped_overflow",
    }
)


class Me(BaseModel):
    """GET /v1/me: the caller's token id, role, zones (None: all) and priority ceiling."""

    id: str
    role: str
    zones: list[str] | None
    #: The highest priority this token may announce at (None: it may not announce).
    max_priority: int | None
    #: Where the emergency band starts (dispatcher and above only).
    emergency_priority: int


class ConsoleEvent(BaseModel):
    """One server-sent event of GET /v1/stream (as a client's SSE parser gives it)."""

    event: Literal["snapshot", "zone", "endpoint", "announcement"] = Field(
        description="snapshot: the whole state; the others: one item, to replace by id"
    )
    data: str = Field(description="a JSON object (the snapshot, or the item)")
    id: str | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One thing the console shows: its kind, the zones it concerns (None: all) and its body."""

    kind: str  # zone | endpoint | announcement
    key: str
    zones: frozenset[str] | None
    body: dict[str, Any]

    def stable(self) -> dict[str, Any]:
        return {k: v for k, v in self.body.items() if k not in VOLATILE}


State = dict[tuple[str, str], Item]


def diff(old: State, new: State, *, refresh: bool) -> list[Item]:
    """The items of ``new`` that are new or changed since ``old``, in ``new``'s order.

    Volatile fields (:data:`VOLATILE`) count only when ``refresh`` is true.
    """
    out = []
    for key, item in new.items():
        before = old.get(key)
        changed = (
            before is None
            or (refresh and before.body != item.body)
            or before.stable() != item.stable()
        )
        if changed:
            out.append(item)
    return out


def visible(principal: Principal, zones: frozenset[str] | None) -> bool:
    """Whether a token limited to zones sees an item concerning ``zones``."""
    if principal.zones is None or zones is None:
        return True
    return bool(principal.zones & zones)


@dataclass(slots=True, eq=False)  # compared (and hashed) by identity
class Subscriber:
    """One stream's bounded queue of events.

    Policy: when ``limit`` events wait already, the queue is emptied and the
    subscriber is marked ``resync``; its writer then sends a fresh snapshot
    (the whole state) instead of the lost changes. ``overflows`` counts that.
    """

    principal: Principal
    limit: int
    queue: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    resync: bool = False
    closed: bool = False
    overflows: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: str, body: dict[str, Any]) -> None:
        if self.closed:
            return
        if self.resync:
            return  # a snapshot is coming: it holds this change too
        if len(self.queue) >= self.limit:
            self.queue.clear()
            self.resync = True
            self.overflows += 1
        else:
            self.queue.append((event, body))
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def take(self) -> tuple[str, dict[str, Any]] | None:
        """The next queued event (None when empty)."""
        return self.queue.popleft() if self.queue else None


class ConsoleFeed:
    """Builds the console state while someone listens, and fans its changes out."""

    def __init__(
        self,
        build: Callable[[], State],
        clock: Clock,
        *,
        tick_us: int = 250_000,
        refresh_us: int = 5_000_000,
        heartbeat_us: int = 15_000_000,
        write_timeout_us: int = 10_000_000,
        queue_limit: int = 256,
        max_clients: int = 32,
    ) -> None:
        self.build = build
        self.clock = clock
        self.tick_us = tick_us
        self.refresh_us = refresh_us
        self.heartbeat_us = heartbeat_us
        self.write_timeout_us = write_timeout_us
        self.queue_limit = queue_limit
        self.max_clients = max_clients
        self.subscribers: set[Subscriber] = set()
        self._wake = asyncio.Event()
        self._previous: State | None = None
        self._refreshed_us = 0
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, principal: Principal) -> Subscriber | None:
        """A new stream's queue; None when ``max_clients`` streams are open."""
        if len(self.subscribers) >= self.max_clients:
            return None
        sub = Subscriber(principal, self.queue_limit)
        self.subscribers.add(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def snapshot(self, principal: Principal, state: State | None = None) -> dict[str, Any]:
        """Everything ``principal`` may see, now."""
        items = (state if state is not None else self.build()).values()
        out: dict[str, Any] = {
            "at": self.clock.wall().isoformat(),
            "zones": [],
            "endpoints": [],
            "announcements": [],
        }
        for item in items:
            if visible(principal, item.zones):
                out[item.kind + "s"].append(item.body)
        return out

    def step(self) -> int:
        """Build the state once and offer each change to the subscribers that may see it."""
        now = self.clock.monotonic_us()
        state = self.build()
        refresh = now - self._refreshed_us >= self.refresh_us
        if refresh:
            self._refreshed_us = now
        sent = 0
        if self._previous is not None:
            for item in diff(self._previous, state, refresh=refresh):
                for sub in self.subscribers:
                    if visible(sub.principal, item.zones):
                        sub.offer(item.kind, item.body)
                        sent += 1
        self._previous = state
        return sent

    async def run(self) -> None:
        while True:
            if not self.subscribers:
                self._previous = None  # stale once nobody watched: rebuilt, not diffed
                await wait_event_or_deadline(self.clock, self._wake, None)
                continue
            try:
                self.step()
            except Exception:  # a bug: said, and the feed goes on at the next tick
                log.exception("console feed: building the state failed")
            await self.clock.sleep_us(self.tick_us)

    def close(self) -> None:
        """End every stream (shutdown)."""
        for sub in list(self.subscribers):
            sub.close()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: owns the feed task for the app's lifetime."""
        self._task = asyncio.create_task(self.run(), name="console-feed")
        try:
            yield
        finally:
            self.close()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


FEED: web.AppKey[ConsoleFeed] = web.AppKey("console_feed", ConsoleFeed)


def max_priority(principal: Principal, emergency_priority: int) -> int | None:
    """The highest priority ``principal`` may announce at (None: it may not announce)."""
    if not principal.at_least(Role.OPERATOR):
        return None
    return 255 if principal.at_least(Role.DISPATCHER) else emergency_priority - 1


def _principal(request: web.Request) -> Principal:
    principal = request.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise RuntimeError(f"{request.path}: no principal")
    return principal


@requires(Role.VIEWER)
async def me(request: web.Request) -> web.Response:
    """GET /v1/me: who this token is and what it may do."""
    from .routes import CONFIG

    principal = _principal(request)
    emergency = request.app[CONFIG].announcements.emergency_priority
    return web.json_response(
        {
            "id": principal.id,
            "role": principal.role,
            "zones": sorted(principal.zones) if principal.zones is not None else None,
            "max_priority": max_priority(principal, emergency),
            "emergency_priority": emergency,
        }
    )


def _event(name: str, body: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


@requires(Role.VIEWER)
async def stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/stream: server-sent events of the console state (see the module doc)."""
    feed = request.app[FEED]
    principal = _principal(request)
    sub = feed.subscribe(principal)
    if sub is None:
        return web.json_response(
            {
                "error": "too_many_streams",
                "message": f"{feed.max_clients} console streams are open already; retry later",
            },
            status=503,
            headers={"Retry-After": "5"},
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    clock = feed.clock
    try:
        await response.prepare(request)

        async def send(chunk: bytes) -> None:
            await within_us(clock, response.write(chunk), feed.write_timeout_us)

        await send(b"retry: 2000\n\n" + _event("snapshot", feed.snapshot(principal)))
        while not sub.closed:
            if sub.resync:
                sub.resync = False
                await send(_event("snapshot", {**feed.snapshot(principal), "resync": True}))
                continue
            queued = sub.take()
            if queued is not None:
                await send(_event(*queued))
                continue
            deadline = clock.monotonic_us() + feed.heartbeat_us
            await wait_event_or_deadline(clock, sub.wake, deadline)
            if not sub.queue and not sub.resync and not sub.closed:
                await send(b": heartbeat\n\n")
    except TimeoutError:
        log.warning(
            "console stream of %s closed: a write took over %g s",
            principal.id,
            feed.write_timeout_us / 1e6,
        )
    except ConnectionResetError:  # the client left (noticed at the next write)
        pass
    finally:
        feed.unsubscribe(sub)
    return response


# --- the state ---------------------------------------------------------------------------------


def build_state(app: web.Application) -> State:
    """The console's items, from the announcer, hub and supervisor (in memory only)."""
    from .routes import ANNOUNCER, CONFIG, HUB, endpoint_entries

    cfg = app[CONFIG]
    announcer = app[ANNOUNCER]
    registry = announcer.registry
    hub = app[HUB]
    state: State = {}
    order = {ann_id: i for i, ann_id in enumerate(announcer.arbiter.queued())}
    waiting = sorted(
        (a for a in registry.unfinished() if a.state is AnnouncementState.QUEUED),
        key=lambda a: (order.get(a.id, len(order)), a.due_at.isoformat() if a.due_at else ""),
    )
    for z in cfg.zones:
        body = {
            "id": z.id,
            "name": z.name,
            "endpoints": hub.zone_members(z.id),
            "playing": announcer.arbiter.holder(z.id),
            "waiting": [a.id for a in waiting if z.id in a.spec.zones],
        }
        state[("zone", z.id)] = Item("zone", z.id, frozenset({z.id}), body)
    allowed = {ep.id: frozenset(ep.zones) for ep in cfg.endpoints}
    for entry in endpoint_entries(_Holder(app)):
        eid = str(entry["endpoint_id"])
        skew = announcer.playback_skew_us.get(eid)
        entry["sync_error_ms"] = None if skew is None else round(skew / 1000, 1)
        state[("endpoint", eid)] = Item("endpoint", eid, allowed.get(eid), entry)
    recent = registry.recent(RECENT_LIMIT)
    for ann in _unique(list(registry.unfinished()) + recent):
        state[("announcement", ann.id)] = Item(
            "announcement", ann.id, frozenset(ann.spec.zones), ann.as_dict()
        )
    return state


@dataclass(frozen=True, slots=True)
class _Holder:
    app: web.Application


def _unique(items: Iterable[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for item in items:
        seen.setdefault(item.id, item)
    return list(seen.values())


def add_console(app: web.Application, clock: Clock) -> None:
    """Register ``/v1/me`` and ``/v1/stream`` and the feed's task on the API app."""
    feed = ConsoleFeed(lambda: build_state(app), clock)
    app[FEED] = feed
    app.cleanup_ctx.append(feed.context)

    async def end_streams(_: web.Application) -> None:
        feed.close()

    app.on_shutdown.append(end_streams)
    app.router.add_get("/v1/me", me)
    app.router.add_get("/v1/stream", stream)
