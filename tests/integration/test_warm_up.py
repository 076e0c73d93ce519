"""Issue 9: the demo's templates are synthesized into the Runware cache at start, in
the background, so they play at once with no Runware request (the local fake, at a
realistic 400 ms + 4 ms/char)."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from broadcaster.app import Service
from broadcaster.config import load_config
from broadcaster.speech.runware.warmup import warm_requests
from tests.fakes.runware import FakeRunware

from .conftest import Harness
from .test_runware_service import runware_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BASE_MS, PER_CHAR_MS = 400, 4


def demo_on_runware(fake: FakeRunware, tmp_path: Path, **runware: object) -> Service:
    demo = load_config(ROOT / "configs" / "demo.toml")
    cfg = runware_config(fake, tmp_path / "cache")
    templates = [t.model_copy(update={"zones": ["hall"]}) for t in demo.templates]
    rw = cfg.speech.runware.model_copy(update=runware)
    speech = cfg.speech.model_copy(update={"runware": rw})
    cfg = cfg.model_copy(update={"templates": templates, "speech": speech})
    return Service(cfg, environ={"RUNWARE_API_KEY": "test-key"})


@pytest.fixture
async def fake():
    async with FakeRunware(api_key="test-key") as f:
        f.set_latency(base_ms=BASE_MS, per_char_ms=PER_CHAR_MS)
        yield f


async def test_warmed_templates_play_from_the_cache_with_no_runware_request(fake, tmp_path):
    service = demo_on_runware(fake, tmp_path)
    await service.start()
    h = Harness(service, tmp_path)
    try:
        report = service.warm_up
        assert report is not None
        # Start-up did not wait for it (each task takes >= 400 ms at the fake).
        assert not report.done.is_set()
        await asyncio.wait_for(report.done.wait(), 120)
        assert report.failed == 0 and report.skipped == []
        # every demo template: all variables have defaults
        assert report.templates == len(load_config(ROOT / "configs" / "demo.toml").templates)
        assert report.synthesized == report.segments == len(fake.tasks_received)
        expected = sum(
            Decimal(str(fake.cost_for(t["speech"]["text"]))) for t in fake.tasks_received
        )
        assert report.cost_usd == expected
        # Two tasks at a time at most (warm_up_concurrency = 2, the default).
        assert report.elapsed_s is not None
        serial_s = sum(
            (BASE_MS + PER_CHAR_MS * len(t["speech"]["text"])) / 1000 for t in fake.tasks_received
        )
        assert report.elapsed_s >= serial_s / 2
        sent = len(fake.tasks_received)
        # What Runware would take for each template's first segment (the fake's latency).
        engine = service.engine
        items, _ = warm_requests(
            service.config,
            max_text_chars=engine.max_text_chars,
            max_request_chars=engine.max_request_chars,  # type: ignore[attr-defined]
        )
        runware_ms = {}
        for item in items:
            runware_ms.setdefault(item.template, fake.latency_ms(item.request.text))

        await h.endpoint("ep-a", ["hall"], ["pcm_s16le/24000"])
        # Played whole: the shortest fixed template. Its first audio comes faster than
        # Runware could have made even its first segment.
        status, created = await h.post({"template": "platform-safety"})
        assert status == 202, created
        final = await h.wait_final(created["id"], 60)
        assert final["state"] == "finished", final
        assert final["engine"] == "runware" and not final["warnings"], final
        assert final["speech_requests"] == 0, final
        assert final["cache_hits"] == final["segments"] >= 1, final
        assert final["first_audio_ms"] < runware_ms["platform-safety"], final
        # The seed's bulletin (one 475-character take), a translated one and one with
        # default variables: their first seconds are heard, then they are cancelled.
        for template in ("midnight-train-delay", "no-smoking", "departure"):
            status, created = await h.post({"template": template})
            assert status == 202, created
            for _ in range(600):
                _, record = await h.get(f"/v1/announcements/{created['id']}")
                if record["first_audio_ms"] is not None:
                    break
                await asyncio.sleep(0.05)
            assert record["first_audio_ms"] < runware_ms[template], record
            await asyncio.sleep(1.0)
            await h.post({}, path=f"/v1/announcements/{created['id']}/cancel")
            final = await h.wait_final(created["id"], 30)
            assert final["speech_requests"] == 0 and final["cache_hits"] >= 1, final
        assert len(fake.tasks_received) == sent  # not one Runware request
        # Other variables: a different text, so Runware is asked (the cache is exact).
        status, created = await h.post(
            {"template": "departure", "variables": {"destination": "Westbridge"}}
        )
        for _ in range(600):  # the new text is asked of Runware (the cache is exact)
            if len(fake.tasks_received) > sent:
                break
            await asyncio.sleep(0.05)
        assert "Westbridge" in fake.tasks_received[sent]["speech"]["text"]
        await h.post({}, path=f"/v1/announcements/{created['id']}/cancel")
        await h.wait_final(created["id"], 30)
    finally:
        await h.close()
        await service.stop()


async def test_a_restart_finds_the_cache_warm_and_sends_nothing(fake, tmp_path):
    fake.set_latency()
    service = demo_on_runware(fake, tmp_path)
    await service.start()
    try:
        assert service.warm_up is not None
        await asyncio.wait_for(service.warm_up.done.wait(), 120)
        sent = len(fake.tasks_received)
    finally:
        await service.stop()
    again = demo_on_runware(fake, tmp_path)
    await again.start()
    try:
        assert again.warm_up is not None
        await asyncio.wait_for(again.warm_up.done.wait(), 30)
        assert again.warm_up.already_cached == again.warm_up.segments == sent
        assert again.warm_up.synthesized == 0 and len(fake.tasks_received) == sent
    finally:
        await again.stop()


async def test_warm_up_failures_are_counted_and_logged_once(fake, tmp_path, caplog):
    fake.set_latency()
    fake.fail_next("invalidSpeed", "refused for the test", count=1000, when="submit")
    service = demo_on_runware(fake, tmp_path)
    caplog.set_level(logging.INFO, logger="broadcaster.speech.runware.warmup")
    await service.start()
    try:
        assert service.warm_up is not None
        await asyncio.wait_for(service.warm_up.done.wait(), 60)
        report = service.warm_up
        assert report.failed == report.segments > 0 and report.synthesized == 0
        assert report.cost_usd == 0
        assert "refused for the test" in (report.first_error or "")
        lines = [r for r in caplog.records if r.name.endswith("warmup")]
        warnings = [r for r in lines if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in lines]
        assert f"{report.failed} failed" in warnings[0].getMessage()
    finally:
        await service.stop()


async def test_the_warm_up_is_cancelled_at_stop(fake, tmp_path):
    fake.stall_next(1000)
    service = demo_on_runware(fake, tmp_path)
    await service.start()
    task = service._warm_up_task
    assert task is not None and not task.done()
    await asyncio.wait_for(service.stop(), 10)
    assert task.cancelled() and service._warm_up_task is None
    assert service.warm_up is not None and not service.warm_up.done.is_set()


async def test_the_warm_up_stays_below_the_clients_limit(fake, tmp_path):
    fake.stall_next(1000)
    service = demo_on_runware(fake, tmp_path, max_in_flight=2, warm_up_concurrency=4)
    await service.start()
    try:
        assert service.warm_up is not None and service.warm_up.concurrency == 1
        for _ in range(100):
            if fake.tasks_received:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert len(fake.tasks_received) == 1  # one stalled task; the other slot stays free
    finally:
        await service.stop()


async def test_no_warm_up_when_switched_off_or_on_espeak(fake, tmp_path):
    service = demo_on_runware(fake, tmp_path, warm_up=False)
    await service.start()
    try:
        assert service.warm_up is None and service._warm_up_task is None
    finally:
        await service.stop()
    assert fake.tasks_received == []
    demo = load_config(ROOT / "configs" / "demo.toml").model_copy(
        update={
            "store": load_config(ROOT / "configs" / "demo.toml").store.model_copy(
                update={"path": ":memory:"}
            ),
            "server": runware_config(fake, tmp_path / "c").server,
        }
    )
    async with Service(demo, environ={}) as espeak_service:
        assert espeak_service.engine.name == "espeak-ng"
        assert espeak_service.warm_up is None  # espeak-ng needs no cache
