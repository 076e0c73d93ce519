"""The live paging uplink: ``GET /v1/paging`` upgraded to a WebSocket (docs/paging.md).

A browser cannot set an Authorization header on a WebSocket, so the route is
public and the first message carries the token; the same token table, role and
zone rules, failed-attempt limiter, Host and Origin checks (the middleware, before
the upgrade) apply, and the outcome is audited like any call.

This is the thin async adapter: the audio's life is :class:`broadcaster.paging.LiveSource`
and the announcer's playout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broadcaster.announcements import Announcement, compose_spec, spoken_language
from broadcaster.announcer import QueueFull
from broadcaster.audio.decode import FrameDecoder
from broadcaster.audio.live_level import LiveLeveler
from broadcaster.auth import Principal, Role, may_announce, source_key
from broadcaster.clock import within_us
from broadcaster.journal import spec_from_json, spec_to_json
from broadcaster.model import PRIORITY_BANDS, AnnouncementSpec, Codec, StreamFormat
from broadcaster.paging import (
    KEEP_RECORDINGS,
    MAX_FRAME_MS,
    MAX_PAGE_US,
    PCM_RATES_HZ,
    LiveSource,
    unpack_frame,
)
from broadcaster.store import RecordingRow, StoreError

from .access import ACCESS, AUDIT_CREATED, PUBLIC, audit, requires
from .routes import (
    ANNOUNCER,
    CLOCK,
    CONFIG,
    STORE,
    _BodyRefused,
    _check_request_chime,
    _forbid,
    _invalid,
    _json_body,
    _principal,
)
from .schemas import CONTROL_CHARS, ReplayRequest, field_errors

log = logging.getLogger(__name__)

PAGING_PATH = "/v1/paging"
#: Close codes: 4000 + the HTTP status the same refusal would have.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TIMEOUT = 4408
CLOSE_TOO_MANY = 4429
CLOSE_UNAVAILABLE = 4503
#: How long the final state is waited for after the talker stopped.
_FINAL_WAIT_US = 30_000_000
#: Audio received may run ahead of the wall clock by this much before the uplink
#: is closed for sending faster than real time (bounds the decoding work).
_BURST_US = 2_000_000
_MAX_MESSAGE_BYTES = 64 * 1024
#: A live page whose uplink sends nothing for this long is ended (``uplink_lost``).
_IDLE_US = 3_000_000
#: WebSocket pings (a browser answers them by itself): a dead connection is noticed.
_HEARTBEAT_S = 5.0


class StartMessage(BaseModel):
    """The uplink's first message."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["start"]
    token: str = Field(min_length=1, max_length=512)
    zones: list[str] = Field(min_length=1, max_length=256)
    priority: int | str | None = None
    codec: Literal["opus", "pcm_s16le"]
    sample_rate_hz: int
    chime_before: str | None = Field(default=None, max_length=200)
    chime_after: str | None = Field(default=None, max_length=200)
    #: A caption for the record and for endpoints that show text.
    text: str | None = Field(default=None, min_length=1, max_length=200)
    #: "live": on the air as it is spoken; "record": kept, sent later by a replay.
    mode: Literal["live", "record"] = "live"

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: object) -> int | None:
        if v is None:
            return None
        if isinstance(v, str):
            band = PRIORITY_BANDS.get(v)
            if band is None:
                raise ValueError(f"unknown band {v[:40]!r}; one of {', '.join(PRIORITY_BANDS)}")
            return band[1]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
            raise ValueError("must be an integer 0-255 or a band name")
        return v


class _Refused(Exception):
    def __init__(self, close_code: int, error: str, message: str, field: str | None = None):
        super().__init__(message)
        self.close_code, self.error, self.message, self.field = close_code, error, message, field


async def _send(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps(message, separators=(",", ":")))


async def _refuse(ws: web.WebSocketResponse, refused: _Refused) -> None:
    body: dict[str, Any] = {"type": "error", "error": refused.error, "message": refused.message}
    if refused.field is not None:
        body["field"] = refused.field
    await _send(ws, body)
    await ws.close(code=refused.close_code, message=refused.error.encode()[:120])


