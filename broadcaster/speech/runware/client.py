"""An asyncio client for Runware's task API: one persistent WebSocket, REST as fallback.

Why our own client and not Runware's SDKs: the SDKs poll by default (a second
of added latency per utterance), cap inbound frames at 1 MiB (a base64 WAV
is larger), and fail every task in flight on an error that names none. This
client keeps one authenticated WebSocket, resumes its session after a drop
(results finished meanwhile are replayed, nothing is resubmitted or paid for
twice), matches answers by ``taskUUID``, bounds the tasks in flight, gives
every attempt a deadline, retries only errors that may pass, and falls back
to REST when the WebSocket cannot be established.

Time is read through the injected clock; the websockets library's own open
and close timeouts are the only real-time waits left to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from broadcaster.clock import Clock
from broadcaster.speech.runware.errors import ErrorCategory, RunwareError, error_from_item
from broadcaster.speech.runware.schema import (
    AudioInferenceTask,
    AudioResult,
    DeliveryMethod,
    authentication_task,
    get_response_task,
    parse_audio_result,
    ping_task,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClientSettings:
    api_key: str
    ws_url: str = "wss://ws-api.runware.ai/v1"
    rest_url: str = "https://api.runware.ai/v1"
    connect_timeout_s: float = 10.0
    auth_timeout_s: float = 15.0
    #: JSON ping interval; the server closes links idle for 120 s.
    ping_interval_s: float = 30.0
    #: No inbound frame for this long: the link is dead, reconnect.
    inactivity_timeout_s: float = 100.0
    #: The server keeps undelivered results this long for a resumed session.
    resume_window_s: float = 120.0
    max_in_flight: int = 8
    #: Deadline of one attempt of one task.
    task_timeout_s: float = 60.0
    max_attempts: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    poll_initial_s: float = 1.0
    poll_max_s: float = 10.0
    download_timeout_s: float = 30.0


#: (task id, cost or None) for every task the provider may bill.
BillSink = Callable[[str, float | None], None]
#: (kind, severity, detail) of a fault or recovery, for the service's event log.
FaultSink = Callable[[str, str, str], None]

#: Abandoned tasks whose late answers are still counted (oldest forgotten first).
_ABANDONED_LIMIT = 1024
#: Frames at least this long are parsed off the event loop.
_PARSE_IN_THREAD_BYTES = 64 * 1024


@dataclass
class ClientHealth:
    """What the client knows about its link, for /healthz and /readyz."""

    connected: bool = False
    #: None: not tried yet; False: the key was refused.
    authenticated: bool | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    #: Why tasks go over REST instead of the WebSocket (None: they do not).
    rest_fallback: str | None = None
    #: The WebSocket can never work with this config (e.g. an invalid URL).
    ws_disabled: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "authenticated": self.authenticated,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "rest_fallback": self.rest_fallback,
            "ws_disabled": self.ws_disabled,
        }


@dataclass(eq=False)
class _Pending:
    """A task sent and not yet answered."""

    task_uuid: str
    expected: int
    future: asyncio.Future[list[AudioResult]]
    via_ws: bool
    results: dict[str, AudioResult] = field(default_factory=dict)
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # any item seen (polls)
    #: The task as sent, to resubmit it unchanged if the server never got it.
    wire: dict[str, Any] = field(default_factory=dict)
    #: Which WebSocket link it was sent on (see ``RunwareClient._link``).
    link: int = 0
    #: Asked with getResponse after a resume; a "not found" answer means resubmit.
    reconciling: bool = False
    bill: BillSink | None = None
    #: Where a fault this task went through is told (the announcement's record).
    note: Callable[[str], None] | None = None


class RunwareClient:
    def __init__(
        self, settings: ClientSettings, *, clock: Clock, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._rng = rng or random.Random()
        self._pending: dict[str, _Pending] = {}
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        #: Set while the link is up or known down (an attempt failed); clear while the
        #: first connection or a resume after a drop is under way: tasks wait for it.
        self._first_try = asyncio.Event()
        self._session_uuid: str | None = None
        self._dropped_at_us: int | None = None
        self._ws_failures = 0  # consecutive failures to establish the WebSocket
        self._auth_error: RunwareError | None = None
        self._last_rx_us = 0
        self._auth_waiter: asyncio.Future[str] | None = None
        self._conn_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._link = 0  # number of the current WebSocket link (one per authentication)
        self._resend: list[_Pending] = []  # found unknown by the server: sent again
        #: Tasks given up on (timeout, cancelled): their late results are still billed.
        self._abandoned: OrderedDict[str, BillSink] = OrderedDict()
        self.health = ClientHealth()
        self._fault_sink: FaultSink | None = None
        #: Counters for the operator and the tests.
        self.stats: dict[str, int] = {
            "ws_connects": 0,
            "ws_resumes": 0,
            "sessions_lost": 0,
            "tasks_ws": 0,
            "tasks_rest": 0,
            "retries": 0,
            "unroutable_errors": 0,
            "reconciled": 0,
            "resubmitted": 0,
        }

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._conn_task = asyncio.create_task(self._connection_loop(), name="runware-ws")
        self._conn_task.add_done_callback(self._connection_ended)

    def set_fault_sink(self, sink: FaultSink | None) -> None:
        """Where faults go (the service's event log); a fault already known is sent now."""
        self._fault_sink = sink
        if sink is not None and self.health.last_error is not None:
            self._report("runware_fault", "error", self.health.last_error)

    def _report(self, kind: str, severity: str, detail: str) -> None:
        if self._fault_sink is not None:
            try:
                self._fault_sink(kind, severity, detail)
            except Exception:  # a broken sink must not stop the client
                log.exception("runware fault sink failed")

    def _fault(self, detail: str, *, event: bool = True) -> None:
        self.health.last_error = detail
        self.health.last_error_at = self.clock.wall()
        if event:
            self._report("runware_fault", "error", detail)

    def _connection_ended(self, task: asyncio.Task[None]) -> None:
        """The connection task never ends by itself; if it does, say so at once."""
        self._first_try.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and self.health.ws_disabled:
            return  # a config error, already logged and reported
        why = f"WebSocket task ended: {exc!r}" if exc else "WebSocket task ended"
        log.error("runware %s; tasks go over REST", why, exc_info=exc)
        self.health.connected = False
        self.health.ws_disabled = self.health.ws_disabled or why
        self.health.rest_fallback = why
        self._ws_failures = max(1, self._ws_failures)
        self._fault(why)

    async def aclose(self) -> None:
        if self._conn_task is not None:
            self._conn_task.cancel()
            # An exception it ended with was logged and reported when it ended
            # (_connection_ended): no traceback at shutdown.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._conn_task
            self._conn_task = None
        closed = RunwareError(ErrorCategory.CONNECTION, "client closed")
        for entry in list(self._pending.values()):
            if not entry.future.done():
                entry.future.set_exception(closed)
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session_uuid(self) -> str | None:
        return self._session_uuid

    # --- running tasks --------------------------------------------------------------------

    async def run(
        self,
        task: AudioInferenceTask,
        *,
        deadline_us: int | None = None,
        bill: BillSink | None = None,
        note: Callable[[str], None] | None = None,
    ) -> list[AudioResult]:
        """Run one audioInference task; retry what may pass, with a fresh taskUUID each time.

        Raises :class:`RunwareError` (never retried: validation, auth, quota, safety,
        not found; retried until ``max_attempts`` or ``deadline_us``: provider,
        timeout, rate limit, server and connection errors).
        """
        s = self.settings
        attempt = 0
        current = task
        while True:
            attempt += 1
            try:
                return await self._attempt(current, deadline_us, bill, note)
            except RunwareError as exc:
                now = self.clock.monotonic_us()
                if not exc.retryable or attempt >= s.max_attempts:
                    raise
                delay_us = self._backoff_us(attempt)
                if deadline_us is not None and now + delay_us >= deadline_us:
                    raise
                self.stats["retries"] += 1
                log.warning(
                    "runware task %s failed (%s); retry %d in %.2f s",
                    current.taskUUID,
                    exc,
                    attempt,
                    delay_us / 1e6,
                )
                await self.clock.sleep_us(delay_us)
                # A fresh id: the failed one may still be known to the server.
                current = current.model_copy(update={"taskUUID": str(uuid.uuid4())})

    async def download(self, url: str) -> bytes:
        """Fetch an audio URL result (two tries; connection and 5xx errors are retried)."""
        assert self._http is not None, "start() first"
        timeout = aiohttp.ClientTimeout(total=self.settings.download_timeout_s)
        last: RunwareError | None = None
        for _ in range(2):
            try:
                async with self._http.get(url, timeout=timeout) as resp:
                    if resp.status == 200:
                        return await resp.read()
                    last = RunwareError(
                        ErrorCategory.SERVER_ERROR
                        if resp.status >= 500
                        else ErrorCategory.NOT_FOUND,
                        f"download of {url} answered HTTP {resp.status}",
                        http_status=resp.status,
                    )
                    if resp.status < 500:
                        raise last
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = RunwareError(ErrorCategory.CONNECTION, f"download of {url}: {exc}")
        assert last is not None
        raise last

    def _backoff_us(self, attempt: int) -> int:
        s = self.settings
        base = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1))
        # "Equal jitter": at least half the backoff, so retries of many tasks spread out.
        return int(base * (0.5 + self._rng.random() / 2) * 1e6)

    async def _attempt(
        self,
        task: AudioInferenceTask,
        deadline_us: int | None,
        bill: BillSink | None = None,
        note: Callable[[str], None] | None = None,
    ) -> list[AudioResult]:
        s = self.settings
        now = self.clock.monotonic_us()
        attempt_deadline = now + int(s.task_timeout_s * 1e6)
        if deadline_us is not None:
            attempt_deadline = min(attempt_deadline, deadline_us)
        async with self._slots:
            if self._auth_error is not None:
                raise self._auth_error
            if not self._connected.is_set() and self._ws_failures == 0:
                # The first connection may still be opening: give it its chance.
                wait_until = min(attempt_deadline, now + int(s.connect_timeout_s * 1e6))
                with contextlib.suppress(TimeoutError):
                    await self._until(self._first_try.wait(), wait_until)
            if self._auth_error is not None:
                raise self._auth_error
            if self._connected.is_set():
                return await self._attempt_ws(task, attempt_deadline, bill, note)
            return await self._attempt_rest(task, attempt_deadline, bill)

    async def _attempt_ws(
        self,
        task: AudioInferenceTask,
        deadline_us: int,
        bill: BillSink | None = None,
        note: Callable[[str], None] | None = None,
    ) -> list[AudioResult]:
        ws = self._ws
        assert ws is not None
        entry = self._register(task, via_ws=True, bill=bill)
        entry.note = note
        sent = False
        try:
            try:
                entry.link = self._link
                await ws.send(json.dumps([entry.wire]))
            except ConnectionClosed as exc:
                raise RunwareError(
                    ErrorCategory.CONNECTION, f"WebSocket closed while sending: {exc}"
                ) from None
            sent = True
            self.stats["tasks_ws"] += 1
            if task.deliveryMethod == DeliveryMethod.ASYNC:
                return await self._poll(entry, deadline_us, via_ws=True)
            return await self._wait_result(entry, deadline_us)
        finally:
            self._settle(entry, sent)

    async def _attempt_rest(
        self, task: AudioInferenceTask, deadline_us: int, bill: BillSink | None = None
    ) -> list[AudioResult]:
        entry = self._register(task, via_ws=False, bill=bill)
        try:
            self.stats["tasks_rest"] += 1
            body = await self._rest_post([entry.wire], deadline_us)
            self._dispatch(body)
            if task.deliveryMethod == DeliveryMethod.ASYNC and not entry.future.done():
                return await self._poll(entry, deadline_us, via_ws=False)
            return await self._wait_result(entry, deadline_us)
        finally:
            self._settle(entry, True)

    def _register(
        self, task: AudioInferenceTask, *, via_ws: bool, bill: BillSink | None = None
    ) -> _Pending:
        entry = _Pending(
            task_uuid=task.taskUUID,
            expected=task.numberResults or 1,
            future=asyncio.get_running_loop().create_future(),
            via_ws=via_ws,
            wire=task.to_wire(),
            bill=bill,
        )
        self._pending[entry.task_uuid] = entry
        return entry

    def _settle(self, entry: _Pending, sent: bool) -> None:
        """The attempt is over. A task sent and left unanswered (timed out, cancelled,
        superseded) may still be billed: it is counted now, and a late result adds its
        cost."""
        self._pending.pop(entry.task_uuid, None)
        if not sent or entry.bill is None:
            return
        done_ok = entry.future.done() and not entry.future.cancelled()
        if done_ok and entry.future.exception() is not None:
            return  # the server refused or failed it: not billed
        if not entry.results:
            entry.bill(entry.task_uuid, None)
            self._abandoned[entry.task_uuid] = entry.bill
            while len(self._abandoned) > _ABANDONED_LIMIT:
                self._abandoned.popitem(last=False)

    async def _wait_result(self, entry: _Pending, deadline_us: int) -> list[AudioResult]:
        try:
            return await self._until(asyncio.shield(entry.future), deadline_us)
        except TimeoutError:
            raise RunwareError(
                ErrorCategory.TIMEOUT,
                f"no result for task {entry.task_uuid} before its deadline",
                task_uuid=entry.task_uuid,
            ) from None

    async def _poll(self, entry: _Pending, deadline_us: int, *, via_ws: bool) -> list[AudioResult]:
        """Async delivery: ask getResponse, backing off, until the task succeeds or fails."""
        s = self.settings
        delay_s = s.poll_initial_s
        while not entry.future.done():
            wake = min(deadline_us, self.clock.monotonic_us() + int(delay_s * 1e6))
            with contextlib.suppress(TimeoutError):
                await self._until(asyncio.shield(entry.future), wake)
            if entry.future.done():
                break
            if self.clock.monotonic_us() >= deadline_us:
                return await self._wait_result(entry, deadline_us)  # raises the timeout
            poll = [get_response_task(entry.task_uuid)]
            if via_ws and self._ws is not None and self._connected.is_set():
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(json.dumps(poll))
            else:
                self._dispatch(await self._rest_post(poll, deadline_us))
            delay_s = min(s.poll_max_s, max(0.5, delay_s * 1.5))
        return entry.future.result()

    async def _rest_post(self, tasks: list[dict[str, Any]], deadline_us: int) -> Any:
        assert self._http is not None, "start() first"
        remaining_s = max(0.001, (deadline_us - self.clock.monotonic_us()) / 1e6)
        try:
            async with self._http.post(
                self.settings.rest_url,
                json=tasks,
                headers={"Authorization": f"Bearer {self.settings.api_key}"},
                timeout=aiohttp.ClientTimeout(total=remaining_s),
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status >= 400:
                    items = (body or {}).get("errors") or (body or {}).get("error")
                    if isinstance(items, list) and items:
                        raise error_from_item(items[0], http_status=resp.status)
                    raise error_from_item(
                        {"code": f"http{resp.status}", "message": f"HTTP {resp.status}"},
                        http_status=resp.status,
                    )
                return body
        except TimeoutError:
            raise RunwareError(ErrorCategory.TIMEOUT, "REST request timed out") from None
        except aiohttp.ClientError as exc:
            raise RunwareError(ErrorCategory.CONNECTION, f"REST request failed: {exc}") from None

    # --- the WebSocket link ---------------------------------------------------------------

    async def _connection_loop(self) -> None:
        try:
            parse_uri(self.settings.ws_url)
        except (InvalidURI, ValueError) as exc:
            # A config error: retrying cannot help. Tasks go over REST from now on.
            why = f"invalid speech.runware.ws_url {self.settings.ws_url!r}: {exc}"
            log.error("runware WebSocket disabled: %s; tasks go over REST", why)
            self.health.ws_disabled = why
            self.health.rest_fallback = why
            self._ws_failures += 1
            self._fault(why)
            return
        attempt = 0
        while True:
            try:
                async with connect(
                    self.settings.ws_url,
                    max_size=None,  # base64 WAV results are megabytes
                    ping_interval=None,  # Runware documents JSON pings; we send those
                    compression=None,
                    open_timeout=self.settings.connect_timeout_s,
                    close_timeout=2,
                ) as ws:
                    self.stats["ws_connects"] += 1
                    resumed = await self._authenticate(ws)
                    attempt = 0
                    self._ws_failures = 0
                    self._link += 1
                    self._ws = ws
                    self._connected.set()
                    self._first_try.set()
                    if self.health.rest_fallback or self.health.authenticated is False:
                        self._report("runware_recovered", "warning", "WebSocket connected")
                    self.health.connected = True
                    self.health.authenticated = True
                    self.health.rest_fallback = None
                    await self._serve(ws, reconcile=resumed)
            except asyncio.CancelledError:
                raise
            except RunwareError as exc:
                if not exc.retryable:
                    # A wrong key will not fix itself, but it may be rotated: keep
                    # trying slowly, and fail every task meanwhile with the reason.
                    first = self._auth_error is None
                    self._auth_error = exc
                    self.health.authenticated = False
                    log.error("runware authentication failed: %s", exc)
                    self._fault(f"authentication failed ({exc})", event=first)
                    for entry in list(self._pending.values()):
                        if not entry.future.done():
                            entry.future.set_exception(exc)
                else:
                    self._fault(f"WebSocket: {exc}", event=False)
                self._ws_failures += 1
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                if self._ws is not None:
                    # An established link dropped: it resumes at once (tasks in flight
                    # are reconciled), so it is the last error, not a REST fallback;
                    # new tasks wait for the resume (up to connect_timeout_s).
                    log.warning("runware link dropped: %s; resuming", exc)
                    self._fault(f"WebSocket dropped: {exc}", event=False)
                else:
                    first = self._ws_failures == 0
                    self._ws_failures += 1
                    log.warning("runware WebSocket unavailable: %s", exc)
                    self.health.rest_fallback = f"WebSocket unavailable: {exc}"
                    self._fault(f"WebSocket unavailable: {exc}", event=first)
            finally:
                if self._ws is not None:
                    self._dropped_at_us = self.clock.monotonic_us()
                    self._first_try.clear()  # a link that was up: new tasks wait for it
                self._ws = None
                self._connected.clear()
                self.health.connected = False
                if self._ws_failures > 0:
                    self._first_try.set()  # known down: tasks go over REST
            attempt += 1
            await self.clock.sleep_us(self._backoff_us(attempt))

    async def _authenticate(self, ws: ClientConnection) -> bool:
        """Authenticate; True when the previous session was resumed."""
        s = self.settings
        resume = self._session_uuid
        if (
            resume is not None
            and self._dropped_at_us is not None
            and self.clock.monotonic_us() - self._dropped_at_us > int(s.resume_window_s * 1e6)
        ):
            resume = None  # too late: the server has discarded that session's results
        loop = asyncio.get_running_loop()
        self._auth_waiter = loop.create_future()
        await ws.send(json.dumps([authentication_task(s.api_key, resume)]))
        deadline = self.clock.monotonic_us() + int(s.auth_timeout_s * 1e6)
        reader = asyncio.create_task(self._read_until_auth(ws))
        try:
            session = await self._until(asyncio.shield(self._auth_waiter), deadline)
        except TimeoutError:
            raise RunwareError(ErrorCategory.TIMEOUT, "no authentication reply in time") from None
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader
            self._auth_waiter = None
        self._auth_error = None
        resumed = resume is not None and session == resume
        if resumed:
            self.stats["ws_resumes"] += 1
            log.info("runware session %s resumed", session)
        else:
            if self._session_uuid is not None:
                self.stats["sessions_lost"] += 1
                self._fail_ws_pending("the Runware session was lost; the task is resubmitted")
            log.info("runware session %s opened", session)
        self._session_uuid = session
        return resumed

    async def _read_until_auth(self, ws: ClientConnection) -> None:
        async for message in ws:
            self._last_rx_us = self.clock.monotonic_us()
            await self._receive(message)
            if self._auth_waiter is None or self._auth_waiter.done():
                return

    async def _serve(self, ws: ClientConnection, *, reconcile: bool = False) -> None:
        self._last_rx_us = self.clock.monotonic_us()
        pinger = asyncio.create_task(self._ping_loop(ws), name="runware-ping")
        try:
            if reconcile:
                await self._reconcile(ws)
            async for message in ws:
                self._last_rx_us = self.clock.monotonic_us()
                await self._receive(message)
                await self._flush_resends(ws)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _ping_loop(self, ws: ClientConnection) -> None:
        s = self.settings
        interval_us = int(s.ping_interval_s * 1e6)
        inactivity_us = int(s.inactivity_timeout_s * 1e6)
        next_ping = self.clock.monotonic_us() + interval_us
        while True:
            await self.clock.sleep_until_us(min(next_ping, self._last_rx_us + inactivity_us))
            now = self.clock.monotonic_us()
            if now - self._last_rx_us >= inactivity_us:
                log.warning("runware link silent for %.0f s; reconnecting", s.inactivity_timeout_s)
                await ws.close(1001, "inactivity")
                return
            if now >= next_ping:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps([ping_task()]))
                next_ping = now + interval_us

    def to_reconcile(self) -> list[_Pending]:
        """Tasks sent on an earlier link and still unanswered: after a resume, the
        server may have them (running, or finished and replayed) or may never have
        received them (sent into a dying socket). Only getResponse can tell."""
        return [
            e
            for e in self._pending.values()
            if e.via_ws and e.link < self._link and not e.future.done() and e.wire
        ]

    async def _reconcile(self, ws: ClientConnection) -> None:
        entries = self.to_reconcile()
        if not entries:
            return
        for entry in entries:
            entry.reconciling = True
        self.stats["reconciled"] += len(entries)
        log.info("runware resume: asking about %d task(s) in flight", len(entries))
        await ws.send(json.dumps([get_response_task(e.task_uuid) for e in entries]))

    async def _flush_resends(self, ws: ClientConnection) -> None:
        while self._resend:
            entry = self._resend.pop(0)
            if entry.future.done() or self._pending.get(entry.task_uuid) is not entry:
                continue
            entry.link = self._link
            self.stats["resubmitted"] += 1
            log.warning("runware task %s never reached the server; sent again", entry.task_uuid)
            if entry.note is not None:
                entry.note(
                    "runware connection dropped: a segment never reached the server "
                    "and was sent again after the session resumed"
                )
            await ws.send(json.dumps([entry.wire]))

    def _fail_ws_pending(self, why: str) -> None:
        for entry in list(self._pending.values()):
            if entry.via_ws and not entry.future.done():
                entry.future.set_exception(
                    RunwareError(ErrorCategory.CONNECTION, why, task_uuid=entry.task_uuid)
                )

    # --- dispatch -------------------------------------------------------------------------

    async def _receive(self, message: str | bytes) -> None:
        """Parse and dispatch one frame. A result frame carries megabytes of base64:
        it is parsed in a worker thread (awaited, so frames stay in order)."""
        if len(message) < _PARSE_IN_THREAD_BYTES:
            self._dispatch_text(message)
            return
        try:
            frame = await asyncio.to_thread(json.loads, message)
        except ValueError:
            log.warning("runware sent a frame that is not JSON; ignored")
            return
        self._dispatch(frame)

    def _dispatch_text(self, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
        except ValueError:
            log.warning("runware sent a frame that is not JSON; ignored")
            return
        self._dispatch(frame)

    def _dispatch(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        for item in frame.get("data") or []:
            if isinstance(item, dict):
                self._on_item(item)
        errors = frame.get("errors")
        if errors is None and frame.get("error") is not None:
            errors = [frame]  # legacy single-error shape
        if isinstance(errors, dict):
            errors = [errors]
        for item in errors or []:
            if isinstance(item, dict):
                self._on_error(item)

    def _on_item(self, item: dict[str, Any]) -> None:
        kind = item.get("taskType")
        if kind == "authentication":
            session = item.get("connectionSessionUUID")
            waiter = self._auth_waiter
            if waiter is not None and not waiter.done() and isinstance(session, str):
                waiter.set_result(session)
            return
        if kind == "ping":
            return
        task_uuid = item.get("taskUUID")
        entry = self._pending.get(task_uuid) if isinstance(task_uuid, str) else None
        if entry is None:
            sink = self._abandoned.pop(task_uuid, None) if isinstance(task_uuid, str) else None
            if sink is not None and isinstance(task_uuid, str):
                cost = item.get("cost")
                if isinstance(cost, int | float) and not isinstance(cost, bool):
                    sink(task_uuid, float(cost))  # a late answer: billed, not heard
                    return
                self._abandoned[task_uuid] = sink  # an ack or "processing": keep waiting
            log.debug("runware item for a task nobody waits for: %s", task_uuid)
            return
        entry.answered.set()
        entry.reconciling = False  # the server knows it
        if entry.future.done():
            return
        if item.get("status") == "error":
            entry.future.set_exception(error_from_item(item))
            return
        if not any(k in item for k in ("audioURL", "audioBase64Data", "audioDataURI")):
            return  # an acknowledgement, or a poll answer saying "processing"
        try:
            result = parse_audio_result(item)
        except RunwareError as exc:
            entry.future.set_exception(exc)
            return
        # Polls repeat finished items: keep one per generation.
        entry.results[result.audio_uuid or str(len(entry.results))] = result
        if entry.bill is not None:
            entry.bill(entry.task_uuid, result.cost)
        if len(entry.results) >= entry.expected:
            entry.future.set_result(list(entry.results.values()))

    def _on_error(self, item: dict[str, Any]) -> None:
        err = error_from_item(item)
        task_uuid = item.get("taskUUID")
        entry = self._pending.get(task_uuid) if isinstance(task_uuid, str) else None
        if entry is not None:
            if entry.reconciling and item.get("taskType") == "getResponse":
                entry.reconciling = False
                if err.category is ErrorCategory.NOT_FOUND:
                    # Never reached the server: the same task (same id) is sent again;
                    # it cannot be billed twice, the server never had it.
                    self._resend.append(entry)
                    return
            if not entry.future.done():
                entry.future.set_exception(err)
            return
        waiter = self._auth_waiter
        if (
            waiter is not None
            and not waiter.done()
            and item.get("taskType")
            in (
                None,
                "authentication",
            )
        ):
            waiter.set_exception(err)
            return
        # An error we cannot tie to a task fails nothing; it is logged for the operator.
        self.stats["unroutable_errors"] += 1
        log.warning("runware error not tied to any task: %s", err)

    # --- time -----------------------------------------------------------------------------

    async def _until(self, awaitable: Awaitable[T], deadline_us: int) -> T:
        """Await ``awaitable`` until ``deadline_us`` on the clock; TimeoutError after."""
        work: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        timer: asyncio.Future[None] = asyncio.ensure_future(self.clock.sleep_until_us(deadline_us))
        try:
            racers: set[asyncio.Future[Any]] = {work, timer}
            done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            timer.cancel()
            raise
        if work in done:
            timer.cancel()
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise TimeoutError
