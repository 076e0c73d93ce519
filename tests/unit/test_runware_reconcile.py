"""The client's bookkeeping after a resume and for billing, driven by frames: no sockets."""

from __future__ import annotations

from decimal import Decimal

from broadcaster.clock import FakeClock
from broadcaster.speech.engine import SynthesisMeta
from broadcaster.speech.runware.client import ClientSettings, RunwareClient
from broadcaster.speech.runware.errors import RunwareError
from broadcaster.speech.runware.schema import build_task, new_task_uuid


def a_task(text: str = "Platform two."):
    return build_task(
        taskType="audioInference",
        taskUUID=new_task_uuid(),
        model="alibaba:qwen@3-tts-1.7b-customvoice",
        speech={"text": text, "voice": "ryan", "language": "English", "speed": 1.0},
        outputType="base64Data",
        outputFormat="WAV",
        deliveryMethod="sync",
        includeCost=True,
    )


def client() -> RunwareClient:
    return RunwareClient(ClientSettings(api_key="k", ws_url="ws://unused"), clock=FakeClock())


async def test_after_a_resume_only_tasks_of_the_old_link_are_asked_about():
    c = client()
    old = c._register(a_task(), via_ws=True)
    c._link = 1  # the link it was sent on died; this is the resumed one
    new = c._register(a_task(), via_ws=True)
    new.link = 1
    rest = c._register(a_task(), via_ws=False)
    assert c.to_reconcile() == [old]
    assert rest not in c.to_reconcile()


async def test_unknown_to_the_server_means_resubmit_and_known_means_wait():
    c = client()
    lost, running, done = (c._register(a_task(), via_ws=True) for _ in range(3))
    c._link = 1
    for e in (lost, running, done):
        e.reconciling = True
    c._dispatch(
        {
            "errors": [
                {
                    "code": "taskNotFound",
                    "message": "No task",
                    "taskType": "getResponse",
                    "taskUUID": lost.task_uuid,
                }
            ]
        }
    )
    c._dispatch(
        {
            "data": [
                {
                    "taskType": "audioInference",
                    "taskUUID": running.task_uuid,
                    "status": "processing",
                    "progress": 40,
                }
            ]
        }
    )
    assert c._resend == [lost] and not lost.future.done()  # sent again, not failed
    assert not running.reconciling and not running.future.done()  # still being made: wait
    assert running not in c._resend
    # a getResponse "not found" for a task not being reconciled stays an error
    done.reconciling = False
    c._dispatch(
        {
            "errors": [
                {
                    "code": "taskNotFound",
                    "message": "gone",
                    "taskType": "getResponse",
                    "taskUUID": done.task_uuid,
                }
            ]
        }
    )
    assert isinstance(done.future.exception(), RunwareError)


def test_costs_are_summed_in_decimal_and_abandoned_tasks_count():
    meta = SynthesisMeta()
    meta.bill("a", 0.0001)
    meta.bill("b", 0.0002)
    meta.bill("c", None)  # abandoned: billed, cost unknown so far
    assert meta.cost == Decimal("0.0003")  # floats would give 0.00030000000000000003
    assert 0.0001 + 0.0002 != 0.0003
    assert meta.tasks_billed == 3
    meta.bill("c", 0.0001)  # its late answer
    meta.bill("a", 0.0001)  # a repeated item does not bill twice
    assert meta.cost == Decimal("0.0004") and meta.tasks_billed == 3


def test_heard_counts_only_billed_segments_handed_on():
    meta = SynthesisMeta()
    first, second = object(), object()
    meta.bill("t1", 0.0001)
    meta.segment_task[id(first)] = "t1"
    meta.bill("t2", 0.0001)
    meta.segment_task[id(second)] = "t2"
    meta.mark_heard(first)
    meta.mark_heard(object())  # a cached or fallback segment: nothing billed
    assert (meta.tasks_billed, meta.tasks_heard) == (2, 1)


