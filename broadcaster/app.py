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
import gc
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from aiohttp import web

from broadcaster.announcements import Registry
from broadcaster.announcer import Announcer, AudioSettings, PlayoutSettings
from broadcaster.api.routes import build_app
from broadcaster.clock import Clock, SystemClock
from broadcaster.config import Config
from broadcaster.journal import StoreJournal, recover
from broadcaster.scheduling.runner import ScheduleRunner
from broadcaster.speech.chain import FallbackPolicy
from broadcaster.speech.engine import SpeechEngine
from broadcaster.store import AsyncStore
from broadcaster.streaming.hub import Hub
from broadcaster.streaming.server import ENDPOINT_PATH, EndpointServer

log = logging.getLogger(__name__)


class EngineSetupError(Exception):
    """The configured speech engine cannot be used; the message is for the operator."""


async def make_engines(
    config: Config, clock: Clock, environ: Mapping[str, str]
) -> tuple[SpeechEngine, SpeechEngine | None, str]:
    """(primary, fallback, why) for the config: Runware when it has a key, else espeak-ng."""
    from broadcaster.speech.espeak import EspeakEngine

    sp = config.speech
    key = sp.runware_api_key(environ)
    if sp.engine == "espeak" or (sp.engine == "auto" and not key):
        why = "embedded, no API key needed" if not key else "speech.engine = espeak"
        return EspeakEngine(), None, why
    if not key:
        raise EngineSetupError(
            "speech.engine = runware needs an API key: set RUNWARE_API_KEY "
            "or speech.runware.api_key"
        )
    from broadcaster.speech.runware.cache import SegmentCache
    from broadcaster.speech.runware.client import ClientSettings, RunwareClient
    from broadcaster.speech.runware.engine import RequestProfile, RunwareEngine
    from broadcaster.speech.runware.schema import DeliveryMethod, OutputFormat, OutputType

    rw = sp.runware
    client = RunwareClient(
        ClientSettings(
            api_key=key,
            ws_url=rw.ws_url,
            rest_url=rw.rest_url,
            connect_timeout_s=rw.connect_timeout_s,
            max_in_flight=rw.max_in_flight,
            task_timeout_s=rw.task_timeout_s,
            max_attempts=rw.max_attempts,
        ),
        clock=clock,
    )
    await client.start()
    cache = (
        SegmentCache(Path(rw.cache_dir), rw.cache_max_mb * 1024 * 1024)
        if rw.cache_max_mb > 0
        else None
    )
    primary = RunwareEngine(
        client,
        clock=clock,
        cache=cache,
        profile=RequestProfile(
            output_type=OutputType(rw.output_type),
            output_format=OutputFormat(rw.output_format),
            delivery=DeliveryMethod(rw.delivery),
            include_cost=rw.include_cost,
            webhook_url=rw.webhook_url,
            upload_endpoint=rw.upload_endpoint,
            ttl_s=rw.ttl_s,
        ),
        segment_max_chars=rw.segment_max_chars,
        concurrency=rw.concurrency,
        segment_pause_ms=rw.segment_pause_ms,
    )
    fallback = EspeakEngine() if sp.fallback else None
    why = "Qwen3-TTS via Runware" + (", espeak-ng as fallback" if fallback else ", no fallback")
    return primary, fallback, why


