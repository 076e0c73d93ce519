"""The browser kiosk against the reference endpoint: play-out alignment and first audio.

Starts the real service (default playout delay, 300 ms) with one zone, the
reference endpoint in it, and the /kiosk page in Debian's headless chromium
(Playwright, ``executable_path``) as a second endpoint of the zone. For each run
it POSTs a short announcement and prints, on the server clock:

* start skew: when the kiosk's first sample is heard (its context frame through
  the browser's getOutputTimestamp) minus the reference endpoint's play-at of it;
* end skew: the same for the sample after its last one (drift within a stream);
* first audio: when the kiosk's first sample is heard, after the POST was sent,
  and the reference endpoint's first play-at after the POST (the server's part:
  the playout delay, plus any late start of synthesis).

The page's performance.now() is tied to the server clock by bracketing reads
(the service runs in this process), so the kiosk's own estimate is not the judge.

    python bench/kiosk_alignment.py [--runs 5] [--pcm]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp
from _api import HEADERS, api_tokens

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint
from tests.browser.conftest import AUTOPLAY, BASE_ARGS, chromium_path
from tests.browser.test_kiosk import (
    heard_perf_ms,
    open_kiosk,
    page_offset_us,
    reference_play_at,
    server_us,
    wait_event,
    wait_for,
)
from tests.integration.conftest import Harness

TEXTS = [
    "The train now approaching platform two is the 12:40 to Greenhaven.",
    "Please stand clear of the platform edge.",
    "The lift to the footbridge is out of order.",
]


async def main(runs: int, pcm: bool) -> None:
    from playwright.async_api import async_playwright

    cfg = parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "api_tokens": api_tokens(),
            "store": {"path": ":memory:"},
            "zones": [{"id": "hall"}],
            "endpoints": [
                {"id": "ref", "token_hash": hash_token("t-ref"), "zones": ["hall"]},
                {"id": "ep-b", "token_hash": hash_token("token-b"), "zones": ["hall"]},
            ],
        }
    )
    rows: list[tuple[float, float, float, float]] = []
    async with Service(cfg) as svc, async_playwright() as pw:
        tmp = Path(tempfile.mkdtemp())
        web = Harness(svc, tmp)
        ref = ReferenceEndpoint(
            url=web.ws_url,
            endpoint_id="ref",
            token="t-ref",
            zones=["hall"],
            formats=["opus/48000"],
            out_dir=None,
            reconnect=False,
        )
        ref_task = asyncio.create_task(ref.run())
        await ref.joined.wait()
        browser = await pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=[*BASE_ARGS, AUTOPLAY]
        )
        page, _ = await open_kiosk(web, browser, pcm=pcm)
        await wait_for(page, "window.kiosk.link.clock.samples >= 16")
        fmt = await page.evaluate("window.kiosk.link.welcome.format")
        print(f"kiosk format {fmt['codec']}/{fmt['sample_rate_hz']}, playout delay 300 ms")
        print(
            f"{'run':>3} {'start skew ms':>14} {'end skew ms':>12} {'first audio ms':>15}"
            f" {'ref play-at ms':>15}"
        )
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for run in range(runs):
                offset, _ = await page_offset_us(page)
                posted = server_us()
                body = {"text": TEXTS[run % len(TEXTS)], "zones": ["hall"]}
                async with http.post(f"{web.api}/v1/announcements", json=body) as r:
                    ann_id = (await r.json())["id"]
                started = await wait_event(page, "playback_started", ann_id, 30)
                finished = await wait_event(page, "playback_finished", ann_id, 60)
                rec = ref.announcements[ann_id]
                ref_start = reference_play_at(rec, started)
                ref_end = rec.play_at_us[-1] + rec.durations_us[-1]
                heard_start = round(await heard_perf_ms(page, started["frame"]) * 1000) + offset
                heard_end = round(await heard_perf_ms(page, finished["frame"]) * 1000) + offset
                row = (
                    (heard_start - ref_start) / 1000,
                    (heard_end - ref_end) / 1000,
                    (heard_start - posted) / 1000,
                    (rec.play_at_us[0] - posted) / 1000,
                )
                rows.append(row)
                if started["anchor_seq"] != rec.seqs[0] or started["first_seq"] != 0:
                    print(
                        f"    kiosk placed its stream by seq {started['anchor_seq']} "
                        f"(first received {started['first_seq']}); the reference's first "
                        f"was {rec.seqs[0]}"
                    )
                print(
                    f"{run + 1:>3} {row[0]:>+14.2f} {row[1]:>+12.2f} {row[2]:>15.0f}"
                    f" {row[3]:>15.0f}"
                )
                await asyncio.sleep(0.3)
        await browser.close()
        ref.stop()
        ref_task.cancel()
    for name, i in (("start skew", 0), ("end skew", 1), ("first audio", 2), ("ref play-at", 3)):
        xs = [r[i] for r in rows]
        print(
            f"{name:<12} median {statistics.median(xs):+.2f} ms, "
            f"min {min(xs):+.2f}, max {max(xs):+.2f}"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--pcm", action="store_true", help="a kiosk without WebCodecs (PCM)")
    a = p.parse_args()
    asyncio.run(main(a.runs, a.pcm))