async def test_a_late_result_of_an_abandoned_task_is_billed():
    c = client()
    meta = SynthesisMeta()
    entry = c._register(a_task(), via_ws=True, bill=meta.bill)
    c._settle(entry, sent=True)  # given up on before its answer
    assert meta.tasks_billed == 1 and meta.cost is None
    c._dispatch(
        {
            "data": [
                {
                    "taskType": "audioInference",
                    "taskUUID": entry.task_uuid,
                    "audioUUID": new_task_uuid(),
                    "audioBase64Data": "UklGRg==",
                    "cost": 0.00013,
                }
            ]
        }
    )
    assert meta.cost == Decimal("0.00013") and meta.tasks_heard == 0


async def test_a_refused_task_is_not_billed():
    c = client()
    meta = SynthesisMeta()
    entry = c._register(a_task(), via_ws=True, bill=meta.bill)
    c._dispatch(
        {
            "errors": [
                {
                    "code": "invalidSpeechVoice",
                    "message": "no",
                    "taskType": "audioInference",
                    "taskUUID": entry.task_uuid,
                }
            ]
        }
    )
    c._settle(entry, sent=True)
    assert meta.tasks_billed == 0


def test_readiness_reasons_read_the_client_health():
    from datetime import UTC, datetime

    from broadcaster.monitoring import speech_reasons
    from broadcaster.speech.runware.client import ClientHealth

    at = datetime(2026, 12, 4, 17, 0, tzinfo=UTC)
    refused = ClientHealth(
        authenticated=False,
        last_error="authentication failed (invalidApiKey: Invalid API key)",
        last_error_at=at,
    )
    assert speech_reasons("runware", False, None, refused) == [
        "runware: authentication failed (invalidApiKey: Invalid API key) since "
        "2026-12-04T17:00:00+00:00"
    ]
    down = ClientHealth(last_error="WebSocket unavailable: refused", last_error_at=at)
    assert speech_reasons("runware", False, None, down) == [
        "speech engine runware is not connected: WebSocket unavailable: refused since "
        "2026-12-04T17:00:00+00:00"
    ]
    disabled = ClientHealth(ws_disabled="invalid speech.runware.ws_url 'x'", last_error_at=at)
    assert speech_reasons("runware", False, None, disabled) == [
        "runware: invalid speech.runware.ws_url 'x'; tasks go over REST since "
        "2026-12-04T17:00:00+00:00"
    ]
    assert speech_reasons("runware", True, None, ClientHealth(connected=True)) == []


async def test_a_connection_task_that_dies_is_surfaced_at_once():
    c = client()
    faults: list[tuple[str, str, str]] = []
    c.set_fault_sink(lambda *a: faults.append(a))

    async def broken() -> None:
        raise RuntimeError("bug in the link code")

    c._connection_loop = broken  # type: ignore[method-assign]
    await c.start()
    try:
        assert c._conn_task is not None
        with __import__("contextlib").suppress(RuntimeError):
            await c._conn_task
        await __import__("asyncio").sleep(0)  # the done callback runs
        assert c.health.rest_fallback and "bug in the link code" in c.health.rest_fallback
        assert c.health.last_error == c.health.rest_fallback and c.health.last_error_at
        assert faults and faults[0][0] == "runware_fault"
        assert c._ws_failures >= 1  # tasks go over REST, without waiting for the link
    finally:
        await c.aclose()


async def test_abandoned_tasks_are_bounded():
    from broadcaster.speech.runware import client as client_module

    c = client()
    meta = SynthesisMeta()
    for _ in range(client_module._ABANDONED_LIMIT + 5):
        c._settle(c._register(a_task(), via_ws=True, bill=meta.bill), sent=True)
    assert len(c._abandoned) == client_module._ABANDONED_LIMIT
    assert meta.tasks_billed == client_module._ABANDONED_LIMIT + 5