class Service:
    """The whole broadcaster in one process. Use as ``async with Service(cfg) as svc``."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        engine: SpeechEngine | None = None,
        fallback: SpeechEngine | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._engine = engine
        self._fallback = fallback
        self._environ = os.environ if environ is None else environ
        self.hub = Hub()
        self.announcer: Announcer | None = None
        self.endpoint_server: EndpointServer | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._announcer_task: asyncio.Task[None] | None = None
        self.store: AsyncStore | None = None
        self.runner: ScheduleRunner | None = None
        self._runner_task: asyncio.Task[None] | None = None
        self.journal: StoreJournal | None = None
        self.http_port = 0
        self.ws_port = 0

    @property
    def engine(self) -> SpeechEngine:
        assert self._engine is not None
        return self._engine

    async def start(self) -> None:
        cfg = self.config
        why = "given"
        if self._engine is None:
            self._engine, self._fallback, why = await make_engines(cfg, self.clock, self._environ)
        log.info("speech engine: %s (%s)", self.engine.name, why)
        self.store = await AsyncStore.open(self._store_path(), now=self.clock.wall())
        self.journal = StoreJournal(self.store)
        pruned = await self.store.prune_announcements(
            self.clock.wall() - timedelta(days=cfg.store.keep_days)
        )
        if pruned:
            log.info("store: pruned %d finished announcement(s)", pruned)
        registry = Registry(
            cfg.announcements.history_limit,
            first_number=await self.store.max_announcement_number() + 1,
        )
        self.announcer = Announcer(
            engine=self.engine,
            journal=self.journal,
            fallback=self._fallback,
            fallback_policy=FallbackPolicy(
                first_audio_deadline_s=cfg.speech.first_audio_deadline_s,
                emergency_first_audio_deadline_s=cfg.speech.emergency_first_audio_deadline_s,
                emergency_priority=cfg.announcements.emergency_priority,
            ),
            hub=self.hub,
            clock=self.clock,
            registry=registry,
            settings=PlayoutSettings(
                lead_us=cfg.streaming.playout_delay_ms * 1000,
                opus_bitrate_bps=cfg.streaming.opus_bitrate_bps,
                first_segment_max_chars=cfg.speech.first_segment_max_chars,
                queue_limit=cfg.announcements.queue_limit,
                wait_for_endpoints_us=int(cfg.announcements.wait_for_endpoints_s * 1e6),
                audio=AudioSettings(
                    normalize=cfg.audio.normalize,
                    target_lufs=cfg.audio.target_lufs,
                    true_peak_dbtp=cfg.audio.true_peak_dbtp,
                    chime_dir=cfg.audio.chime_dir,
                    chime_max_kb=cfg.audio.chime_max_kb,
                    chime_max_s=cfg.audio.chime_max_s,
                ),
            ),
        )
        restored, _ = await recover(
            self.store,
            registry=registry,
            now=self.clock.wall(),
            now_us=self.clock.monotonic_us(),
            emergency_priority=cfg.announcements.emergency_priority,
        )
        for ann in restored:
            self.announcer.restore(ann)
        self._announcer_task = asyncio.create_task(self.announcer.run(), name="announcer")
        self.runner = ScheduleRunner(
            config=cfg, store=self.store, announcer=self.announcer, clock=self.clock
        )
        await self.runner.load()
        self._runner_task = asyncio.create_task(self.runner.run(), name="schedules")
        self.endpoint_server = EndpointServer(
            config=cfg,
            hub=self.hub,
            clock=self.clock,
            on_receipt=self.announcer.on_receipt,
            on_join=self.announcer.on_join,
            on_playback=self.announcer.on_playback,
        )
        await self.endpoint_server.start(cfg.server.ws_host, cfg.server.ws_port)
        self.ws_port = self.endpoint_server.port
        log.info("PA endpoints: ws://%s:%d%s", cfg.server.ws_host, self.ws_port, ENDPOINT_PATH)
        app = build_app(
            config=cfg,
            announcer=self.announcer,
            hub=self.hub,
            clock=self.clock,
            store=self.store,
            runner=self.runner,
            supervisor=self.endpoint_server.supervisor,
        )
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
        if self._runner_task is not None:
            self._runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner_task
            self._runner_task = None
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
        if self.store is not None:
            # Let the journal writer catch up with the last state changes.
            await self._drain_journal(timeout)
            await self.store.close()
            self.store = None
        if self._engine is not None:
            await self._engine.aclose()
        if self._fallback is not None:
            await self._fallback.aclose()
        log.info("stopped")

    def _store_path(self) -> str:
        path = self.config.store.path
        return path if path == ":memory:" else str(Path(path).expanduser())

    async def _drain_journal(self, timeout_s: float) -> None:
        """Write the final states still pending (the writer task is stopped by now)."""
        if self.announcer is None or self.journal is None:
            return
        pending = self.announcer.take_dirty()
        for ann in pending:
            try:
                await self.journal.record(ann)
            except Exception:
                log.exception("could not record announcement %s", ann.id)

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
    # Thousands of endpoints mean hundreds of thousands of long-lived objects; with
    # the default thresholds a full collection every second or two stops the loop
    # for longer than the playout delay (measured in bench/fanout.py). Collect less
    # often, and leave everything alive at start-up out of collections for good.
    gc.set_threshold(50_000, 20, 10)
    async with Service(config):
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("shutting down")
