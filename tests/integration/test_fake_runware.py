"""The fake Runware server, exercised with raw websockets and aiohttp clients."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import av
import pytest
import websockets
from aiohttp import web
from websockets.asyncio.client import ClientConnection

from tests.fakes.runware import MODEL_ID, FakeRunware

pytestmark = pytest.mark.integration

KEY = "test-key"
TEXT = "Gate five is now boarding."


@pytest.fixture
async def fake() -> AsyncIterator[FakeRunware]:
    async with FakeRunware(api_key=KEY) as server:
        yield server


def make_task(**overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskType": "audioInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL_ID,
        "speech": {"text": TEXT, "voice": "ryan", "language": "English"},
        "outputType": "base64Data",
        "outputFormat": "WAV",
    }
    speech = overrides.pop("speech", None)
    if speech is not None:
        task["speech"] = {**task["speech"], **speech}
    for key, value in overrides.items():
        if value is None:
            task.pop(key, None)
        else:
            task[key] = value
    return task


async def send(ws: ClientConnection, *tasks: dict[str, Any]) -> None:
    await ws.send(json.dumps(list(tasks)))


async def recv(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(frame, dict)
    return frame


async def connect(fake: FakeRunware, session: str | None = None) -> tuple[ClientConnection, str]:
    ws = await websockets.connect(fake.ws_url, max_size=None)
    auth: dict[str, Any] = {"taskType": "authentication", "apiKey": KEY}
    if session is not None:
        auth["connectionSessionUUID"] = session
    await send(ws, auth)
    frame = await recv(ws)
    item = frame["data"][0]
    assert item["taskType"] == "authentication"
    return ws, item["connectionSessionUUID"]


def decode(data: bytes) -> tuple[str, int, int, int]:
    """(codec, rate, channels, decoded samples) of a complete audio file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.name, stream.rate, stream.channels, samples


async def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------------------
# Authentication, ping, framing
# --------------------------------------------------------------------------------------


async def test_auth_ok_and_ping(fake: FakeRunware) -> None:
    ws, session = await connect(fake)
    async with ws:
        assert uuid.UUID(session)
        await send(ws, {"taskType": "ping", "ping": True})
        assert await recv(ws) == {"data": [{"taskType": "ping", "pong": True}]}
    assert fake.pings == 1
    assert fake.connections == 1
    assert fake.auth_requests[0]["apiKey"] == KEY
    assert fake.auth_requests[0]["transport"] == "ws"


async def test_auth_bad_key_and_tasks_before_auth(fake: FakeRunware) -> None:
    async with websockets.connect(fake.ws_url) as ws:
        await send(ws, {"taskType": "ping", "ping": True})
        err = (await recv(ws))["errors"][0]
        assert err["code"] == "unauthorized"
        assert err["taskType"] == "ping"

        await send(ws, {"taskType": "authentication", "apiKey": "wrong"})
        err = (await recv(ws))["errors"][0]
        assert err["code"] == "invalidApiKey"
        assert err["parameter"] == "apiKey"
        assert err["taskType"] == "authentication"
        assert err["message"].startswith("Invalid API key")

        await send(ws, make_task())
        assert (await recv(ws))["errors"][0]["code"] == "unauthorized"

    fake.auth_fail = True
    async with websockets.connect(fake.ws_url) as ws:
        await send(ws, {"taskType": "authentication", "apiKey": KEY})
        assert (await recv(ws))["errors"][0]["code"] == "invalidApiKey"
    assert fake.syntheses == 0


async def test_invalid_payloads(fake: FakeRunware) -> None:
    ws, _ = await connect(fake)
    async with ws:
        for bad in ["not json", json.dumps({"taskType": "ping"}), "[]", "[1]"]:
            await ws.send(bad)
            err = (await recv(ws))["errors"][0]
            assert err["code"] == "invalidPayload"
        await send(ws, {"taskType": "imageInference", "taskUUID": str(uuid.uuid4())})
        err = (await recv(ws))["errors"][0]
        assert err["code"] == "invalidTaskType"
        assert err["parameter"] == "taskType"


async def test_refused_websocket_means_http_503(fake: FakeRunware) -> None:
    fake.refuse_websocket = True
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        await websockets.connect(fake.ws_url)
    assert info.value.response.status_code == 503


async def test_idle_connection_is_closed() -> None:
    async with FakeRunware(api_key=KEY, idle_timeout_s=0.3) as fake:
        ws, _ = await connect(fake)
        async with ws:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1000
        assert fake.idle_closes == 1


