"""Cache warm-up: the fixed texts of the templates synthesized ahead, in the background.

A template whose text does not depend on the request (no variables, or rendered with
their default values) is known at start. Its segments, exactly as an announcement of
it would ask for them (same split, voice, language, speed, style, token cap), are
synthesized into the Runware segment cache, so a later announcement of it is a cache
hit: no Runware request, first audio at once. Translations are warmed too.

Only for Runware: the cache is Runware's, and the embedded espeak-ng engine needs
none (it speaks ~1000× faster than real time).

:func:`warm_requests` is pure (what to warm); :class:`WarmUp` runs it, a few tasks at
a time, and never raises: failures are counted and summed up in one log line. The
service owns the task that runs it and cancels it at stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from broadcaster.announcements import compose_spec, spoken_language
from broadcaster.clock import Clock
from broadcaster.config import Config, TemplateConfig
from broadcaster.model import SpeechRequest
from broadcaster.scheduling.templates import TemplateError
from broadcaster.speech.runware.engine import RunwareEngine
from broadcaster.speech.segmenter import split_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WarmItem:
    template: str
    request: SpeechRequest


def warm_requests(
    config: Config,
    *,
    max_text_chars: int,
    max_request_chars: int,
    templates: Sequence[TemplateConfig] | None = None,
) -> tuple[list[WarmItem], list[str]]:
    """The segments of every template with a fixed text, in order (default: the
    config's; the service passes its template registry's, API ones too), each once;
    and the names of the templates skipped (a variable without a default)."""
    items: list[WarmItem] = []
    skipped: list[str] = []
    seen: set[SpeechRequest] = set()
    for tpl in config.templates if templates is None else templates:
        language = spoken_language(config, tpl, None)
        try:
            text, also = tpl.render_all({}, language)
        except TemplateError:
            skipped.append(tpl.name)  # its text depends on the request
            continue
        zones = config.expand_zones(tpl.zones)
        spec = compose_spec(config, tpl, text=text, zones=zones, language=language, also=also)
        for lang, part in ((spec.language, spec.text), *spec.also):
            # As the announcer splits (Announcer._segments): whole when asked and it fits.
            if not spec.split and len(part) <= max_request_chars:
                segments = [part]
            else:
                segments = split_text(part, max_text_chars, config.speech.first_segment_max_chars)
            for segment in segments:
                request = SpeechRequest(
                    text=segment,
                    voice=spec.voice,
                    language=lang,
                    speed=spec.speed,
                    style=spec.style,
                    max_new_tokens=spec.max_new_tokens,
                )
                if request not in seen:
                    seen.add(request)
                    items.append(WarmItem(tpl.name, request))
    return items, skipped


@dataclass(slots=True)
class WarmUpReport:
    """What a warm-up did (``Service.warm_up``; its log line at the end)."""

    #: Tasks at once (the config's warm_up_concurrency, below the client's max_in_flight).
    concurrency: int = 1
    templates: int = 0
    skipped: list[str] = field(default_factory=list)
    segments: int = 0
    already_cached: int = 0
    synthesized: int = 0
    failed: int = 0
    first_error: str | None = None
    cost_usd: Decimal = Decimal(0)
    started_us: int | None = None
    finished_us: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def elapsed_s(self) -> float | None:
        if self.started_us is None or self.finished_us is None:
            return None
        return (self.finished_us - self.started_us) / 1e6

    def as_dict(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "templates": self.templates,
            "skipped": list(self.skipped),
            "segments": self.segments,
            "already_cached": self.already_cached,
            "synthesized": self.synthesized,
            "failed": self.failed,
            "first_error": self.first_error,
            "cost_usd": str(self.cost_usd),
            "elapsed_s": self.elapsed_s,
            "done": self.done.is_set(),
        }


class WarmUp:
    """Runs a warm-up with at most ``concurrency`` Runware tasks at once."""

    def __init__(
        self,
        config: Config,
        engine: RunwareEngine,
        *,
        clock: Clock,
        concurrency: int = 1,
        templates: Sequence[TemplateConfig] | None = None,
    ) -> None:
        self.config = config
        self.templates = templates
        self.engine = engine
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.report = WarmUpReport(concurrency=self.concurrency)

    async def run(self) -> WarmUpReport:
        report = self.report
        report.started_us = self.clock.monotonic_us()
        items, report.skipped = warm_requests(
            self.config,
            max_text_chars=self.engine.max_text_chars,
            max_request_chars=self.engine.max_request_chars,
            templates=self.templates,
        )
        report.templates = len({item.template for item in items})
        report.segments = len(items)
        log.info(
            "speech warm-up: %d segment(s) of %d template(s), %d at a time%s",
            report.segments,
            report.templates,
            self.concurrency,
            f" (skipped, a variable without a default: {', '.join(report.skipped)})"
            if report.skipped
            else "",
        )
        queue: asyncio.Queue[WarmItem] = asyncio.Queue()  # bounded by the templates
        for item in items:
            queue.put_nowait(item)
        async with asyncio.TaskGroup() as group:
            for i in range(min(self.concurrency, len(items))):
                group.create_task(self._worker(queue), name=f"speech-warm-up-{i}")
        report.finished_us = self.clock.monotonic_us()
        report.done.set()
        log_at = logging.WARNING if report.failed else logging.INFO
        log.log(
            log_at,
            "speech warm-up done in %.1f s: %d synthesized, %d already cached, %d failed%s; "
            "cost %s USD",
            report.elapsed_s or 0.0,
            report.synthesized,
            report.already_cached,
            report.failed,
            f" (first: {report.first_error})" if report.first_error else "",
            report.cost_usd,
        )
        return report

    async def _worker(self, queue: asyncio.Queue[WarmItem]) -> None:
        report = self.report
        while not queue.empty():
            item = queue.get_nowait()
            try:
                fetched, cost = await self.engine.warm(item.request)
            except Exception as exc:  # counted, summed up once; never ends the warm-up
                report.failed += 1
                if report.first_error is None:
                    report.first_error = f"{item.template}: {exc}"
                continue
            if fetched:
                report.synthesized += 1
                if cost is not None:
                    report.cost_usd += Decimal(str(cost))
            else:
                report.already_cached += 1
