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
from typing import TYPE_CHECKING

from aiohttp import web

from broadcaster.announcements import Registry
from broadcaster.announcer import Announcer, AudioSettings, PlayoutSettings
from broadcaster.api.routes import build_app
from broadcaster.auth import allowed_hosts
from broadcaster.clock import Clock, SystemClock
from broadcaster.config import Config
from broadcaster.edge import EdgeGuard, GatedSite, ensure_file_limit
from broadcaster.events import EventLog
from broadcaster.gains import Gains
from broadcaster.journal import StoreJournal, recover
from broadcaster.monitoring import LiveCollector, ServiceMetrics, service_readiness
from broadcaster.scheduling.library import TemplateLibrary
from broadcaster.scheduling.runner import ScheduleRunner
from broadcaster.speech.chain import FallbackPolicy
from broadcaster.speech.engine import SpeechEngine
from broadcaster.store import AsyncStore, StoreError, StoreHealth
from broadcaster.streaming.hub import Hub
from broadcaster.streaming.server import ENDPOINT_PATH, EndpointServer
from broadcaster.web.pages import WS_PORT

if TYPE_CHECKING:
    from broadcaster.speech.runware.warmup import WarmUp, WarmUpReport

log = logging.getLogger(__name__)

#: How long the rest of an unread request body is drained after the answer.
_LINGER_S = 2.0

