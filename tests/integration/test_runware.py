"""The Runware client and engine against the local fake server (real sockets, real audio)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broadcaster.clock import SystemClock
from broadcaster.model import SpeechRequest
from broadcaster.speech.engine import SpeechError, SynthesisMeta
from broadcaster.speech.runware.cache import SegmentCache
from broadcaster.speech.runware.client import ClientSettings, RunwareClient
from broadcaster.speech.runware.engine import RequestProfile, RunwareEngine
from broadcaster.speech.runware.errors import ErrorCategory, RunwareError
from broadcaster.speech.runware.schema import (
    DeliveryMethod,
    OutputFormat,
    OutputType,
    build_task,
    decode_inline_audio,
    new_task_uuid,
)
from tests.fakes.runware import FakeRunware

pytestmark = pytest.mark.integration

KEY = "test-key"


@pytest.fixture
async def fake():
    async with FakeRunware(api_key=KEY) as f:
        yield f


def settings(fake, **over):
    base = dict(
        api_key=KEY,
        ws_url=fake.ws_url,
        rest_url=fake.rest_url,
        task_timeout_s=10,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        poll_initial_s=0.05,
        poll_max_s=0.1,
        connect_timeout_s=2,
    )
    base.update(over)
    return ClientSettings(**base)


@pytest.fixture
async def client(fake):
    c = RunwareClient(settings(fake), clock=SystemClock())
    await c.start()
    yield c
    await c.aclose()


def task(text="Platform two.", **over):
    fields = dict(
        taskType="audioInference",
        taskUUID=new_task_uuid(),
        model="alibaba:qwen@3-tts-1.7b-customvoice",
        speech={"text": text, "voice": "ryan", "language": "English", "speed": 1.0},
        outputType="base64Data",
        outputFormat="WAV",
        deliveryMethod="sync",
        includeCost=True,
    )
    fields.update(over)
    return build_task(**fields)


async def test_sync_base64_wav_with_cost(client, fake):
    [result] = await client.run(task())
    assert result.cost == pytest.approx(fake.cost_for("Platform two."))
    assert decode_inline_audio(result)[:4] == b"RIFF"
    assert client.stats["tasks_ws"] == 1 and fake.tasks_received[0]["transport"] == "ws"


async def test_resume_after_a_drop_does_not_resubmit_or_pay_twice(client, fake):
    fake.set_latency(base_ms=300)
    fake.drop_on_accept(1)  # the link dies right after the task is accepted
    [result] = await client.run(task())
    assert decode_inline_audio(result)
    assert len(fake.tasks_received) == 1  # never sent again
    assert fake.syntheses == 1  # never paid twice
    assert client.stats["ws_resumes"] >= 1 and client.stats["ws_connects"] >= 2


async def test_retryable_errors_are_retried_with_a_fresh_task_uuid(client, fake):
    fake.fail_next("inferenceError", "the provider had a hiccup")
    [result] = await client.run(task())
    assert result.audio_base64
    uuids = [t["taskUUID"] for t in fake.tasks_received]
    assert len(uuids) == 2 and uuids[0] != uuids[1]
    assert client.stats["retries"] == 1


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("insufficientCredits", ErrorCategory.QUOTA),
        ("contentPolicyViolation", ErrorCategory.SAFETY),
    ],
)
async def test_non_retryable_errors_reach_the_caller_with_runwares_message(
    client, fake, code, category
):
    fake.fail_next(code, f"Runware says {code}")
    with pytest.raises(RunwareError) as err:
        await client.run(task())
    assert err.value.category is category and not err.value.retryable
    assert f"Runware says {code}" in str(err.value)
    assert len(fake.tasks_received) == 1


async def test_an_error_naming_no_task_fails_nothing(fake):
    c = RunwareClient(settings(fake, task_timeout_s=1.5, max_attempts=2), clock=SystemClock())
    await c.start()
    try:
        fake.set_latency(base_ms=200)
        fake.fail_next("internalServerError", "something broke", with_task_uuid=False)
        first, second = await asyncio.gather(
            c.run(task("First one.")), c.run(task("Second one.")), return_exceptions=True
        )
        # Whichever task drew the unroutable error timed out and was retried; both succeed.
        assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
        assert c.stats["unroutable_errors"] == 1
    finally:
        await c.aclose()


async def test_async_delivery_polls_get_response(client, fake):
    fake.set_latency(base_ms=150)
    [result] = await client.run(task(deliveryMethod="async"))
    assert decode_inline_audio(result)
    assert fake.polls >= 1


async def test_url_output_is_downloaded_and_data_uri_decoded(client, fake):
    [url_result] = await client.run(task(outputType="URL"))
    assert url_result.audio_url.startswith(fake.base_url)
    data = await client.download(url_result.audio_url)
    assert data[:4] == b"RIFF"
    [uri_result] = await client.run(task(outputType="dataURI"))
    assert decode_inline_audio(uri_result)[:4] == b"RIFF"


async def test_rest_is_used_when_the_websocket_cannot_be_established(fake):
    fake.refuse_websocket = True
    c = RunwareClient(settings(fake), clock=SystemClock())
    await c.start()
    try:
        [result] = await c.run(task())
        assert result.audio_base64
        assert c.stats["tasks_rest"] == 1 and fake.tasks_received[0]["transport"] == "rest"
    finally:
        await c.aclose()


async def test_bad_key_is_an_auth_error_not_retried(fake):
    c = RunwareClient(settings(fake, api_key="wrong"), clock=SystemClock())
    await c.start()
    try:
        with pytest.raises(RunwareError) as err:
            await c.run(task())
        assert err.value.category is ErrorCategory.AUTH and "Invalid API key" in str(err.value)
        assert fake.tasks_received == []
    finally:
        await c.aclose()


async def test_cancelling_a_run_leaves_nothing_pending(client, fake):
    fake.stall_next(1)
    running = asyncio.create_task(client.run(task()))
    while not fake.tasks_received:
        await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert client._pending == {}
    [result] = await client.run(task())  # the client is still fine
    assert result.audio_base64


def engine(client, tmp_path: Path | None = None, **profile):
    cache = SegmentCache(tmp_path, 10_000_000) if tmp_path else None
    return RunwareEngine(
        client, clock=SystemClock(), cache=cache, profile=RequestProfile(**profile)
    )


async def pcm_of(eng, request, meta=None):
    blocks = [b async for b in eng.synthesize(request, meta)]
    return b"".join(b.samples for b in blocks), blocks[0].sample_rate_hz


@pytest.mark.parametrize("fmt", list(OutputFormat))
async def test_every_output_format_decodes_through_pyav(client, fmt):
    eng = engine(client, output_format=fmt)
    eng.segment_pause_ms = 0
    pcm, rate = await pcm_of(eng, SpeechRequest(text="Mind the gap.", voice="serena"))
    seconds = len(pcm) / 2 / rate
    assert 0.5 < seconds < 5, (fmt, seconds)


async def test_invalid_request_fails_locally_naming_the_field(client, fake):
    eng = engine(client)
    with pytest.raises(SpeechError, match=r"speech\.speed"):
        await pcm_of(eng, SpeechRequest(text="Too fast.", speed=4.5))
    assert fake.tasks_received == []


async def test_cache_makes_repeats_free_and_survives_a_restart(client, fake, tmp_path):
    request = SpeechRequest(text="The next train to Greenhaven departs from platform two.")
    meta = SynthesisMeta()
    first, _ = await pcm_of(engine(client, tmp_path), request, meta)
    assert fake.syntheses == 1 and meta.requests == 1 and meta.cost > 0
    # a new engine and cache instance over the same folder: as after a restart
    meta2 = SynthesisMeta()
    again, _ = await pcm_of(engine(client, tmp_path), request, meta2)
    assert again == first
    assert fake.syntheses == 1 and meta2.cache_hits == 1 and meta2.requests == 0
    # anything that changes the audio misses
    await pcm_of(engine(client, tmp_path), SpeechRequest(text=request.text, speed=1.1))
    assert fake.syntheses == 2


async def test_async_and_url_profile_end_to_end(client, fake):
    eng = engine(client, output_type=OutputType.URL, delivery=DeliveryMethod.ASYNC)
    pcm, _ = await pcm_of(eng, SpeechRequest(text="Doors closing."))
    assert pcm and fake.polls >= 1


async def test_webhook_and_upload_endpoint_are_passed_through(client, fake):
    from aiohttp import web

    received: dict[str, list] = {"webhook": [], "upload": []}

    async def hook(request):
        received["webhook"].append(await request.json())
        return web.Response(status=204)

    async def put(request):
        received["upload"].append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_put("/upload/clip.wav", put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        eng = engine(
            client,
            webhook_url=f"http://127.0.0.1:{port}/hook",
            upload_endpoint=f"http://127.0.0.1:{port}/upload/clip.wav",
        )
        pcm, _ = await pcm_of(eng, SpeechRequest(text="Last call."))
        assert pcm
        sent = fake.tasks_received[-1]
        assert sent["webhookURL"].endswith("/hook") and sent["uploadEndpoint"].endswith("clip.wav")
        for _ in range(200):
            if received["webhook"] and received["upload"]:
                break
            await asyncio.sleep(0.01)
        assert received["webhook"][0]["taskUUID"] == sent["taskUUID"]
        assert received["upload"][0][:4] == b"RIFF"
    finally:
        await runner.cleanup()