# --------------------------------------------------------------------------------------
# Synthesis and delivery
# --------------------------------------------------------------------------------------


async def test_sync_base64_wav_is_real_24k_audio(fake: FakeRunware) -> None:
    ws, _ = await connect(fake)
    task = make_task(includeCost=True)
    async with ws:
        await send(ws, task)
        item = (await recv(ws))["data"][0]
    assert item["taskType"] == "audioInference"
    assert item["taskUUID"] == task["taskUUID"]
    assert uuid.UUID(item["audioUUID"])
    assert item["cost"] == pytest.approx(0.0001 + 0.000002 * len(TEXT))
    assert set(item) == {"taskType", "taskUUID", "audioUUID", "audioBase64Data", "cost"}
    data = base64.b64decode(item["audioBase64Data"])
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    codec, rate, channels, samples = decode(data)
    assert (codec, rate, channels) == ("pcm_s16le", 24000, 1)
    assert samples > 24000 // 2  # a short sentence is well over half a second
    assert fake.syntheses == 1
    assert fake.tasks_received[0]["transport"] == "ws"
    assert fake.tasks_received[0]["taskUUID"] == task["taskUUID"]


@pytest.mark.parametrize(
    ("output_format", "audio_settings", "expected"),
    [
        ("WAV", None, ("pcm_s16le", 24000, 1)),
        ("FLAC", None, ("flac", 24000, 1)),
        ("MP3", None, ("mp3", 24000, 2)),
        ("MP3", {"sampleRate": 16000, "bitrate": 32, "channels": 1}, ("mp3", 16000, 1)),
        ("OGG", {"sampleRate": 48000, "bitrate": 128, "channels": 2}, ("vorbis", 48000, 2)),
        ("OGG", {"sampleRate": 24000, "bitrate": 48, "channels": 1}, ("vorbis", 24000, 2)),
    ],
)
async def test_output_formats_decode(
    fake: FakeRunware,
    output_format: str,
    audio_settings: dict[str, int] | None,
    expected: tuple[str, int, int],
) -> None:
    ws, _ = await connect(fake)
    async with ws:
        await send(ws, make_task(outputFormat=output_format, audioSettings=audio_settings))
        item = (await recv(ws))["data"][0]
    codec, rate, channels, samples = decode(base64.b64decode(item["audioBase64Data"]))
    exp_codec, exp_rate, exp_channels = expected
    assert codec.startswith(exp_codec)
    assert (rate, channels) == (exp_rate, exp_channels)
    assert samples > exp_rate // 2


async def test_url_download_and_ttl(fake: FakeRunware) -> None:
    ws, _ = await connect(fake)
    async with ws:
        await send(ws, make_task(outputType="URL", outputFormat="MP3", ttl=60))
        item = (await recv(ws))["data"][0]
    url = item["audioURL"]
    assert url == f"{fake.base_url}/audio/{item['audioUUID']}.mp3"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.content_type == "audio/mpeg"
            data = await resp.read()
        assert decode(data)[3] > 0
        fake.advance_clock(61)
        async with http.get(url) as resp:
            assert resp.status == 404


async def test_data_uri_and_number_results(fake: FakeRunware) -> None:
    ws, _ = await connect(fake)
    task = make_task(outputType="dataURI", outputFormat="FLAC", numberResults=2)
    async with ws:
        await send(ws, task)
        items = [(await recv(ws))["data"][0] for _ in range(2)]
    assert {i["taskUUID"] for i in items} == {task["taskUUID"]}
    assert len({i["audioUUID"] for i in items}) == 2
    for item in items:
        prefix = "data:audio/flac;base64,"
        assert item["audioDataURI"].startswith(prefix)
        assert decode(base64.b64decode(item["audioDataURI"][len(prefix) :]))[:3] == (
            "flac",
            24000,
            1,
        )
    assert fake.syntheses == 2


