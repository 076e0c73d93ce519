"""Connection-level faults of the Runware client against the fake server: a drop that
loses tasks in flight, a wrong key, an invalid WebSocket URL; and billing of every task."""

from __future__ import annotations

import asyncio
import time

import pytest

from broadcaster.clock import SystemClock
from broadcaster.model import SpeechRequest
from broadcaster.speech.engine import SynthesisMeta
from broadcaster.speech.runware.client import RunwareClient
from broadcaster.speech.runware.engine import RunwareEngine
from broadcaster.speech.runware.errors import ErrorCategory, RunwareError
from broadcaster.speech.runware.schema import decode_inline_audio
from tests.integration.test_runware import KEY, settings, task

pytestmark = pytest.mark.integration


@pytest.fixture
async def fake():
    from tests.fakes.runware import FakeRunware

    async with FakeRunware(api_key=KEY) as f:
        yield f


async def test_drop_after_the_nth_task_loses_nothing_and_bills_nothing_twice(fake):
    # Four tasks written back to back; the server resets the socket after the first,
    # so the other three were written into a dying socket and never reached it.
    fake.set_latency(base_ms=200)
    fake.drop_after_tasks(1)
    c = RunwareClient(settings(fake, task_timeout_s=30), clock=SystemClock())
    await c.start()
    try:
        texts = [f"Segment number {i}." for i in range(4)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(c.run(task(t)) for t in texts))
        took = time.perf_counter() - t0
    finally:
        await c.aclose()
    assert all(decode_inline_audio(r) for [r] in results)
    assert fake.drops == 1 and c.stats["ws_resumes"] >= 1
    # every task made exactly once: none lost, none billed twice
    uuids = [t["taskUUID"] for t in fake.tasks_received]
    assert len(uuids) == len(set(uuids)) == 4
    assert fake.syntheses == 4
    # the tasks behind the drop were found unknown by getResponse and sent again
    assert c.stats["reconciled"] >= 1 and c.stats["resubmitted"] >= 1
    assert took < 10  # reconciled, not found by the 30 s per-attempt timeout
    # a drop is the last error, not a REST fallback
    assert c.health.last_error and c.health.last_error.startswith("WebSocket dropped")
    assert c.health.rest_fallback is None


async def test_a_wrong_key_is_a_distinct_health_state(fake):
    c = RunwareClient(settings(fake, api_key="wrong"), clock=SystemClock())
    faults: list[tuple[str, str, str]] = []
    c.set_fault_sink(lambda *a: faults.append(a))
    await c.start()
    try:
        with pytest.raises(RunwareError) as err:
            await c.run(task())
        assert err.value.category is ErrorCategory.AUTH
        h = c.health
        assert h.authenticated is False and h.connected is False
        assert h.last_error is not None and "authentication failed" in h.last_error
        assert "Invalid API key" in h.last_error and h.last_error_at is not None
        assert faults and faults[0][0] == "runware_fault"
    finally:
        await c.aclose()


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/v1", "ws://127.0.0.1:port/v1"])
async def test_an_invalid_ws_url_leaves_no_dead_task_and_uses_rest_at_once(fake, url):
    c = RunwareClient(settings(fake, ws_url=url), clock=SystemClock())
    faults: list[tuple[str, str, str]] = []
    c.set_fault_sink(lambda *a: faults.append(a))
    await c.start()
    try:
        t0 = time.perf_counter()
        [result] = await c.run(task())
        took = time.perf_counter() - t0
        assert result.audio_base64 and fake.tasks_received[0]["transport"] == "rest"
        assert took < 2  # no wait for a WebSocket that can never open
        assert c.health.ws_disabled and "ws_url" in c.health.ws_disabled
        assert c.health.rest_fallback == c.health.ws_disabled
        assert faults and "ws_url" in faults[0][2]
    finally:
        await c.aclose()  # no traceback: the connection task ended cleanly


async def test_a_superseded_task_is_billed_when_its_late_answer_comes(fake):
    # A task given up on (cancelled, as the chain does when it falls back) is still
    # made and billed by the server: its cost lands in the meta when it arrives.
    fake.set_latency(base_ms=400)
    c = RunwareClient(settings(fake), clock=SystemClock())
    await c.start()
    try:
        eng = RunwareEngine(c, clock=SystemClock())
        meta = SynthesisMeta()
        req = SpeechRequest(text="Mind the gap.", voice="ryan", language="English")
        run = asyncio.create_task(anext(aiter(eng.synthesize(req, meta))))
        while not fake.tasks_received:
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert meta.tasks_billed == 1 and meta.cost is None  # sent, cost not known yet
        for _ in range(200):
            if meta.cost is not None:
                break
            await asyncio.sleep(0.01)
        assert str(meta.cost) == repr(fake.cost_for("Mind the gap."))
        assert meta.tasks_heard == 0
    finally:
        await c.aclose()


async def test_a_recovered_websocket_is_an_event_and_clears_the_fallback(fake):
    fake.refuse_websocket = True
    c = RunwareClient(settings(fake), clock=SystemClock())
    faults: list[tuple[str, str, str]] = []
    c.set_fault_sink(lambda *a: faults.append(a))
    await c.start()
    try:
        [result] = await c.run(task())
        assert result.audio_base64 and c.health.rest_fallback
        fake.refuse_websocket = False
        for _ in range(200):
            if c.connected:
                break
            await asyncio.sleep(0.02)
        assert c.connected and c.health.rest_fallback is None and c.health.authenticated
        assert [k for k, _, _ in faults] == ["runware_fault", "runware_recovered"]
    finally:
        await c.aclose()


async def test_a_task_asked_during_a_resume_waits_for_the_websocket(fake):
    c = RunwareClient(settings(fake), clock=SystemClock())
    await c.start()
    try:
        [first] = await c.run(task())
        fake.drop_connections()  # TCP reset: the client resumes in a moment
        while c.connected:
            await asyncio.sleep(0.005)
        [second] = await c.run(task("Platform three."))
        assert first.audio_base64 and second.audio_base64
        assert [t["transport"] for t in fake.tasks_received] == ["ws", "ws"]
        assert c.stats["ws_resumes"] >= 1 and c.health.rest_fallback is None
    finally:
        await c.aclose()
