"""Composition root: builds every stage from the config, runs them, stops them in order.

Start order: speech engine → hub and announcer → endpoint WebSocket server →
HTTP API (last, so nothing is accepted before it can be played).
Stop order is the reverse: the API stops accepting, playing announcements are
ended (their endpoints are told why), endpoint connections are closed with
1001, and the engine's threads are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from aiohttp import web

from broadcaster.announcements import Registry
from broadcaster.announcer import Announcer, PlayoutSettings
from broadcaster.api.routes import build_app
from broadcaster.clock import Clock, SystemClock
from broadcaster.config import Config
from broadcaster.speech.engine import SpeechEngine
from broadcaster.streaming.hub import Hub
from broadcaster.streaming.server import ENDPOINT_PATH, EndpointServer

log = logging.getLogger(__name__)


def make_engine(config: Config) -> SpeechEngine:
    """The speech engine the config asks for (only the embedded one in this release)."""
    from broadcaster.speech.espeak import EspeakEngine

    return EspeakEngine()


class Service:
    """The whole broadcaster in one process. Use as ``async with Service(cfg) as svc``."""

    def __init__(
        self, config: Config, *, clock: Clock | None = None, engine: SpeechEngine | None = None
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._engine = engine
        self.hub = Hub()
        self.announcer: Announcer | None = None
        self.endpoint_server: EndpointServer | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._announcer_task: asyncio.Task[None] | None = None
        self.http_port = 0
        self.ws_port = 0

    @property
    def engine(self) -> SpeechEngine:
        assert self._engine is not None
        return self._engine

    async def start(self) -> None:
        cfg = self.config
        if self._engine is None:
            self._engine = make_engine(cfg)
        log.info("speech engine: %s (embedded, no API key needed)", self.engine.name)
        self.announcer = Announcer(
            engine=self.engine,
            hub=self.hub,
            clock=self.clock,
            registry=Registry(cfg.announcements.history_limit),
            settings=PlayoutSettings(
                lead_us=cfg.streaming.playout_delay_ms * 1000,
                opus_bitrate_bps=cfg.streaming.opus_bitrate_bps,
                first_segment_max_chars=cfg.speech.first_segment_max_chars,
                queue_limit=cfg.announcements.queue_limit,
            ),
        )
        self._announcer_task = asyncio.create_task(self.announcer.run(), name="announcer")
        self.endpoint_server = EndpointServer(
            config=cfg, hub=self.hub, clock=self.clock, on_receipt=self.announcer.on_receipt
        )
        await self.endpoint_server.start(cfg.server.ws_host, cfg.server.ws_port)
        self.ws_port = self.endpoint_server.port
        log.info("PA endpoints: ws://%s:%d%s", cfg.server.ws_host, self.ws_port, ENDPOINT_PATH)
        app = build_app(config=cfg, announcer=self.announcer, hub=self.hub, clock=self.clock)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, cfg.server.http_host, cfg.server.http_port)
        await self._site.start()
        server = self._site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else cfg.server.http_port
        log.info("HTTP API: http://%s:%d/v1/announcements", cfg.server.http_host, self.http_port)
        log.info(
            "zones: %s; endpoints configured: %d",
            ", ".join(cfg.zone_ids) or "(none)",
            len(cfg.endpoints),
        )

    async def stop(self) -> None:
        timeout = self.config.server.shutdown_timeout_s
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._announcer_task is not None:
            self._announcer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer_task
            self._announcer_task = None
            # Let writers deliver the "cancelled" messages before the sockets close.
            await self._drain(timeout)
        if self.endpoint_server is not None:
            await self.endpoint_server.stop()
            self.endpoint_server = None
        if self._engine is not None:
            await self._engine.aclose()
        log.info("stopped")

    async def _drain(self, timeout_s: float) -> None:
        deadline = self.clock.monotonic_us() + int(timeout_s * 1e6)
        while any(len(link.outbox) for link in self.hub.links()):
            if self.clock.monotonic_us() >= deadline:
                return
            await self.clock.sleep_us(10_000)

    async def __aenter__(self) -> Service:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve_forever(config: Config, stop: asyncio.Event) -> None:
    async with Service(config):
        await stop.wait()
        log.info("shutting down")
