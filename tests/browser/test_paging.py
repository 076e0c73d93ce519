"""Live paging from Chromium's fake microphone to the reference endpoint."""

from __future__ import annotations

import logging
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import expect

from tests.integration.conftest import API_TOKENS, Harness, make_config
from tests.integration.test_paging import sweep, windowed_correlation

pytestmark = pytest.mark.browser
log = logging.getLogger(__name__)

RATE = 48000

MOUNT = """async ([token, maxPriority, id]) => {
  const { mountPaging } = await import('/static/paging.js');
  const section = document.createElement('section');
  section.id = id || 'paging-under-test';
  document.body.append(section);
  const c = mountPaging(section, { token, zones: ['hall', 'gate'], maxPriority });
  if (!id) window.__paging = c;
  return [...section.querySelectorAll('select[name=paging-priority] option')].map(o => o.value);
}"""


@pytest.fixture
async def web300(tmp_path: Path) -> AsyncIterator[Harness]:
    """The ``web`` service, with the default playout delay (300 ms) the target is for."""
    from broadcaster.app import Service
    from broadcaster.speech.espeak import EspeakEngine

    config = make_config(playout_delay_ms=300)
    async with Service(config, engine=EspeakEngine(max_text_chars=200)) as service:
        h = Harness(service, tmp_path)
        try:
            yield h
        finally:
            await h.close()


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)


async def test_push_to_talk_from_the_fake_microphone_reaches_the_endpoint(web300, launch, tmp_path):
    web = web300
    source = sweep(2.0, level_db=-12.0)
    wav = tmp_path / "mic.wav"
    write_wav(wav, source)
    ep = await web.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    browser = await launch(f"--use-file-for-fake-audio-capture={wav}")
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    await page.goto(f"{web.api}/console")
    bands = await page.evaluate(MOUNT, [API_TOKENS["operator"], 223, None])
    assert bands == ["16", "100", "160"]  # no emergency for an operator
    await page.check("#paging-under-test input[value=hall]")
    talk = page.locator("#paging-under-test .paging-talk")
    await talk.hover()
    await page.mouse.down()
    status = page.locator("#paging-under-test .paging-status")
    await expect(status).to_have_attribute("data-state", "live", timeout=10_000)
    settings = await page.evaluate(
        "() => window.__paging.talk.stream.getAudioTracks()[0].getSettings()"
    )
    # The browser's own processing is off: the server levels the audio.
    assert settings.get("autoGainControl") is False
    assert settings.get("echoCancellation") is False and settings.get("noiseSuppression") is False
    await page.wait_for_timeout(2500)
    await page.mouse.up()
    await expect(status).to_have_attribute("data-state", "ended", timeout=15_000)
    info = await page.evaluate(
        "() => ({codec: window.__paging.talk.codec, id: window.__paging.talk.accepted.announcement_id,"
        " frames: window.__paging.talk.frames})"
    )
    text = await status.text_content()
    assert problems == []
    record = await web.wait_receipts(info["id"], ["ep-b"])
    assert record["kind"] == "live" and record["state"] == "finished", record
    assert record["created_by"] == "operator" and record["zones"] == ["hall"]
    assert record["endpoints"]["ep-b"]["state"] == "finished"
    live = record["live"]
    assert live["codec"] == info["codec"] == "opus"  # WebCodecs is there in Chromium
    assert live["ended_by"] == "talker" and live["decode_errors"] == 0
    received = bytes(ep.announcements[info["id"]].pcm)
    # The fake microphone loops the file: compare with two rounds of it.
    corr = windowed_correlation(source * 2, received)
    assert corr > 0.8, corr
    delay_ms = web.service.config.streaming.playout_delay_ms
    figure = (
        f"browser live paging: mic (AudioWorklet input) -> endpoint play-at median "
        f"{live['latency_ms']['median']} ms, max {live['latency_ms']['max']} ms over "
        f"{live['latency_ms']['count']} frames, playout delay {delay_ms} ms; "
        f"correlation {corr:.2f}; status {text!r}"
    )
    log.warning(figure)
    print(figure)
    assert np.isfinite(live["latency_ms"]["median"])

    # The talker ended it, so it was recorded: the page offers a replay.
    replay = page.locator("#paging-under-test .paging-replay")
    await expect(replay).to_be_visible()
    await replay.click()
    note = page.locator("#paging-under-test .paging-replay-note")
    await expect(note).to_contain_text("Queued to play", timeout=5_000)
    replayed = await page.evaluate("() => window.__paging.lastReplay.body.id")
    again = await web.wait_final(replayed)
    assert again["kind"] == "replay" and again["live"]["replay_of"] == info["id"]

    # Record first, then send: nothing airs until "Send recording".
    await page.check("#paging-under-test input[name=paging-record]")
    await talk.hover()
    await page.mouse.down()
    await expect(status).to_have_attribute("data-state", "recording", timeout=10_000)
    await page.wait_for_timeout(1000)
    await page.mouse.up()
    await expect(status).to_have_attribute("data-state", "recorded", timeout=10_000)
    await expect(replay).to_have_text("Send recording")
    await replay.click()
    await expect(note).to_contain_text("Queued to play", timeout=5_000)
    sent = await page.evaluate("() => window.__paging.lastReplay.body.id")
    aired = await web.wait_final(sent)
    recording_id = await page.evaluate("() => window.__paging.talk.result.recording_id")
    assert aired["kind"] == "replay" and aired["live"]["replay_of"] == recording_id

    # A dispatcher is offered the emergency band; a token limited to "gate" paging the
    # hall is refused by the server, and the page says so.
    bands = await page.evaluate(MOUNT, [API_TOKENS["dispatcher"], 255, "dispatcher"])
    assert bands[-1] == "240"
    await page.evaluate(MOUNT, [API_TOKENS["gate-operator"], 223, "limited"])
    await page.check("#limited input[value=hall]")
    await page.locator("#limited .paging-talk").hover()
    await page.mouse.down()
    refused = page.locator("#limited .paging-status")
    await expect(refused).to_have_attribute("data-state", "refused", timeout=10_000)
    await page.mouse.up()
    assert "may not page in zone(s) hall" in (await refused.text_content() or "")


async def test_without_webcodecs_the_page_streams_pcm(web, launch, tmp_path):
    wav = tmp_path / "mic.wav"
    write_wav(wav, sweep(1.0, level_db=-12.0))
    await web.endpoint("ep-b", ["hall"], ["opus/48000"])
    browser = await launch(f"--use-file-for-fake-audio-capture={wav}")
    page = await browser.new_page()
    await page.goto(f"{web.api}/console")
    await page.evaluate("() => { delete window.AudioEncoder; }")
    await page.evaluate(MOUNT, [API_TOKENS["operator"], 223, None])
    await page.check("#paging-under-test input[value=hall]")
    await page.locator("#paging-under-test .paging-talk").focus()
    await page.keyboard.down(" ")  # held Space talks, like the pointer
    status = page.locator("#paging-under-test .paging-status")
    await expect(status).to_have_attribute("data-state", "live", timeout=10_000)
    await page.wait_for_timeout(800)
    await page.keyboard.up(" ")
    await expect(status).to_have_attribute("data-state", "ended", timeout=15_000)
    ann_id = await page.evaluate("() => window.__paging.talk.accepted.announcement_id")
    record = await web.wait_receipts(ann_id, ["ep-b"])
    assert record["live"]["codec"] == "pcm_s16le" and record["state"] == "finished"
    assert record["formats"] == ["opus/48000"]  # endpoints get their own format