@requires(PUBLIC)
async def paging_uplink(request: web.Request) -> web.StreamResponse:
    """GET /v1/paging (WebSocket): a live page from a talker's microphone."""
    ws = web.WebSocketResponse(
        max_msg_size=_MAX_MESSAGE_BYTES, autoping=True, heartbeat=_HEARTBEAT_S
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(reason="a WebSocket upgrade is required")
    await ws.prepare(request)
    principal: Principal | None = None
    try:
        principal, start = await _authenticate(request, ws)
        await _page(request, ws, principal, start)
    except _Refused as refused:
        audit(request, refused.close_code - 4000, principal=principal, detail=refused.message)
        await _refuse(ws, refused)
    return ws


async def _authenticate(
    request: web.Request, ws: web.WebSocketResponse
) -> tuple[Principal, StartMessage]:
    access = request.app[ACCESS]
    config = request.app[CONFIG]
    source = source_key(request.remote)
    wait_us = access.limiter.retry_after_us(source, access.clock.monotonic_us())
    if wait_us:
        seconds = max(1, -(-wait_us // 1_000_000))
        raise _Refused(
            CLOSE_TOO_MANY,
            "too_many_failed_attempts",
            f"too many failed authentications from your address; retry in {seconds} s",
        )
    timeout_us = config.streaming.hello_timeout_ms * 1000
    try:
        msg = await within_us(access.clock, ws.receive(), timeout_us)
    except TimeoutError:
        raise _Refused(
            CLOSE_TIMEOUT, "start_timeout", f"no start message within {timeout_us // 1000} ms"
        ) from None
    if msg.type is not WSMsgType.TEXT:
        raise _Refused(CLOSE_BAD_REQUEST, "bad_request", "the first message must be a text start")
    try:
        data = json.loads(msg.data)
    except ValueError:
        raise _Refused(CLOSE_BAD_REQUEST, "invalid_json", "the start message is not JSON") from None
    token = data.get("token") if isinstance(data, dict) else None
    principal = access.tokens.authenticate(token) if isinstance(token, str) and token else None
    if principal is None:
        if token is not None:
            access.limiter.failure(source, access.clock.monotonic_us())
        raise _Refused(
            CLOSE_UNAUTHORIZED,
            "unauthorized",
            "missing token" if token is None else "unknown or malformed token",
            "token",
        )
    try:
        start = StartMessage.model_validate(data)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise _Refused(
            CLOSE_BAD_REQUEST,
            "validation_failed",
            f"{first['field']}: {first['message']}",
            str(first["field"]),
        ) from None
    return principal, start


def _check_format(start: StartMessage) -> StreamFormat:
    if start.codec == "opus":
        if start.sample_rate_hz != 48000:
            raise _Refused(
                CLOSE_BAD_REQUEST,
                "validation_failed",
                "opus is sent at 48000 Hz",
                "sample_rate_hz",
            )
        return StreamFormat(Codec.OPUS, 48000)
    if start.sample_rate_hz not in PCM_RATES_HZ:
        raise _Refused(
            CLOSE_BAD_REQUEST,
            "validation_failed",
            f"pcm_s16le is taken at {', '.join(map(str, PCM_RATES_HZ))} Hz",
            "sample_rate_hz",
        )
    return StreamFormat(Codec.PCM_S16LE, start.sample_rate_hz)


async def _page(
    request: web.Request, ws: web.WebSocketResponse, principal: Principal, start: StartMessage
) -> None:
    config = request.app[CONFIG]
    announcer = request.app[ANNOUNCER]
    clock = request.app[CLOCK]
    fmt = _check_format(start)
    unknown = [z for z in start.zones if z not in config.zone_ids]
    if unknown:
        raise _Refused(
            CLOSE_BAD_REQUEST,
            "validation_failed",
            f"unknown zone(s): {', '.join(unknown)}",
            "zones",
        )
    for name in ("chime_before", "chime_after"):
        problem = await _check_request_chime(config, getattr(start, name))
        if problem is not None:
            raise _Refused(CLOSE_BAD_REQUEST, "validation_failed", problem, name)
    if start.text is not None and CONTROL_CHARS.search(start.text):
        raise _Refused(
            CLOSE_BAD_REQUEST, "validation_failed", "control characters are not allowed", "text"
        )
    spec = compose_spec(
        config,
        None,
        text=start.text or "Live page",
        zones=list(dict.fromkeys(start.zones)),
        language=spoken_language(config, None, None),
        priority=start.priority if isinstance(start.priority, int) else None,
        chime_before=start.chime_before,
        chime_after=start.chime_after,
    )
    # A live page is never replayed (its talker has moved on): preempted means dropped.
    spec = dataclasses.replace(spec, kind="live", on_preempt="drop", repeats=0, also=())
    refusal = may_announce(
        principal,
        priority=spec.priority,
        zones=spec.zones,
        emergency_priority=config.announcements.emergency_priority,
        verb="page",
    )
    if refusal is not None:
        field = refusal.fields[0][0] if refusal.fields else None
        raise _Refused(CLOSE_FORBIDDEN, refusal.code, refusal.message, field)
    if start.mode == "record":
        await _record(request, ws, principal, spec, fmt)
        return

    # The page's worker thread (decoding, levelling): the source owns it once accepted.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paging")
    source = LiveSource(
        clock=clock, sample_rate_hz=fmt.sample_rate_hz, executor=executor, codec=start.codec
    )
    try:
        ann = await announcer.accept(spec, created_by=principal.id, live=source)
    except QueueFull as exc:
        source.cancel()
        raise _Refused(CLOSE_UNAVAILABLE, "queue_full", str(exc)) from None
    except StoreError as exc:
        source.cancel()
        log.error("live page not accepted: %s", exc)
        raise _Refused(
            CLOSE_UNAVAILABLE, "store_unavailable", "the page could not be recorded"
        ) from None
    except BaseException:
        source.cancel()
        raise
    request[AUDIT_CREATED] = ann.id
    audit(request, 202, principal=principal, detail=f"live page, priority {spec.priority}")
    await _send(
        ws,
        {
            "type": "accepted",
            "announcement_id": ann.id,
            "priority": spec.priority,
            "zones": list(spec.zones),
            "state": ann.state.value,
            "server_time_us": clock.monotonic_us(),
        },
    )
    await _run(request, ws, ann, source, fmt, executor)


async def _run(
    request: web.Request,
    ws: web.WebSocketResponse,
    ann: Announcement,
    source: LiveSource,
    fmt: StreamFormat,
    executor: ThreadPoolExecutor,
) -> None:
    announcer = request.app[ANNOUNCER]
    clock = request.app[CLOCK]
    final = announcer.watch(ann.id)
    decoder = FrameDecoder(fmt)

    async def tell_live() -> None:
        await source.live_event.wait()
        await _send(
            ws,
            {
                "type": "live",
                "announcement_id": ann.id,
                "play_at_us": source.live_play_at_us,
                "server_time_us": clock.monotonic_us(),
            },
        )

    def stop(ended_by: str, reason: str) -> None:
        if source.is_live:
            source.end(ended_by)
        else:
            source.note_end(ended_by)
            announcer.cancel(ann.id, reason)

    async def read() -> None:
        began_us = clock.monotonic_us()
        received_us = 0
        while True:
            try:
                msg = await within_us(clock, ws.receive(), _IDLE_US)
            except TimeoutError:
                if source.is_live and not source.ended:
                    # Live, and nothing for a while: the talker's uplink is gone.
                    stop("uplink_lost", "the talker's uplink went silent")
                continue
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if msg.type is WSMsgType.ERROR:
                break
            if final.done():
                return
            if msg.type is WSMsgType.BINARY:
                if source.ended or source.closed:
                    continue
                try:
                    capture_us, pcm = await _decode(msg.data, decoder, fmt, executor)
                except Exception as exc:  # a bad packet is skipped, and counted
                    source.decode_error()
                    log.debug("live page %s: frame skipped: %s", ann.id, exc)
                    continue
                received_us += len(pcm) // 2 * 1_000_000 // fmt.sample_rate_hz
                if received_us > clock.monotonic_us() - began_us + _BURST_US:
                    stop("uplink_lost", "uplink sent faster than real time")
                    raise _Refused(
                        CLOSE_BAD_REQUEST,
                        "too_fast",
                        "audio arrives faster than real time; send it as it is captured",
                    )
                source.push(pcm, max(0, capture_us))
            elif msg.type is WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                    kind = data.get("type") if isinstance(data, dict) else None
                except ValueError:
                    kind = None
                if kind == "stop":
                    stop("talker", "the talker stopped before the page went live")
                elif kind == "ping":
                    await _send(
                        ws,
                        {
                            "type": "pong",
                            "id": data.get("id"),
                            "server_time_us": clock.monotonic_us(),
                        },
                    )
                else:
                    await _send(
                        ws, {"type": "error", "error": "bad_request", "message": "unknown message"}
                    )
        # The socket closed without a stop: the uplink was lost.
        if not source.ended and not final.done():
            stop("uplink_lost", "the talker's uplink was lost before the page went live")

    live_task = asyncio.create_task(tell_live())
    reader = asyncio.create_task(read())
    try:
        waited: set[asyncio.Future[Any]] = {reader, final}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if reader in done:
            reader.result()  # a _Refused from the reader propagates
            with contextlib.suppress(TimeoutError):
                await within_us(clock, asyncio.shield(final), _FINAL_WAIT_US)
    finally:
        for task in (live_task, reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not final.done():
            if not source.ended:
                stop("uplink_lost", "the paging uplink ended")
            final.cancel()
    if final.done() and not final.cancelled():
        record = final.result()
        live = record.live or {}
        replay = await _keep_recording(request, record, source)
        await _send(
            ws,
            {
                "type": "ended",
                "announcement_id": record.id,
                "state": record.state.value,
                "reason": record.reason,
                "ended_by": live.get("ended_by"),
                "latency_ms": live.get("latency_ms"),
                "replay_available": replay,
            },
        )
    await ws.close(code=1000)


async def _decode(
    data: bytes, decoder: FrameDecoder, fmt: StreamFormat, executor: ThreadPoolExecutor
) -> tuple[int, bytes]:
    """(capture_us, PCM) of one uplink frame; ValueError (or the codec's error) if bad."""
    _, capture_us, payload = unpack_frame(data)
    if (
        fmt.codec is Codec.PCM_S16LE
        and len(payload) > 2 * fmt.sample_rate_hz * MAX_FRAME_MS // 1000
    ):
        raise ValueError(f"more than {MAX_FRAME_MS} ms of PCM in one message")
    pcm = await asyncio.get_running_loop().run_in_executor(executor, decoder.decode, payload)
    return capture_us, pcm


async def _record(
    request: web.Request,
    ws: web.WebSocketResponse,
    principal: Principal,
    spec: AnnouncementSpec,
    fmt: StreamFormat,
) -> None:
    """A pre-recorded page: levelled and kept (not aired); a replay sends it later."""
    store = request.app.get(STORE)
    clock = request.app[CLOCK]
    if store is None:
        raise _Refused(CLOSE_UNAVAILABLE, "store_unavailable", "recordings need the store")
    audio = request.app[ANNOUNCER].settings.audio
    rate = fmt.sample_rate_hz
    leveler = (
        LiveLeveler(rate, target_lufs=audio.target_lufs, true_peak_dbtp=audio.true_peak_dbtp)
        if audio.normalize
        else None
    )
    recording_id = str(uuid.uuid4())
    request[AUDIT_CREATED] = recording_id
    audit(request, 202, principal=principal, detail="pre-recorded page")
    await _send(
        ws,
        {"type": "recording", "recording_id": recording_id, "server_time_us": clock.monotonic_us()},
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paging-record")
    decoder = FrameDecoder(fmt)
    pcm = bytearray()
    limit = 2 * rate * MAX_PAGE_US // 1_000_000
    began_us = clock.monotonic_us()
    ended_by = "talker"
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                msg = await within_us(clock, ws.receive(), _IDLE_US)
            except TimeoutError:
                return  # the talker went silent: nothing is kept
            if msg.type is WSMsgType.BINARY:
                try:
                    _, block = await _decode(msg.data, decoder, fmt, executor)
                except Exception:
                    continue
                if leveler is not None:
                    block = await loop.run_in_executor(executor, leveler.process, block)
                pcm += block
                if len(pcm) // 2 * 1_000_000 // rate > clock.monotonic_us() - began_us + _BURST_US:
                    raise _Refused(
                        CLOSE_BAD_REQUEST,
                        "too_fast",
                        "audio arrives faster than real time; send it as it is captured",
                    )
                if len(pcm) >= limit:
                    ended_by = "time_limit"
                    break
            elif msg.type is WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    data = None
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "stop":
                    break
                if kind == "ping" and isinstance(data, dict):
                    await _send(
                        ws,
                        {
                            "type": "pong",
                            "id": data.get("id"),
                            "server_time_us": clock.monotonic_us(),
                        },
                    )
            else:
                return  # closed without a stop: nothing is kept
        if leveler is not None:
            pcm += await loop.run_in_executor(executor, leveler.flush)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    if not pcm:
        await _send(ws, {"type": "error", "error": "empty", "message": "nothing was recorded"})
        await ws.close(code=CLOSE_BAD_REQUEST)
        return
    try:
        await store.insert_recording(
            RecordingRow(
                id=recording_id,
                spec=spec_to_json(spec),
                created_by=principal.id,
                sample_rate_hz=rate,
                pcm=bytes(pcm),
                created_at=clock.wall(),
            ),
            KEEP_RECORDINGS,
        )
    except StoreError as exc:
        log.error("pre-recorded page not kept: %s", exc)
        raise _Refused(
            CLOSE_UNAVAILABLE, "store_unavailable", "the recording could not be kept"
        ) from None
    await _send(
        ws,
        {
            "type": "ended",
            "recording_id": recording_id,
            "state": "recorded",
            "ended_by": ended_by,
            "duration_ms": len(pcm) // 2 * 1000 // rate,
            "replay_available": True,
        },
    )
    await ws.close(code=1000)


async def _keep_recording(request: web.Request, record: Announcement, source: LiveSource) -> bool:
    """Keep a complete page's audio for replay (the talker ended it, or the time limit)."""
    store = request.app.get(STORE)
    live = record.live or {}
    if (
        store is None
        or not source.recording
        or live.get("ended_by") not in ("talker", "time_limit")
    ):
        return False
    try:
        await store.insert_recording(
            RecordingRow(
                id=record.id,
                spec=spec_to_json(record.spec),
                created_by=record.created_by,
                sample_rate_hz=source.sample_rate_hz,
                pcm=bytes(source.recording),
                created_at=request.app[CLOCK].wall(),
            ),
            KEEP_RECORDINGS,
        )
    except StoreError as exc:
        log.warning("live page %s: recording not kept: %s", record.id, exc)
        return False
    return True


@requires(Role.OPERATOR)
async def replay_page(request: web.Request) -> web.Response:
    """POST /v1/announcements/{id}/replay: play a recorded live page again."""
    config = request.app[CONFIG]
    store = request.app.get(STORE)
    page_id = request.match_info["id"]
    try:
        body = await _json_body(request) if request.body_exists else {}
    except _BodyRefused as exc:
        return exc.response
    try:
        req = ReplayRequest.model_validate(body)
    except ValidationError as exc:
        return web.json_response(
            {
                "error": "validation_failed",
                "message": "invalid fields",
                "fields": field_errors(exc),
            },
            status=422,
        )
    found = await store.get_recording(page_id) if store is not None else None
    if found is None:
        return web.json_response(
            {"error": "not_found", "message": "no recorded page with this id"}, status=404
        )
    original = spec_from_json(found.spec)
    zones = list(dict.fromkeys(req.zones)) if req.zones else list(original.zones)
    unknown = [z for z in zones if z not in config.zone_ids]
    if unknown:
        return _invalid("zones", f"unknown zone(s): {', '.join(unknown)}")
    for name in ("chime_before", "chime_after"):
        problem = await _check_request_chime(config, getattr(req, name))
        if problem is not None:
            return _invalid(name, problem)
    spec = dataclasses.replace(
        original,
        kind="replay",
        text=f"Replay: {original.text}",
        zones=tuple(zones),
        priority=req.priority if isinstance(req.priority, int) else original.priority,
        chime_before=req.chime_before if req.chime_before is not None else original.chime_before,
        chime_after=req.chime_after if req.chime_after is not None else original.chime_after,
        on_preempt="drop",
        extra={"replay_of": page_id},
    )
    principal = _principal(request)
    refusal = may_announce(
        principal,
        priority=spec.priority,
        zones=spec.zones,
        emergency_priority=config.announcements.emergency_priority,
    )
    if refusal is not None:
        return _forbid(request, refusal)
    source = LiveSource.replaying(
        clock=request.app[CLOCK],
        pcm=found.pcm,
        sample_rate_hz=found.sample_rate_hz,
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay"),
        of=page_id,
    )
    try:
        ann = await request.app[ANNOUNCER].accept(spec, created_by=principal.id, live=source)
    except QueueFull as exc:
        source.cancel()
        record = exc.record.id if exc.record is not None else None
        return web.json_response(
            {"error": "queue_full", "message": str(exc), "id": record}, status=503
        )
    except StoreError:
        source.cancel()
        return web.json_response(
            {"error": "store_unavailable", "message": "the replay could not be recorded"},
            status=503,
        )
    request[AUDIT_CREATED] = ann.id
    return web.json_response(
        ann.as_dict(), status=202, headers={"Location": f"/v1/announcements/{ann.id}"}
    )
