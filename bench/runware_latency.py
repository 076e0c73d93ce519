"""Time to first audio with Runware: segmented (low-latency profile) vs one whole-text request.

Runs the real service against the local fake Runware server (tests/fakes) with
a synthesis latency of 400 ms + 4 ms per character, a ~1,000-character
announcement, and a reference endpoint. For each mode it reports the time from
POST /v1/announcements to the first audio frame at the endpoint, and the
largest hole in the endpoint's play-out timeline (an underrun: audio that was
not ready in time) — the only silence between segments should be the
configured segment pause.

    python bench/runware_latency.py [--runs 3] [--chars 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _api import HEADERS, api_tokens

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
from tests.fakes.runware import FakeRunware

BASE = (
    "Attention passengers waiting for the northbound line. The 12:40 service to Greenhaven "
    "is currently delayed by approximately eighteen minutes due to a signal check beyond "
    "Westbridge. We apologize for the inconvenience. If you are continuing to Hill Square, "
    "please remain on platform two. Connecting passengers for the coastal route should follow "
    "updated departure screens and listen for further announcements. Thank you for your "
    "patience, and please stand clear of the platform edge. "
)


class TimingEndpoint(ReferenceEndpoint):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.first_frame: dict[int, float] = {}

    def _on_audio(self, frame: bytes) -> None:
        self.first_frame.setdefault(int.from_bytes(frame[4:8], "big"), time.perf_counter())
        super()._on_audio(frame)


def config(fake, cache: Path, pause_ms: int, text: str):
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "api_tokens": api_tokens(),
            "store": {"path": ":memory:"},
            "speech": {
                "engine": "runware",
                "first_audio_deadline_s": 60,
                "emergency_first_audio_deadline_s": 60,
                "runware": {
                    "ws_url": fake.ws_url,
                    "rest_url": fake.rest_url,
                    "cache_dir": str(cache),
                    "cache_max_mb": 0,  # measure synthesis, not the cache
                    "task_timeout_s": 60,
                    "segment_pause_ms": pause_ms,
                },
            },
            "zones": [{"id": "z"}],
            "endpoints": [{"id": "ep", "token_hash": hash_token("t"), "zones": ["z"]}],
            # The same text as one request, the way a whole-text client would ask.
            "templates": [{"name": "whole", "text": text, "split": False}],
        }
    )


async def one(svc, ep, http, api, text, split) -> tuple[float, float, int]:
    body = {"text": text, "zones": ["z"]} if split else {"template": "whole", "zones": ["z"]}
    t0 = time.perf_counter()
    async with http.post(api, json=body) as r:
        created = await r.json()
    ann = svc.announcer.registry.get(created["id"])
    while ann.number not in ep.first_frame:
        await asyncio.sleep(0.002)
    ttfa = (ep.first_frame[ann.number] - t0) * 1000
    while not ann.state.is_final:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    rec = ep.announcements[created["id"]]
    holes = [
        b - (a + d)
        for a, b, d in zip(rec.play_at_us, rec.play_at_us[1:], rec.durations_us, strict=False)
    ]
    return ttfa, max(holes, default=0) / 1000, ann.segments


async def main(runs: int, chars: int, speed: float) -> None:
    text = (BASE * (chars // len(BASE) + 1))[:chars].rsplit(" ", 1)[0] + "."
    pause_ms = 250
    async with FakeRunware(api_key="bench") as fake:
        fake.set_latency(base_ms=400, per_char_ms=4)
        cfg = config(fake, Path(tempfile.mkdtemp()), pause_ms, text)
        svc = Service(cfg, environ={"RUNWARE_API_KEY": "bench"})
        await svc.start()
        ep = TimingEndpoint(
            url=f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint",
            endpoint_id="ep",
            token="t",
            zones=["z"],
            formats=["pcm_s16le/16000"],
            out_dir=None,
            reconnect=False,
        )
        task = asyncio.create_task(ep.run())
        await ep.joined.wait()
        api = f"http://127.0.0.1:{svc.http_port}/v1/announcements"
        results = {}
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for split in (True, False):
                rows = [await one(svc, ep, http, api, text, split) for _ in range(runs)]
                results[split] = rows
        ep.stop()
        task.cancel()
        await svc.stop()
    print(
        f"text {len(text)} chars; fake latency 400 ms + 4 ms/char; {runs} runs each; "
        f"segment pause {pause_ms} ms"
    )
    print(
        f"{'mode':<28}{'segments':>9}{'TTFA median ms':>16}{'min':>8}{'max':>8}{'max hole ms':>13}"
    )
    for split, rows in results.items():
        ttfa = [r[0] for r in rows]
        name = "segmented (low latency)" if split else "one whole-text request"
        print(
            f"{name:<28}{rows[0][2]:>9}{statistics.median(ttfa):>16.0f}{min(ttfa):>8.0f}"
            f"{max(ttfa):>8.0f}{max(r[1] for r in rows):>13.1f}"
        )
    ratio = statistics.median(r[0] for r in results[False]) / statistics.median(
        r[0] for r in results[True]
    )
    print(f"first audio {ratio:.1f}x sooner when segmented (target >= 5x)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--chars", type=int, default=1000)
    p.add_argument("--speed", type=float, default=1.0)
    a = p.parse_args()
    asyncio.run(main(a.runs, a.chars, a.speed))
