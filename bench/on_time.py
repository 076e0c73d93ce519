"""How close to its scheduled time a scheduled announcement starts at the endpoint.

Runs the real service with Runware (the local fake, 400 ms + 4 ms per character
of synthesis latency) and a reference endpoint, schedules announcements a few
seconds ahead through the API (due_at), and for each one measures at the
endpoint: when its first chunk plays relative to the due instant (converted to
the endpoint's clock with its ping/pong offset estimate), and how long before
its play time the first chunk arrived. Target: at most 20 ms late.

    python bench/on_time.py [--count 5] [--spacing 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from _api import HEADERS, api_tokens

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
from tests.fakes.runware import FakeRunware

TEXT = "The twelve forty service to Greenhaven is delayed by approximately eighteen minutes."


class TimingEndpoint(ReferenceEndpoint):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.first: dict[
            int, tuple[int, int]
        ] = {}  # stream -> (arrival local us, play_at server us)

    def _on_audio(self, frame: bytes) -> None:
        stream = int.from_bytes(frame[4:8], "big")
        if stream not in self.first:
            play_at = int.from_bytes(frame[12:20], "big", signed=True)
            self.first[stream] = (self.clock.monotonic_us(), play_at)
        super()._on_audio(frame)


async def main(count: int, spacing_s: float) -> None:
    async with FakeRunware(api_key="bench") as fake:
        fake.set_latency(base_ms=400, per_char_ms=4)
        cfg = parse_config(
            {
                "server": {"http_port": 0, "ws_port": 0},
                "api_tokens": api_tokens(),
                "store": {"path": str(Path(tempfile.mkdtemp()) / "s.db")},
                "speech": {
                    "engine": "runware",
                    "runware": {
                        "ws_url": fake.ws_url,
                        "rest_url": fake.rest_url,
                        "cache_max_mb": 0,
                    },
                },
                "zones": [{"id": "z"}],
                "endpoints": [{"id": "ep", "token_hash": hash_token("t"), "zones": ["z"]}],
            }
        )
        async with Service(cfg, environ={"RUNWARE_API_KEY": "bench"}) as svc:
            ep = TimingEndpoint(
                url=f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint",
                endpoint_id="ep",
                token="t",
                zones=["z"],
                formats=["opus/48000"],
                out_dir=None,
                reconnect=False,
            )
            task = asyncio.create_task(ep.run())
            await ep.joined.wait()
            await asyncio.sleep(1.0)  # let the clock estimate settle
            api = f"http://127.0.0.1:{svc.http_port}/v1/announcements"
            base = datetime.now(UTC) + timedelta(seconds=3)
            dues = [base + timedelta(seconds=i * spacing_s) for i in range(count)]
            numbers = []
            async with aiohttp.ClientSession(headers=HEADERS) as http:
                for due in dues:
                    body = {"text": TEXT, "zones": ["z"], "due_at": due.isoformat()}
                    async with http.post(api, json=body) as r:
                        numbers.append((await r.json())["number"])
            while not all(n in ep.first for n in numbers):
                await asyncio.sleep(0.05)
            late_ms, ahead_ms = [], []
            # Convert each due instant (wall clock) to the endpoint's monotonic clock.
            wall_now, mono_now = datetime.now(UTC), ep.clock.monotonic_us()
            offset = ep.clock_estimate.offset_us
            for due, n in zip(dues, numbers, strict=True):
                arrival_us, play_at_server_us = ep.first[n]
                play_local_us = play_at_server_us - offset
                due_local_us = mono_now + int((due - wall_now).total_seconds() * 1e6)
                late_ms.append((play_local_us - due_local_us) / 1000)
                ahead_ms.append((play_local_us - arrival_us) / 1000)
            ep.stop()
            task.cancel()
    print(
        f"{count} announcements scheduled {spacing_s:g} s apart; Runware fake latency "
        f"400 ms + 4 ms/char ({400 + 4 * len(TEXT)} ms for this text); pre-render 60 s"
    )
    print(
        f"first chunk plays vs due:  median {statistics.median(late_ms):+.1f} ms, "
        f"worst {max(late_ms, key=abs):+.1f} ms (target <= +20 ms)"
    )
    print(
        f"first chunk arrived before its play time: min {min(ahead_ms):.0f} ms, "
        f"median {statistics.median(ahead_ms):.0f} ms"
    )
    print(f"clock offset estimate rtt: {ep.clock_estimate.rtt_us} us")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--spacing", type=float, default=8.0)
    a = p.parse_args()
    t0 = time.perf_counter()
    asyncio.run(main(a.count, a.spacing))
    print(f"(ran {time.perf_counter() - t0:.0f} s)")