async def test_async_then_get_response(fake: FakeRunware) -> None:
    fake.set_latency(base_ms=300)
    ws, _ = await connect(fake)
    task = make_task(deliveryMethod="async")
    uid = task["taskUUID"]
    async with ws:
        await send(ws, task)
        assert await recv(ws) == {
            "data": [{"taskType": "audioInference", "taskUUID": uid, "status": "processing"}]
        }
        await send(ws, {"taskType": "getResponse", "taskUUID": uid})
        item = (await recv(ws))["data"][0]
        assert item["status"] == "processing"
        assert 0 <= item["progress"] < 100
        while True:
            await asyncio.sleep(0.1)
            await send(ws, {"taskType": "getResponse", "taskUUID": uid})
            item = (await recv(ws))["data"][0]
            if item["status"] != "processing":
                break
        assert item["status"] == "success"
        assert item["progress"] == 100
        assert decode(base64.b64decode(item["audioBase64Data"]))[1] == 24000
        # Nothing is pushed for async tasks.
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.2)
        await send(ws, {"taskType": "getResponse", "taskUUID": str(uuid.uuid4())})
        err = (await recv(ws))["errors"][0]
        assert err["code"] == "taskNotFound"
        assert err["taskType"] == "getResponse"
    assert fake.polls >= 3


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"taskUUID": "not-a-uuid"}, "invalidTaskUUID", "taskUUID"),
    ({"taskUUID": str(uuid.uuid1())}, "invalidTaskUUID", "taskUUID"),
    ({"seed": 1}, "unknownParameter", "seed"),
    ({"speech": {"pitch": 2}}, "unknownParameter", "speech.pitch"),
    ({"model": "alibaba:qwen@3-tts-1.7b-base"}, "invalidModel", "model"),
    ({"speech": {"text": ""}}, "invalidText", "speech.text"),
    ({"speech": {"text": "a" * 2001}}, "invalidText", "speech.text"),
    ({"speech": {"voice": "Vivian"}}, "invalidVoice", "speech.voice"),
    ({"speech": {"language": "english"}}, "invalidLanguage", "speech.language"),
    ({"speech": {"speed": 4.5}}, "invalidSpeed", "speech.speed"),
    ({"speech": {"speed": 0.975}}, "invalidSpeed", "speech.speed"),
    ({"numberResults": 5}, "invalidNumberResults", "numberResults"),
    ({"outputType": "URL", "ttl": 30}, "invalidTtl", "ttl"),
    ({"ttl": 120}, "unsupportedParameter", "ttl"),
    ({"outputFormat": "wav"}, "invalidOutputFormat", "outputFormat"),
    ({"audioSettings": {"bitrate": 64}}, "unsupportedParameter", "audioSettings"),
    (
        {"outputFormat": "MP3", "audioSettings": {"sampleRate": 24000, "bitrate": 320}},
        "invalidBitrate",
        "audioSettings.bitrate",
    ),
    (
        {
            "outputFormat": "OGG",
            "audioSettings": {"sampleRate": 8000, "channels": 1, "bitrate": 48},
        },
        "invalidBitrate",
        "audioSettings.bitrate",
    ),
    (
        {"outputFormat": "MP3", "audioSettings": {"sampleRate": 44000}},
        "invalidSampleRate",
        "audioSettings.sampleRate",
    ),
    (
        {"outputFormat": "OGG", "audioSettings": {"channels": 6}},
        "invalidChannels",
        "audioSettings.channels",
    ),
    ({"outputFormat": "MP3", "audioSettings": "64k"}, "invalidAudioSettings", "audioSettings"),
    ({"deliveryMethod": "stream"}, "invalidDeliveryMethod", "deliveryMethod"),
]


async def test_validation_errors(fake: FakeRunware) -> None:
    ws, _ = await connect(fake)
    async with ws:
        for change, code, parameter in INVALID:
            task = make_task(**json.loads(json.dumps(change)))
            await send(ws, task)
            frame = await recv(ws)
            assert "data" not in frame, change
            err = frame["errors"][0]
            assert (err["code"], err["parameter"]) == (code, parameter), change
            assert err["taskType"] == "audioInference"
            assert err["taskUUID"] == task["taskUUID"]
            assert err["message"]
        # A missing taskUUID cannot be echoed back.
        await send(ws, make_task(taskUUID=None))
        err = (await recv(ws))["errors"][0]
        assert err["code"] == "missingParameter"
        assert "taskUUID" not in err
    assert fake.syntheses == 0
    assert len(fake.tasks_received) == len(INVALID) + 1


async def test_duplicate_task_uuid_while_running(fake: FakeRunware) -> None:
    fake.stall_next()
    ws, _ = await connect(fake)
    task = make_task()
    async with ws:
        await send(ws, task)
        await send(ws, task)
        err = (await recv(ws))["errors"][0]
        assert err["code"] == "duplicateTaskUUID"
        assert err["taskUUID"] == task["taskUUID"]
        # The stalled task never answers.
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.3)
    assert fake.task_status(task["taskUUID"]) == "processing"


