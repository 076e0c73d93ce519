"""The production speech engine: Qwen3-TTS 1.7B CustomVoice through Runware.

Low-latency profile by default: WAV as base64 in the answer of a sync task
over the already-open WebSocket, so there is no second download and no lossy
decode. Each segment is one task with ``maxNewTokens`` sized to its text;
segments of an announcement are requested concurrently by the caller
(:mod:`broadcaster.speech.sequencer`) and played in order. Synthesized
segments are kept in a content-addressed on-disk cache, so recurring phrases
cost nothing and start at once, across restarts too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from broadcaster.audio.decode import AudioFileError, decode_audio_file, parse_pcm_wav
from broadcaster.clock import Clock
from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.engine import SpeechError, SynthesisMeta
from broadcaster.speech.runware.cache import SegmentCache, cache_key
from broadcaster.speech.runware.client import RunwareClient
from broadcaster.speech.runware.schema import (
    MODEL_ID,
    DeliveryMethod,
    OutputFormat,
    OutputType,
    TaskValidationError,
    build_task,
    decode_inline_audio,
    max_new_tokens_for,
    new_task_uuid,
)

log = logging.getLogger(__name__)

#: PCM handed on in pieces of about this long, like a streaming engine would.
_BLOCK_MS = 100


@dataclass(frozen=True, slots=True)
class RequestProfile:
    """How tasks are asked for. The defaults are the low-latency profile."""

    output_type: OutputType = OutputType.BASE64_DATA
    output_format: OutputFormat = OutputFormat.WAV
    delivery: DeliveryMethod = DeliveryMethod.SYNC
    include_cost: bool = True
    webhook_url: str | None = None
    upload_endpoint: str | None = None
    ttl_s: int | None = None


def decode_speech_audio(data: bytes) -> tuple[bytes, int]:
    """Mono s16 PCM of a result file: a plain PCM WAV (the default profile) is read
    straight from its data chunk; anything else goes through PyAV. Call in a thread."""
    plain = parse_pcm_wav(data)
    return plain if plain is not None else decode_audio_file(data)


class RunwareEngine:
    name = "runware"
    #: Qwen3-TTS speaks at 24 kHz (chimes are made at this rate to match).
    sample_rate_hz = 24000
    #: Runware's limit for speech.text on Qwen models.
    API_MAX_TEXT_CHARS = 2000

    def __init__(
        self,
        client: RunwareClient,
        *,
        clock: Clock,
        cache: SegmentCache | None = None,
        profile: RequestProfile | None = None,
        segment_max_chars: int = 300,
        concurrency: int = 4,
        segment_pause_ms: int = 250,
    ) -> None:
        self.client = client
        self.clock = clock
        self.cache = cache
        self.profile = profile or RequestProfile()
        #: Segments are short so the first can be requested (and heard) early.
        self.max_text_chars = min(segment_max_chars, self.API_MAX_TEXT_CHARS)
        #: The most one request may carry, for texts spoken whole (split = false).
        self.max_request_chars = self.API_MAX_TEXT_CHARS
        self.concurrency = concurrency
        #: Silence after each segment: the model ends a take without the pause a
        #: reader makes between sentences, and segments are joined back to back.
        self.segment_pause_ms = segment_pause_ms

    def task_fields(self, request: SpeechRequest) -> dict[str, object]:
        """The wire fields of the task for ``request`` (before validation)."""
        p = self.profile
        fields: dict[str, object] = {
            "taskType": "audioInference",
            "taskUUID": new_task_uuid(),
            "model": MODEL_ID,
            "speech": {
                "text": request.text,
                "voice": request.voice,
                "language": request.language,
                # As given: a speed off the 0.01 grid is refused by the check, never
                # rounded (config and API refuse it before it gets here).
                "speed": request.speed,
            },
            "settings": {
                # (speed clamped only for the estimate; the task check refuses it)
                "maxNewTokens": request.max_new_tokens
                or max_new_tokens_for(request.text, min(max(request.speed, 0.25), 4.0))
            },
            "outputType": p.output_type.value,
            "outputFormat": p.output_format.value,
            "deliveryMethod": p.delivery.value,
            "includeCost": p.include_cost,
        }
        if request.style:
            fields["positivePrompt"] = request.style
        if p.webhook_url:
            fields["webhookURL"] = p.webhook_url
        if p.upload_endpoint:
            fields["uploadEndpoint"] = p.upload_endpoint
        if p.ttl_s is not None and p.output_type is OutputType.URL:
            fields["ttl"] = p.ttl_s
        return fields

    def cache_key_for(self, request: SpeechRequest) -> str:
        return cache_key(
            model=MODEL_ID,
            text=request.text,
            voice=request.voice,
            language=request.language,
            speed=round(request.speed, 2),
            prompt=request.style or "",
            max_new_tokens=request.max_new_tokens or 0,
            output_format=self.profile.output_format.value,
        )

    async def synthesize(
        self, request: SpeechRequest, meta: SynthesisMeta | None = None
    ) -> AsyncIterator[PcmBlock]:
        meta = meta if meta is not None else SynthesisMeta()
        try:
            task = build_task(**self.task_fields(request))
        except TaskValidationError as exc:
            # Refused locally, with the field named: nothing reaches the network.
            raise SpeechError(f"invalid request field {exc.field}: {exc}") from None
        key = self.cache_key_for(request)
        data = await asyncio.to_thread(self.cache.get, key) if self.cache else None
        if data is not None:
            meta.cache_hits += 1
        else:
            # Every task sent is billed into ``meta`` (a late answer to one given up
            # on too); the segment remembers which task's audio it carries.
            results = await self.client.run(task, bill=meta.bill, note=meta.notes.append)
            meta.requests += 1
            result = results[0]
            meta.bill(result.task_uuid, result.cost)
            meta.segment_task[id(request)] = result.task_uuid
            # base64 of a WAV is megabytes: decoded in a worker thread, never on the loop.
            inline = await asyncio.to_thread(decode_inline_audio, result)
            if inline is not None:
                data = inline
            elif result.audio_url is not None:
                data = await self.client.download(result.audio_url)
            else:
                raise SpeechError("runware answered without audio")
            if self.cache is not None:
                await asyncio.to_thread(self.cache.put, key, data)
        try:
            pcm, rate = await asyncio.to_thread(decode_speech_audio, data)
        except AudioFileError as exc:
            raise SpeechError(f"runware audio unreadable: {exc}", retryable=True) from None
        pcm += bytes(2 * (rate * self.segment_pause_ms // 1000))
        step = rate * _BLOCK_MS // 1000 * 2
        for start in range(0, len(pcm), step):
            yield PcmBlock(pcm[start : start + step], rate)

    async def warm(self, request: SpeechRequest) -> tuple[bool, float | None]:
        """Put ``request``'s audio in the cache (the warm-up); ``(fetched, cost)``:
        ``fetched`` is False when it was there already. Raises ``SpeechError`` or
        ``RunwareError``; without a cache there is nothing to warm."""
        if self.cache is None:
            return False, None
        key = self.cache_key_for(request)
        if await asyncio.to_thread(self.cache.__contains__, key):
            return False, None
        try:
            task = build_task(**self.task_fields(request))
        except TaskValidationError as exc:
            raise SpeechError(f"invalid request field {exc.field}: {exc}") from None
        result = (await self.client.run(task))[0]
        data = decode_inline_audio(result)
        if data is None:
            if result.audio_url is None:
                raise SpeechError("runware answered without audio")
            data = await self.client.download(result.audio_url)
        await asyncio.to_thread(self.cache.put, key, data)
        return True, result.cost

    async def aclose(self) -> None:
        await self.client.aclose()
