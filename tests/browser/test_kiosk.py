"""The /kiosk page in real headless Chromium against a real service.

The kiosk is endpoint ``ep-b`` (zone ``hall``) of the integration config; the
reference endpoint ``ep-c`` plays in the same zone. Timing is measured on one
clock: the test reads ``performance.now()`` in the page and the server clock
(``time.monotonic_ns``, the service runs in this process) around each read, and
keeps the tightest bounds (as docs/protocol.md section 3.2), so the kiosk's own
clock estimate is not what judges it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broadcaster.app import Service
from broadcaster.speech.espeak import EspeakEngine
from tests.integration.conftest import Harness, bearer, make_config

pytestmark = pytest.mark.browser

RATE = 48_000
FRAME = RATE * 20 // 1000  # samples in one 20 ms chunk


def server_us() -> int:
    return time.monotonic_ns() // 1000


async def open_kiosk(
    web: Harness, browser: Any, *, eid: str = "ep-b", token: str = "token-b", pcm: bool = False
) -> tuple[Any, list[str]]:
    """A page showing /kiosk, set up through its form as ``eid``, and its error list."""
    page = await browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    if pcm:  # a browser without WebCodecs: the kiosk falls back to PCM
        await page.add_init_script("delete window.AudioDecoder;")
    await page.goto(f"{web.api}/kiosk")
    await page.fill("#setup-id", eid)
    await page.fill("#setup-token", token)
    await page.fill("#setup-zones", "hall")
    await page.click("#setup button[type=submit]")
    await wait_for(page, "window.kiosk && window.kiosk.link.state === 'connected'")
    return page, problems


async def wait_for(page: Any, expression: str, timeout_s: float = 10) -> None:
    """Poll ``expression`` in the page (wait_for_function would need 'unsafe-eval',
    which the page's CSP rightly forbids)."""
    from playwright.async_api import Error as PlaywrightError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await page.evaluate(f"() => Boolean({expression})"):
                return
        except PlaywrightError as exc:  # the page is navigating (a reload): ask again
            if "context was destroyed" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        await asyncio.sleep(0.05)


async def page_offset_us(page: Any, reads: int = 15) -> tuple[int, int]:
    """Server clock minus the page's performance.now() in µs, from the tightest reads,
    and the half-width of the bracket (the most it can be off)."""
    up_min: int | None = None
    down_max: int | None = None
    for _ in range(reads):
        before = server_us()
        perf_us = round(await page.evaluate("performance.now() * 1000"))
        after = server_us()
        up = after - perf_us  # >= offset
        down = before - perf_us  # <= offset
        up_min = up if up_min is None else min(up_min, up)
        down_max = down if down_max is None else max(down_max, down)
    assert up_min is not None and down_max is not None
    return (up_min + down_max) // 2, (up_min - down_max) // 2


async def heard_perf_ms(page: Any, frame: int) -> float:
    """When (performance.now()) the sample of context frame ``frame`` is heard, from
    the browser's own output timestamp (latencies included, see docs/browser.md)."""
    c, p = await page.evaluate(
        "(() => { const t = window.kiosk.audio.ctx.getOutputTimestamp();"
        " return [t.contextTime, t.performanceTime]; })()"
    )
    return float(p) + (frame / RATE - float(c)) * 1000


def reference_play_at(rec: Any, started: dict[str, Any]) -> int:
    """When the reference endpoint's timeline plays the kiosk's first sample out.

    That sample is ``k`` samples into the chunk the kiosk placed its stream by
    (``anchor_seq``; k > 0 only when the worklet had to cut a late chunk), and the
    reference endpoint got the same chunk with the same ``play_at_us``."""
    k = started["frame"] - started["anchor_frame"]
    assert 0 <= k < FRAME, started
    play_at = rec.play_at_us[rec.seqs.index(started["anchor_seq"])]
    assert play_at == started["anchor_play_at_us"]
    return int(play_at + k * 1_000_000 // RATE)


async def kiosk_events(page: Any, kind: str, ann_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await page.evaluate(
        "([k, a]) => window.kiosk.link.events.filter(e => e.type === k && e.announcement_id === a)",
        [kind, ann_id],
    )
    return events


async def wait_event(page: Any, kind: str, ann_id: str, timeout_s: float = 15) -> dict[str, Any]:
    await wait_for(
        page,
        f"window.kiosk.link.events.some(e => e.type === '{kind}' && e.announcement_id === '{ann_id}')",
        timeout_s,
    )
    return (await kiosk_events(page, kind, ann_id))[0]


async def test_kiosk_plays_in_step_with_the_reference_endpoint_with_captions(web, launch):
    browser = await launch()
    page, problems = await open_kiosk(web, browser)
    assert await page.evaluate("window.kiosk.opus") is True  # Debian's chromium has WebCodecs
    ref = await web.endpoint("ep-c", ["hall"], ["pcm_s16le/16000"])
    # The kiosk's ping burst (16 x 50 ms) makes its estimate before audio is due.
    await wait_for(page, "window.kiosk.link.clock.samples >= 16")
    offset, bracket_us = await page_offset_us(page)

    posted_at = server_us()
    status, body = await web.post(
        {
            "text": "Platform two.",
            "zones": ["hall"],
            "also": [{"language": "German", "text": "Gleis zwei."}],
        }
    )
    assert status in (200, 201, 202), body
    ann_id = body["id"]

    # The caption, one line per language, while it plays.
    await page.wait_for_selector("#captions p", timeout=10_000)
    lines = await page.eval_on_selector_all(
        "#captions p", "ps => ps.map(p => [p.dataset.language, p.lastChild.textContent])"
    )
    assert lines == [["English", "Platform two."], ["German", "Gleis zwei."]]
    assert await page.is_hidden("#enable-sound")
    if shots := os.environ.get("BROADCASTER_SCREENSHOTS"):  # docs/kiosk.png is made so
        await page.screenshot(path=str(Path(shots) / "kiosk.png"))

    started = await wait_event(page, "playback_started", ann_id)
    finished = await wait_event(page, "playback_finished", ann_id)
    final = await web.wait_final(ann_id)
    # The caption goes when the audio has played.
    await wait_for(page, "document.getElementById('captions').hidden")

    # Every sample of the announcement left the worklet, no more and no less (one frame).
    duration_ms = finished["duration_ms"]
    assert duration_ms == final["duration_ms"] == ref.announcements[ann_id].duration_ms
    assert abs(finished["played"] - duration_ms * RATE // 1000) <= FRAME, finished

    # The first sample that left the worklet (normally the stream's first: k = 0; a
    # late first chunk is cut, k > 0) is heard within 20 ms of the moment the
    # reference endpoint's timeline gives that sample.
    heard_us = round(await heard_perf_ms(page, started["frame"]) * 1000) + offset
    reference_us = reference_play_at(ref.announcements[ann_id], started)
    skew_ms = (heard_us - reference_us) / 1000
    first_audio_ms = (heard_us - posted_at) / 1000
    print(
        f"\nplayed {finished['played']} samples for {duration_ms} ms; "
        f"kiosk vs reference play-at: {skew_ms:+.2f} ms; kiosk's own estimate "
        f"{(started['at_us'] - reference_us) / 1000:+.2f} ms; first audio on the kiosk "
        f"{first_audio_ms:.0f} ms after the POST (test clock bracket ±{bracket_us / 1000:.2f} ms)"
    )
    base, output, lag = await page.evaluate(
        "(() => { const c = window.kiosk.audio.ctx;"
        " return [c.baseLatency, c.outputLatency,"
        " c.currentTime - c.getOutputTimestamp().contextTime]; })()"
    )
    print(
        f"AudioContext: baseLatency {base * 1000:.1f} ms, outputLatency {output * 1000:.1f} ms,"
        f" currentTime - getOutputTimestamp().contextTime {lag * 1000:.1f} ms"
    )
    assert abs(skew_ms) <= 20

    # The server has its receipt and both playback reports.
    kiosk = final["endpoints"]["ep-b"]
    assert kiosk["state"] == "finished", kiosk
    assert kiosk["receipt"]["status"] == "complete", kiosk
    assert kiosk["started_at_us"] == started["at_us"]
    assert problems == []


async def endpoint_entry(web: Harness, eid: str) -> dict[str, Any]:
    status, body = await web.get("/v1/endpoints")
    assert status == 200, body
    [entry] = [e for e in body["endpoints"] if e["endpoint_id"] == eid]
    return entry


async def poll_entry(web: Harness, eid: str, key: str, want: object) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while (entry := await endpoint_entry(web, eid)).get(key) != want:
        assert time.monotonic() < deadline, entry
        await asyncio.sleep(0.05)
    return entry


async def play_one(web: Harness, page: Any, text: str) -> dict[str, Any]:
    """POST ``text`` to hall; the kiosk's playback_finished event once it has played."""
    status, body = await web.post({"text": text, "zones": ["hall"]})
    assert status in (200, 201, 202), body
    finished = await wait_event(page, "playback_finished", body["id"])
    final = await web.wait_final(body["id"])
    assert final["endpoints"]["ep-b"]["state"] == "finished", final["endpoints"]
    assert abs(finished["played"] - final["duration_ms"] * RATE // 1000) <= FRAME
    return finished


async def test_tap_to_enable_sound_is_shown_reported_and_cleared_and_pcm_plays(web, launch):
    # No autoplay flag: Chromium keeps a page's AudioContext suspended until a gesture.
    browser = await launch(autoplay=False)
    page, problems = await open_kiosk(web, browser, pcm=True)
    # Submitting the form was a gesture; a kiosk that starts up again has none.
    await page.reload()
    await wait_for(page, "window.kiosk && window.kiosk.link.state === 'connected'")
    assert await page.evaluate("window.kiosk.opus") is False
    assert await page.is_visible("#enable-sound")
    if shots := os.environ.get("BROADCASTER_SCREENSHOTS"):
        await page.screenshot(path=str(Path(shots) / "kiosk-tap.png"))
    entry = await poll_entry(web, "ep-b", "audio_output", "blocked")
    assert entry["format"] == "pcm_s16le/48000"  # the fallback without WebCodecs
    # (A real click is a user gesture; page.evaluate would count as one too.)
    await page.click("#enable-sound")
    await wait_for(page, "window.kiosk.audio.ready")
    assert await page.is_hidden("#enable-sound")
    await poll_entry(web, "ep-b", "audio_output", "ready")
    # With a gain of -6 dB on the kiosk (the server sends it in announcement_started),
    # its loudest sample is half the reference endpoint's (same format, gain 0), and
    # the worklet's overall peak counter agrees with the stream's own.
    ref = await web.endpoint("ep-c", ["hall"], ["pcm_s16le/48000"])
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{web.api}/v1/endpoints/ep-b/gain", json={"gain_db": -6.0}, headers=bearer()
        ) as r,
    ):
        assert r.status == 200, await r.text()
    finished = await play_one(web, page, "Mind the gap.")
    [started] = await kiosk_events(page, "announcement_started", finished["announcement_id"])
    assert started["gain_db"] == -6.0
    pcm = ref.announcements[finished["announcement_id"]].pcm
    ref_peak = max(abs(v) for v in memoryview(bytes(pcm)).cast("h")) / 32768
    await asyncio.sleep(0.3)  # the worklet's next stats message
    kiosk_peak = await page.evaluate("window.kiosk.audio.stats.peak")
    assert kiosk_peak == finished["peak"]
    assert abs(kiosk_peak / ref_peak - 10 ** (-6 / 20)) < 0.005, (kiosk_peak, ref_peak)
    assert problems == []
    # Closing the page says bye: the kiosk is offline, not faulty, and reports nothing.
    await page.close(run_before_unload=True)
    entry = await poll_entry(web, "ep-b", "connected", False)
    assert entry["supervision"]["status"] == "offline", entry
    assert entry["audio_output"] is None


async def test_kiosk_reconnects_by_itself_after_a_server_restart(launch, tmp_path):
    config = make_config()
    engine = EspeakEngine(max_text_chars=200)
    async with Service(config, engine=engine) as first:
        web = Harness(first, tmp_path)
        browser = await launch()
        page, problems = await open_kiosk(web, browser)
        await poll_entry(web, "ep-b", "audio_output", "ready")
        # A server that has said nothing for heartbeat_timeout_ms is taken for dead:
        # the page closes the link (3000 "server silent") and connects again.
        # (Here: the timeout this connection was told, made 200 ms after the ping burst.)
        await wait_for(page, "window.kiosk.link.clock.samples >= 16")
        await page.evaluate(
            "() => { window.kiosk.link.welcome.settings.heartbeat_timeout_ms = 200; }"
        )
        await wait_for(page, "window.kiosk.link.connections === 2")
        closes = await page.evaluate("window.kiosk.link.events.filter(e => e.type === 'closed')")
        assert [c["code"] for c in closes] == [3000], closes
        ports = {"http_port": first.http_port, "ws_port": first.ws_port}
    # The server is gone: the page retries with back-off, and says so.
    await wait_for(page, "window.kiosk.link.state === 'waiting'")
    again = config.model_copy(update={"server": config.server.model_copy(update=ports)})
    async with Service(again, engine=EspeakEngine(max_text_chars=200)) as second:
        web = Harness(second, tmp_path)
        await wait_for(page, "window.kiosk.link.connections === 3", timeout_s=15)
        await poll_entry(web, "ep-b", "audio_output", "ready")
        await play_one(web, page, "Welcome back.")
        await web.close()
    assert [e for e in problems if "WebSocket" not in e] == []


async def test_preemption_flushes_the_kiosk_and_the_higher_priority_plays(web, launch):
    browser = await launch()
    page, problems = await open_kiosk(web, browser)
    low_text = "This is a long routine announcement about the car park, which will be cut off."
    status, low = await web.post(
        {"text": low_text, "zones": ["hall"], "priority": "routine", "on_preempt": "drop"}
    )
    assert status in (200, 201, 202), low
    await wait_event(page, "playback_started", low["id"])
    captions = await page.eval_on_selector_all("#captions p", "ps => ps.map(p => p.lastChild.data)")
    assert captions == [low_text]
    status, high = await web.post(
        {"text": "Evacuate now.", "zones": ["hall"], "priority": "emergency"}
    )
    assert status in (200, 201, 202), high
    cancelled = await wait_event(page, "announcement_cancelled", low["id"])
    assert cancelled["preempted_by"] == high["id"]
    await wait_event(page, "playback_started", high["id"])
    captions = await page.eval_on_selector_all("#captions p", "ps => ps.map(p => p.lastChild.data)")
    assert captions == ["Evacuate now."]
    finished = await wait_event(page, "playback_finished", high["id"])
    final_high = await web.wait_final(high["id"])
    assert abs(finished["played"] - final_high["duration_ms"] * RATE // 1000) <= FRAME

    # The low one's buffered audio was flushed, never played to its end or reported so.
    flushed = await page.evaluate("window.kiosk.link.events.filter(e => e.type === 'flushed')")
    assert flushed and flushed[0]["dropped"] > 0, flushed
    assert await kiosk_events(page, "playback_finished", low["id"]) == []
    final_low = await web.wait_final(low["id"])
    kiosk = final_low["endpoints"]["ep-b"]
    assert kiosk["state"] == "preempted", kiosk
    assert kiosk["receipt"]["status"] == "cancelled", kiosk
    assert problems == []


async def test_a_stalled_page_drops_late_audio_and_keeps_the_timeline(web, launch):
    browser = await launch()
    page, problems = await open_kiosk(web, browser)
    status, body = await web.post(
        {"text": "The next train to arrive at this platform will not stop here.", "zones": ["hall"]}
    )
    assert status in (200, 201, 202), body
    await wait_event(page, "playback_started", body["id"])
    # The page's main thread stops for 700 ms: messages wait, the worklet plays on
    # what it holds and then silence; what arrives too late is not played late.
    await page.evaluate(
        "() => { const t = performance.now(); while (performance.now() - t < 700); }"
    )
    finished = await wait_event(page, "playback_finished", body["id"])
    final = await web.wait_final(body["id"])
    samples = final["duration_ms"] * RATE // 1000
    await wait_for(page, "window.kiosk.audio.stats.framesOut > 0")
    stats = await page.evaluate("window.kiosk.audio.stats")
    assert stats["staleChunks"] > 0 or stats["cutFrames"] > 0, stats
    assert finished["played"] <= samples - RATE * 3 // 10, (finished, samples)  # >= 300 ms lost
    # The rest played where it belonged: the stream still ends on its own timeline.
    assert abs(finished["at_us"] - finished["end_at_us"]) <= 1, finished
    assert final["endpoints"]["ep-b"]["receipt"]["status"] == "complete"
    assert problems == []


#: Starts a stream made up in the page, as the server would send it: ``chunks`` 20 ms
#: chunks of constant PCM ``value`` (of full scale) from ``at_ms`` after ``base_us``.
INJECT = """([annId, stream, priority, gainDb, baseUs, atMs, chunks, value]) => {
    const link = window.kiosk.link;
    const start = baseUs + atMs * 1000;
    const format = {codec: "pcm_s16le", sample_rate_hz: 48000, channels: 1, frame_ms: 20};
    const msg = {type: "announcement_started", announcement_id: annId, stream, text: annId,
      priority, zones: ["hall"], format, start_at_us: start, expected_duration_ms: 0};
    if (gainDb !== null) msg.gain_db = gainDb;
    link.onStarted(msg);
    for (let seq = 0; seq < chunks; seq++) {
      const frame = new Uint8Array(28 + 1920);
      const v = new DataView(frame.buffer);
      v.setUint8(0, 1); v.setUint8(1, 1); v.setUint32(4, stream); v.setUint32(8, seq);
      v.setBigInt64(12, BigInt(start + seq * 20000)); v.setUint32(20, 20000);
      v.setUint32(24, 1920);
      for (let i = 0; i < 960; i++) v.setInt16(28 + 2 * i, Math.round(value * 32768), true);
      link.onAudio(frame);
    }
    link.onEnded({type: "announcement_ended", announcement_id: annId, stream, chunks,
      duration_ms: chunks * 20, end_at_us: start + chunks * 20000});
}"""


async def test_made_up_streams_gain_db_and_two_overlapping_priorities(web, launch):
    """Streams the test config cannot make: an exact gain on a known signal, and two
    announcements overlapping on a kiosk in two zones."""
    browser = await launch()
    page, problems = await open_kiosk(web, browser)
    await wait_for(page, "window.kiosk.link.clock.samples >= 16")
    soon = "Math.round(performance.now() * 1000) + window.kiosk.link.clock.offsetUs + 150000"
    base = await page.evaluate(soon)
    # 200 ms at half scale, attenuated by 6.02 dB: a quarter of full scale comes out;
    # a gain above 0 dB is not applied (attenuation only).
    await page.evaluate(INJECT, ["gain", 4_000_000_001, 100, -6.0206, base, 0, 10, 0.5])
    await page.evaluate(INJECT, ["boost", 4_000_000_004, 100, 6.0, base, 200, 10, 0.3])
    finished = await wait_event(page, "playback_finished", "gain")
    assert finished["played"] == 10 * FRAME
    assert abs(finished["peak"] - 0.25) < 1e-3, finished
    boosted = await wait_event(page, "playback_finished", "boost")
    assert abs(boosted["peak"] - 0.3) < 1e-3, boosted

    # A routine stream of 600 ms, and from its 300th ms an operational one of 600 ms:
    # the higher priority is heard where they overlap, and its caption is shown.
    base = await page.evaluate(soon)
    await page.evaluate(INJECT, ["low", 4_000_000_002, 100, None, base, 0, 30, 0.1])
    await page.evaluate(INJECT, ["high", 4_000_000_003, 160, None, base, 300, 30, 0.2])
    await wait_event(page, "playback_started", "high")
    captions = await page.eval_on_selector_all("#captions p", "ps => ps.map(p => p.lastChild.data)")
    assert captions == ["high"]
    low = await wait_event(page, "playback_finished", "low")
    high = await wait_event(page, "playback_finished", "high")
    # The low one's second half was overridden (each stream is placed on its own, so
    # where one ends and the other begins may differ by a few samples: 1 ms allowed).
    assert abs(low["played"] - 15 * FRAME) <= RATE // 1000, low
    assert high["played"] == 30 * FRAME
    await wait_for(page, "window.kiosk.audio.stats.overridden >= 15 * 960 - 48")
    assert problems == []


async def test_a_wrong_token_is_refused_for_good_and_never_in_a_url(web, launch):
    browser = await launch()
    page = await browser.new_page()
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    await page.goto(f"{web.api}/kiosk")
    await page.fill("#setup-id", "ep-b")
    await page.fill("#setup-token", "not-the-token")
    await page.fill("#setup-zones", "hall")
    await page.click("#setup button[type=submit]")
    await wait_for(page, "window.kiosk && window.kiosk.link.state === 'refused'")
    text = await page.text_content("#status")
    assert text is not None and "4001" in text and "/kiosk#setup" in text
    await asyncio.sleep(1)  # no retry (the first would come after 0.5 s)
    assert await page.evaluate("window.kiosk.link.connections") == 0
    closes = await page.evaluate("window.kiosk.link.events.filter(e => e.type === 'closed')")
    assert [c["code"] for c in closes] == [4001]
    assert all("not-the-token" not in u for u in [*urls, page.url])
    # Setting it up again: the form comes back with the id, not the token.
    await page.goto(f"{web.api}/kiosk#setup")  # only the fragment changes: no navigation
    await wait_for(page, "!document.getElementById('setup').hidden")
    assert await page.input_value("#setup-id") == "ep-b"
    assert await page.input_value("#setup-token") == ""