# --------------------------------------------------------------------------------------
# Faults: drops, resume, injected errors, latency
# --------------------------------------------------------------------------------------


async def test_resume_replays_result_completed_during_gap(fake: FakeRunware) -> None:
    fake.set_latency(base_ms=300)
    ws, session = await connect(fake)
    task = make_task()
    async with ws:
        await send(ws, task)
        await wait_for(lambda: len(fake.tasks_received) == 1)
        fake.drop_connections()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await recv(ws)
    await wait_for(lambda: fake.task_status(task["taskUUID"]) == "success")
    assert fake.syntheses == 1

    ws, resumed = await connect(fake, session)
    async with ws:
        assert resumed == session
        item = (await recv(ws))["data"][0]
        assert item["taskUUID"] == task["taskUUID"]
        assert decode(base64.b64decode(item["audioBase64Data"]))[3] > 0
        # Replayed once only.
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.2)
    assert fake.syntheses == 1
    assert len(fake.tasks_received) == 1
    assert fake.connections == 2


async def test_drop_on_accept_and_before_result(fake: FakeRunware) -> None:
    fake.drop_on_accept()
    ws, session = await connect(fake)
    first = make_task()
    async with ws:
        await send(ws, first)
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await recv(ws)
    await wait_for(lambda: fake.task_status(first["taskUUID"]) == "success")

    fake.drop_after_results(0)
    ws, resumed = await connect(fake, session)
    assert resumed == session
    second = make_task()
    async with ws:
        assert (await recv(ws))["data"][0]["taskUUID"] == first["taskUUID"]
        await send(ws, second)
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await recv(ws)

    ws, _ = await connect(fake, session)
    async with ws:
        assert (await recv(ws))["data"][0]["taskUUID"] == second["taskUUID"]
    assert fake.syntheses == 2


async def test_expired_session_gets_a_new_one(fake: FakeRunware) -> None:
    ws, session = await connect(fake)
    await ws.close()
    await wait_for(lambda: fake.open_connections == 0)
    fake.advance_clock(121)
    ws, other = await connect(fake, session)
    async with ws:
        assert other != session
    ws, unknown = await connect(fake, str(uuid.uuid4()))
    async with ws:
        assert unknown not in (session, other)


async def test_injected_errors_with_and_without_task_uuid(fake: FakeRunware) -> None:
    ws, _ = await connect(fake)
    async with ws:
        fake.fail_next("timeoutProvider", "The provider timed out.")
        task = make_task()
        await send(ws, task)
        err = (await recv(ws))["errors"][0]
        assert err == {
            "taskType": "audioInference",
            "taskUUID": task["taskUUID"],
            "code": "timeoutProvider",
            "message": "The provider timed out.",
        }

        fake.fail_next("internalServerError", "Boom.", with_task_uuid=False)
        await send(ws, make_task())
        err = (await recv(ws))["errors"][0]
        assert err["code"] == "internalServerError"
        assert "taskUUID" not in err

        # Async: acked, then the failure shows up in getResponse.
        fake.fail_next("inferenceError", "Generation failed.")
        task = make_task(deliveryMethod="async")
        await send(ws, task)
        assert (await recv(ws))["data"][0]["status"] == "processing"
        await wait_for(lambda: fake.task_status(task["taskUUID"]) == "error")
        await send(ws, {"taskType": "getResponse", "taskUUID": task["taskUUID"]})
        item = (await recv(ws))["data"][0]
        assert item["status"] == "error"
        assert item["error"]["code"] == "inferenceError"

        # Rejected at submission: no ack at all.
        fake.fail_next("rateLimitExceeded", "Queue full.", when="submit")
        task = make_task(deliveryMethod="async")
        await send(ws, task)
        err = (await recv(ws))["errors"][0]
        assert (err["code"], err["taskUUID"]) == ("rateLimitExceeded", task["taskUUID"])
    assert fake.syntheses == 0


async def test_latency_injection(fake: FakeRunware) -> None:
    fake.set_latency(base_ms=300, per_char_ms=4)
    expected_s = (300 + 4 * len(TEXT)) / 1000
    ws, _ = await connect(fake)
    async with ws:
        started = time.monotonic()
        await send(ws, make_task())
        await recv(ws)
        elapsed = time.monotonic() - started
    assert elapsed >= expected_s - 0.01


# --------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------


