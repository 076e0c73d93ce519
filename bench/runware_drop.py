"""A Runware connection drop in the middle of an announcement, with the fallback off.

The real service against the local fake Runware server (400 ms + 4 ms per character,
a ~1,000-character announcement, a reference endpoint). The fake resets the socket
(TCP reset, no close frame) after the Nth task, so the segments written behind it
never reach the server. Prints, per N: time to first audio, time to the final state,
the longest hole in the endpoint's play-out timeline, tasks made by the server, tasks
billed and heard in the record, and its warnings. Before issue 9 the lost segments
waited for the 60 s per-attempt deadline (30 s in the default config).

    python bench/runware_drop.py [--chars 1000] [--after 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _api import HEADERS
from runware_latency import BASE, TimingEndpoint, config

from broadcaster.app import Service

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
from tests.fakes.runware import FakeRunware


async def run_one(chars: int, after: int) -> None:
    text = (BASE * (chars // len(BASE) + 1))[:chars].rsplit(" ", 1)[0] + "."
    async with FakeRunware(api_key="bench") as fake:
        fake.set_latency(base_ms=400, per_char_ms=4)
        cfg = config(fake, Path(tempfile.mkdtemp()), 250, text)
        cfg = cfg.model_copy(update={"speech": cfg.speech.model_copy(update={"fallback": False})})
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
        fake.drop_after_tasks(after)
        api = f"http://127.0.0.1:{svc.http_port}/v1/announcements"
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            t0 = time.perf_counter()
            async with http.post(api, json={"text": text, "zones": ["z"]}) as r:
                created = await r.json()
            ann = svc.announcer.registry.get(created["id"])
            while ann.number not in ep.first_frame:
                await asyncio.sleep(0.002)
            ttfa = ep.first_frame[ann.number] - t0
            while not ann.state.is_final:
                await asyncio.sleep(0.05)
            total = time.perf_counter() - t0
            await asyncio.sleep(0.3)
        rec = ep.announcements[created["id"]]
        holes = [
            b - (a + d)
            for a, b, d in zip(rec.play_at_us, rec.play_at_us[1:], rec.durations_us, strict=False)
        ]
        rec_d = ann.as_dict()
        print(
            f"drop after task {after}: state {ann.state.value}, engine {ann.engine}, "
            f"{ann.segments} segments, first audio {ttfa:.2f} s, final after {total:.1f} s, "
            f"longest hole {max(holes, default=0) / 1e6:.2f} s (segment pause 0.25 s), "
            f"server made {fake.syntheses} task(s) for {len(fake.tasks_received)} received, "
            f"billed {rec_d['speech_tasks_billed']}, heard {rec_d['speech_tasks_heard']}, "
            f"cost {rec_d['cost_usd']}, warnings {ann.warnings}"
        )
        ep.stop()
        task.cancel()
        await svc.stop()


async def main(chars: int, afters: list[int]) -> None:
    print(f"text ~{chars} chars; fake latency 400 ms + 4 ms/char; fallback off")
    for after in afters:
        await run_one(chars, after)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=1000)
    p.add_argument("--after", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    asyncio.run(main(a.chars, a.after))
