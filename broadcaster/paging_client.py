"""A minimal Python talker for the paging uplink (docs/paging.md): tests and the bench.

It sends what a browser sends: the start message, then binary frames (PCM or
Opus packets) with their capture time on the server clock, then ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from broadcaster.clock import Clock, SystemClock
from broadcaster.paging import pack_frame


class PagingRefused(Exception):
    def __init__(self, code: int | None, message: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PagingClient:
    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession, clock: Clock
    ) -> None:
        self.ws = ws
        self.clock = clock
        self._http = http
        self.messages: list[dict[str, Any]] = []
        self.accepted: dict[str, Any] = {}
        self.live = asyncio.Event()
        self.ended: dict[str, Any] | None = None
        self.done = asyncio.Event()
        #: Server clock minus local monotonic clock (µs), from the accepted message.
        self.offset_us = 0
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0
        self.close_code: int | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        start: dict[str, Any],
        *,
        origin: str | None = None,
        clock: Clock | None = None,
    ) -> PagingClient:
        """Connect, send ``start``; raises :class:`PagingRefused` when refused."""
        clock = clock or SystemClock()
        http = aiohttp.ClientSession()
        try:
            headers = {"Origin": origin} if origin else None
            ws = await http.ws_connect(url, headers=headers, autoping=True)
            sent_us = clock.monotonic_us()
            await ws.send_str(json.dumps({"type": "start", **start}))
            msg = await ws.receive(timeout=10)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise PagingRefused(ws.close_code, {"type": "closed"})
            data = json.loads(msg.data)
            if data.get("type") not in ("accepted", "recording"):
                with contextlib.suppress(Exception):
                    await ws.receive(timeout=2)  # the close frame
                raise PagingRefused(ws.close_code, data)
        except BaseException:
            await http.close()
            raise
        self = cls(ws, http, clock)
        self.accepted = data
        self.offset_us = data["server_time_us"] - (sent_us + clock.monotonic_us()) // 2
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            self.messages.append(data)
            if data.get("type") == "live":
                self.live.set()
            elif data.get("type") == "ended":
                self.ended = data
        self.close_code = self.ws.close_code
        self.done.set()
        self.live.set()  # nobody waits for a page that is over

    def server_now_us(self) -> int:
        return self.clock.monotonic_us() + self.offset_us

    async def send(self, payload: bytes, capture_us: int | None = None) -> None:
        capture = self.server_now_us() if capture_us is None else capture_us
        await self.ws.send_bytes(pack_frame(self._seq, capture, payload))
        self._seq += 1

    async def send_paced(self, payloads: list[bytes], frame_us: int) -> None:
        """Send one payload every ``frame_us`` (as a microphone would), stamped with the
        capture time of its first sample (the end of its frame is now)."""
        t0 = self.clock.monotonic_us()
        for i, payload in enumerate(payloads):
            await self.clock.sleep_until_us(t0 + (i + 1) * frame_us)
            await self.send(payload, self.server_now_us() - frame_us)
            if self.done.is_set():
                return

    async def stop(self) -> None:
        await self.ws.send_str(json.dumps({"type": "stop"}))

    async def wait_ended(self, timeout_s: float = 30) -> dict[str, Any] | None:
        await asyncio.wait_for(self.done.wait(), timeout_s)
        return self.ended

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await self._http.close()