async def test_rest_sync_auth_and_errors(fake: FakeRunware) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        task = make_task(includeCost=True)
        async with http.post(fake.rest_url, json=[task], headers=bearer) as resp:
            assert resp.status == 200
            body = await resp.json()
        item = body["data"][0]
        assert item["taskUUID"] == task["taskUUID"]
        assert decode(base64.b64decode(item["audioBase64Data"]))[:3] == ("pcm_s16le", 24000, 1)
        assert fake.tasks_received[-1]["transport"] == "rest"

        # Auth by a leading authentication task.
        auth = {"taskType": "authentication", "apiKey": KEY}
        async with http.post(
            fake.rest_url, json=[auth, {"taskType": "ping", "ping": True}]
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"data": [{"taskType": "ping", "pong": True}]}

        async with http.post(fake.rest_url, json=[make_task()]) as resp:
            assert resp.status == 401
            assert (await resp.json())["errors"][0]["code"] == "missingApiKey"
        async with http.post(
            fake.rest_url, json=[make_task()], headers={"Authorization": "Bearer nope"}
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["errors"][0]["code"] == "invalidApiKey"

        async with http.post(
            fake.rest_url, json=[make_task(speech={"voice": "bob"})], headers=bearer
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["errors"][0]["parameter"] == "speech.voice"
        async with http.post(fake.rest_url, json={"not": "an array"}, headers=bearer) as resp:
            assert resp.status == 400
            assert (await resp.json())["errors"][0]["code"] == "invalidPayload"

        for code, status, explicit in [
            ("insufficientCredits", 402, 402),
            ("rateLimitExceeded", 429, None),
            ("serviceUnavailable", 503, None),
            ("timeoutProvider", 504, None),
        ]:
            fake.fail_next(code, "Injected.", http_status=explicit)
            task = make_task()
            async with http.post(fake.rest_url, json=[task], headers=bearer) as resp:
                assert resp.status == status
                err = (await resp.json())["errors"][0]
                assert (err["code"], err["taskUUID"]) == (code, task["taskUUID"])

        # Async over REST: ack, then getResponse.
        task = make_task(deliveryMethod="async", outputType="URL", outputFormat="WAV")
        async with http.post(fake.rest_url, json=[task], headers=bearer) as resp:
            assert resp.status == 200
            assert (await resp.json())["data"][0]["status"] == "processing"
        await wait_for(lambda: fake.task_status(task["taskUUID"]) == "success")
        poll = {"taskType": "getResponse", "taskUUID": task["taskUUID"]}
        async with http.post(fake.rest_url, json=[poll], headers=bearer) as resp:
            item = (await resp.json())["data"][0]
        assert item["status"] == "success"
        async with http.get(item["audioURL"]) as resp:
            assert resp.content_type == "audio/wav"
            assert decode(await resp.read())[1] == 24000
    assert fake.syntheses == 2


# --------------------------------------------------------------------------------------
# Webhook and upload
# --------------------------------------------------------------------------------------


async def test_webhook_and_upload(fake: FakeRunware) -> None:
    hooks: list[dict[str, Any]] = []
    uploads: list[tuple[str, bytes]] = []
    done = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        hooks.append(await request.json())
        done.set()
        return web.Response(status=200)

    async def upload(request: web.Request) -> web.Response:
        uploads.append((request.content_type, await request.read()))
        return web.Response(status=200)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/hook", hook)
    app.router.add_put("/upload/{name}", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        task = make_task(
            webhookURL=f"http://127.0.0.1:{port}/hook?token=abc",
            uploadEndpoint=f"http://127.0.0.1:{port}/upload/a.wav?sig=xyz",
        )
        ws, _ = await connect(fake)
        async with ws:
            await send(ws, task)
            item = (await recv(ws))["data"][0]
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await runner.cleanup()
    assert hooks == [item]
    assert len(uploads) == 1
    content_type, body = uploads[0]
    assert content_type == "audio/wav"
    assert body == base64.b64decode(item["audioBase64Data"])
    assert fake.uploads[0]["status"] == 200
    assert fake.webhook_deliveries[0]["status"] == 200


async def test_longest_text_arrives_in_one_large_frame(fake: FakeRunware) -> None:
    text = ("Attention please, the next train to the coast leaves from platform two. " * 28)[:2000]
    ws, _ = await connect(fake)
    async with ws:
        await send(ws, make_task(speech={"text": text}))
        raw = await asyncio.wait_for(ws.recv(), 20)
    assert len(raw) > 1024 * 1024  # clients must lift the websockets default max_size
    item = json.loads(raw)["data"][0]
    _, rate, _, samples = decode(base64.b64decode(item["audioBase64Data"]))
    assert samples / rate > 60