#: How often the store is probed with a write (``Service._watch_store``).
_PROBE_OK_US = 5_000_000
_PROBE_FAILING_US = 1_000_000


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
        self._site: GatedSite | None = None
        #: Connection admission of the HTTP API (counters for health and metrics).
        self.http_guard: EdgeGuard | None = None
        self._announcer_task: asyncio.Task[None] | None = None
        self.store: AsyncStore | None = None
        self.runner: ScheduleRunner | None = None
        self._runner_task: asyncio.Task[None] | None = None
        self._store_watch_task: asyncio.Task[None] | None = None
        self.journal: StoreJournal | None = None
        #: Faults and recoveries, kept in the store: ``service.events.emit(kind,
        #: severity, subject, detail)`` from anywhere in the service.
        self.events: EventLog | None = None
        self._events_task: asyncio.Task[None] | None = None
        #: The service's Prometheus registry and counters (GET /metrics).
        self.metrics = ServiceMetrics(config.announcements.emergency_priority)
        self.http_port = 0
        self.ws_port = 0
        #: The Runware cache warm-up's progress (None: no warm-up; see _start_warm_up).
        self.warm_up: WarmUpReport | None = None
        self.templates: TemplateLibrary | None = None
        self.gains: Gains | None = None
        self._warm_up_task: asyncio.Task[None] | None = None

    @property
    def engine(self) -> SpeechEngine:
        assert self._engine is not None
        return self._engine

    def _wire_speech_faults(self, events: EventLog) -> None:
        """The Runware client's faults (refused key, unusable WebSocket, REST
        fallback) and recoveries become events at once (it logs them itself)."""
        client = getattr(self._engine, "client", None)
        set_sink = getattr(client, "set_fault_sink", None)
        if set_sink is None:
            return

        def sink(kind: str, severity: str, detail: str) -> None:
            events.emit(kind, severity, "speech", detail, write_log=False)

        set_sink(sink)

    async def start(self) -> None:
        cfg = self.config
        log.info("%s", ensure_file_limit(cfg.limits))
        tls = cfg.server.tls.server_context() if cfg.server.tls is not None else None
        why = "given"
        if self._engine is None:
            self._engine, self._fallback, why = await make_engines(cfg, self.clock, self._environ)
        log.info("speech engine: %s (%s)", self.engine.name, why)
        self.store = await AsyncStore.open(
            self._store_path(), now=self.clock.wall(), wall=self.clock.wall
        )
        self.journal = StoreJournal(self.store)
        self.events = await EventLog.open(self.clock, self.store, keep_days=cfg.store.keep_days)
        self._events_task = asyncio.create_task(self.events.run(), name="event-log")
        self._wire_speech_faults(self.events)
        self.store.health.listeners.append(self._store_health_changed)
        self.store.health.failure_listeners.append(
            lambda _reason: self.metrics.store_write_errors.inc()
        )
        pruned = await self.store.prune_announcements(
            self.clock.wall() - timedelta(days=cfg.store.keep_days)
        )
        if pruned:
            log.info("store: pruned %d finished announcement(s)", pruned)
        await self.store.prune_idempotency(
            self.clock.wall() - timedelta(hours=cfg.store.idempotency_hours)
        )
        # One template registry for triggers, schedules and the API; gains set
        # through the API override the config's.
        self.templates = TemplateLibrary(cfg, self.store, self.clock)
        await self.templates.load()
        self.gains = Gains(cfg)
        for row in await self.store.list_gains():
            if not self.gains.known(row.kind, row.id):
                log.warning("gain of %s %s ignored: not in the config", row.kind, row.id)
                continue
            self.gains.set(row.kind, row.id, row.gain_db)
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
            events=self.events,
            observer=self.metrics,
            gains=self.gains,
            settings=PlayoutSettings(
                lead_us=cfg.streaming.playout_delay_ms * 1000,
                opus_bitrate_bps=cfg.streaming.opus_bitrate_bps,
                first_segment_max_chars=cfg.speech.first_segment_max_chars,
                queue_limit=cfg.announcements.queue_limit,
                emergency_queue_limit=cfg.announcements.emergency_queue_limit,
                emergency_priority=cfg.announcements.emergency_priority,
                wait_for_endpoints_us=int(cfg.announcements.wait_for_endpoints_s * 1e6),
                journal_retry_max_us=int(cfg.store.write_retry_max_s * 1e6),
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
        self._store_watch_task = asyncio.create_task(self._watch_store(), name="store-watch")
        self.runner = ScheduleRunner(
            config=cfg,
            store=self.store,
            announcer=self.announcer,
            clock=self.clock,
            templates=self.templates,
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
        supervisor = self.endpoint_server.supervisor
        supervisor.on_event = self.events.from_supervision
        self.metrics.attach(
            LiveCollector(
                config=cfg,
                hub=self.hub,
                announcer=self.announcer,
                supervisor=supervisor,
                events=self.events,
                now_us=self.clock.monotonic_us,
                edges=self._edge_guards,
            )
        )
        await self.endpoint_server.start(cfg.server.ws_host, cfg.server.ws_port, ssl_context=tls)
        self.ws_port = self.endpoint_server.port
        log.info(
            "PA endpoints: %s://%s:%d%s",
            cfg.server.ws_scheme,
            cfg.server.ws_host,
            self.ws_port,
            ENDPOINT_PATH,
        )
        app = build_app(
            config=cfg,
            announcer=self.announcer,
            hub=self.hub,
            clock=self.clock,
            store=self.store,
            runner=self.runner,
            supervisor=supervisor,
            limiter=self.endpoint_server.limiter,  # one failed-attempt budget per address
            origins=self.endpoint_server.origins,  # one origin policy for both servers
            events=self.events,
            metrics=self.metrics,
            templates=self.templates,
            gains=self.gains,
            readiness=service_readiness(
                config=cfg,
                hub=self.hub,
                announcer=self.announcer,
                supervisor=supervisor,
                store=self.store,
            ),
        )
        app[WS_PORT] = self.ws_port  # the pages tell browsers where endpoints connect
        lim = cfg.limits
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=lim.keepalive_timeout_s,
            # After answering a request whose body was not read whole (refused early, or
            # trickled in), aiohttp reads what is left for at most this long, so the
            # answer is not lost to a reset, then closes: a slow body cannot hold on.
            lingering_time=_LINGER_S,
        )
        await self._runner.setup()
        self.http_guard = EdgeGuard(
            "HTTP API",
            clock=self.clock,
            max_total=lim.max_http_connections,
            max_per_address=lim.max_http_per_address,
            header_timeout_s=lim.header_timeout_s,
        )
        self.http_guard.start()
        self._site = GatedSite(
            self._runner,
            cfg.server.http_host,
            cfg.server.http_port,
            guard=self.http_guard,
            ssl_context=tls,
        )
        await self._site.start()
        self.http_port = self._site.bound_port
        # The console and kiosk pages are served from here: their origin may call the
        # API and open the endpoint WebSocket (a page on any other origin may not).
        self.endpoint_server.origins.add_own_pages(
            cfg.server.http_scheme,
            allowed_hosts(cfg.auth.public_hosts, cfg.server.http_host),
            self.http_port,
        )
        log.info(
            "HTTP API: %s://%s:%d/v1/announcements",
            cfg.server.http_scheme,
            cfg.server.http_host,
            self.http_port,
        )
        log.info(
            "limits: HTTP %d connections (%d per address), WebSocket %d (%d per address), "
            "headers within %g s, HTTP keep-alive %g s, bodies up to %d bytes",
            lim.max_http_connections,
            lim.max_http_per_address,
            lim.max_ws_connections,
            lim.max_ws_per_address,
            lim.header_timeout_s,
            lim.keepalive_timeout_s,
            lim.max_body_bytes,
        )
        log.info(
            "zones: %s; endpoints configured: %d",
            ", ".join(cfg.zone_ids) or "(none)",
            len(cfg.endpoints),
        )
        self._start_warm_up()

    def _start_warm_up(self) -> None:
        """Runware only (its cache): the templates' fixed texts synthesized in the
        background, owned here and cancelled at stop; start-up never waits for it."""
        from broadcaster.speech.runware.engine import RunwareEngine
        from broadcaster.speech.runware.warmup import WarmUp

        rw = self.config.speech.runware
        engine = self._engine
        if not isinstance(engine, RunwareEngine) or engine.cache is None or not rw.warm_up:
            return  # (espeak-ng needs no cache: it speaks ~1000x faster than real time)
        # Below the client's limit, so announcements always find a free slot.
        slots = max(1, engine.client.settings.max_in_flight - 1)
        library = self.templates
        # The registry's templates: the config's and those made through the API.
        found = [library.get(name) for name in library.names()] if library is not None else None
        warm = WarmUp(
            self.config,
            engine,
            clock=self.clock,
            concurrency=min(rw.warm_up_concurrency, slots),
            templates=None if found is None else [t for t in found if t is not None],
        )
        self.warm_up = warm.report
        self._warm_up_task = asyncio.create_task(self._run_warm_up(warm), name="speech-warm-up")

    async def _run_warm_up(self, warm: WarmUp) -> None:
        try:
            await warm.run()
        except Exception:  # a bug, not a Runware fault (those are counted): said at once
            log.exception("speech warm-up stopped")

    async def stop(self) -> None:
        timeout = self.config.server.shutdown_timeout_s
        if self._warm_up_task is not None:
            self._warm_up_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_up_task
            self._warm_up_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.http_guard is not None:
            await self.http_guard.stop()
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
        if self._store_watch_task is not None:
            self._store_watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_watch_task
            self._store_watch_task = None
        if self.store is not None:
            # Let the journal writer catch up with the last state changes.
            await self._drain_journal(timeout)
            if self._events_task is not None:
                self._events_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._events_task
                self._events_task = None
            if self.events is not None:
                await self.events.flush()
            await self.store.close()
            self.store = None
        if self._engine is not None:
            await self._engine.aclose()
        if self._fallback is not None:
            await self._fallback.aclose()
        log.info("stopped")

    def _edge_guards(self) -> dict[str, EdgeGuard]:
        """The connection gates of both listeners, by name (for metrics)."""
        guards = {"http": self.http_guard}
        if self.endpoint_server is not None:
            guards["websocket"] = self.endpoint_server.guard
        return {name: g for name, g in guards.items() if g is not None}

    def _store_health_changed(self, health: StoreHealth) -> None:
        """A store fault or its recovery becomes an event (the store logs it itself)."""
        if self.events is None:
            return
        if health.ok:
            self.events.emit("store_recovered", "warning", "store", "writes again", write_log=False)
        else:
            detail = health.reason or "cannot write"
            self.events.emit("store_fault", "error", "store", detail, write_log=False)

    async def _watch_store(self) -> None:
        """Probe the store with a tiny write: every 5 s, every second while it fails.

        So a full disk is reported within seconds even when nothing else writes, and
        its end is noticed without waiting for the next request.
        """
        assert self.store is not None
        store = self.store
        while True:
            await self.clock.sleep_us(_PROBE_OK_US if store.health.ok else _PROBE_FAILING_US)
            with contextlib.suppress(StoreError):
                await store.probe(self.clock.wall())

    def _store_path(self) -> str:
        path = self.config.store.path
        return path if path == ":memory:" else str(Path(path).expanduser())

    async def _drain_journal(self, timeout_s: float) -> None:
        """Write the final states still pending (the writer task is stopped by now)."""
        if self.announcer is None or self.journal is None:
            return
        pending = self.announcer.take_dirty()
        lost: list[str] = []
        for ann in pending:
            try:
                await self.journal.record(ann)
            except Exception as exc:
                lost.append(f"{ann.id} ({ann.state.value}): {exc}")
        if lost:
            log.error(
                "store: %d final state(s) could not be written at shutdown: %s",
                len(lost),
                "; ".join(lost),
            )

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
