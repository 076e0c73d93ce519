"""First audio and the longest hole at the endpoint, per Runware fault kind.

Runs the real service (espeak-ng as fallback) against the local fake Runware
server (tests/fakes) at 400 ms + 4 ms per character, with one fault kind at a
time, and a reference endpoint that writes each announcement as a WAV. For each
fault it prints the time from POST to the first audio frame at the endpoint,
the longest silence inside the recorded audio (samples below -44 dBFS, leading
and trailing silence excluded), the longest gap in the play-out timeline (an
underrun), and who spoke. The rule under test: no hole longer than the segment
pause (plus the edge silence of each take of the fake's own engine).

    python bench/speech_faults.py [--chars 600]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
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
PAUSE_MS = 250


class TimingEndpoint(ReferenceEndpoint):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.first_frame: dict[int, float] = {}

    def _on_audio(self, frame: bytes) -> None:
        self.first_frame.setdefault(int.from_bytes(frame[4:8], "big"), time.perf_counter())
        super()._on_audio(frame)


def longest_silence_ms(path: Path) -> float:
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) >= 200)
    return 0.0 if len(loud) < 2 else float(np.diff(loud).max() - 1) * 1000 / rate


def config(fake, tmp: Path):
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "api_tokens": api_tokens(),
            "store": {"path": ":memory:"},
            "speech": {
                "engine": "runware",
                "runware": {
                    "ws_url": fake.ws_url,
                    "rest_url": fake.rest_url,
                    "cache_dir": str(tmp / "cache"),
                    "cache_max_mb": 0,  # measure synthesis, not the cache
                    "task_timeout_s": 10,
                    "max_attempts": 2,
                    "segment_pause_ms": PAUSE_MS,
                    "segment_max_chars": 100,  # several segments for the faults to hit
                },
            },
            "zones": [{"id": "z"}],
            "endpoints": [{"id": "ep", "token_hash": hash_token("t"), "zones": ["z"]}],
        }
    )


FAULTS: dict[str, Callable[[FakeRunware], None]] = {
    "none": lambda f: None,
    "stall every 2nd task": lambda f: f.stall_every(2),
    "fail every 2nd (serverError)": lambda f: f.fail_every(2),
    "rate limit every 2nd": lambda f: f.rate_limit_every(2),
    "slow: 400 ms + 20 ms/char": lambda f: f.set_latency(400, 20),
}


def reset(fake: FakeRunware) -> None:
    fake.stall_every(0)
    fake.fail_every(0)
    fake.rate_limit_every(0)
    fake.set_latency(400, 4)


async def main(chars: int) -> None:
    text = (BASE * (chars // len(BASE) + 1))[:chars].rsplit(" ", 1)[0] + "."
    tmp = Path(tempfile.mkdtemp())
    rows = []
    async with FakeRunware(api_key="bench") as fake:
        svc = Service(config(fake, tmp), environ={"RUNWARE_API_KEY": "bench"})
        await svc.start()
        ep = TimingEndpoint(
            url=f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint",
            endpoint_id="ep",
            token="t",
            zones=["z"],
            formats=["pcm_s16le/24000"],
            out_dir=tmp / "wav",
            reconnect=False,
        )
        task = asyncio.create_task(ep.run())
        await ep.joined.wait()
        api = f"http://127.0.0.1:{svc.http_port}/v1/announcements"
        cases = [(name, fault, 100) for name, fault in FAULTS.items()]
        cases.append(("emergency (priority 240)", FAULTS["none"], 240))
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for name, fault, priority in cases:
                reset(fake)
                fault(fake)
                t0 = time.perf_counter()
                body = {"text": text, "zones": ["z"], "priority": priority}
                async with http.post(api, json=body) as r:
                    created = await r.json()
                ann = svc.announcer.registry.get(created["id"])
                while not ann.state.is_final:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                rec = ep.announcements[created["id"]]
                gaps = [
                    b - (a + d)
                    for a, b, d in zip(
                        rec.play_at_us, rec.play_at_us[1:], rec.durations_us, strict=False
                    )
                ]
                first_ms = (ep.first_frame[ann.number] - t0) * 1000
                assert rec.path is not None
                rows.append(
                    (
                        name,
                        first_ms,
                        longest_silence_ms(rec.path),
                        max(gaps, default=0) / 1000,
                        ann.engine,
                    )
                )
        ep.stop()
        task.cancel()
        await svc.stop()
    print(
        f"text {len(text)} chars; fake latency 400 ms + 4 ms/char unless said; "
        f"segment pause {PAUSE_MS} ms; fallback espeak-ng"
    )
    print(
        f"{'fault':<30}{'first audio ms':>15}{'longest silence ms':>20}{'underrun ms':>13}  engine"
    )
    print(
        "(the fake renders with espeak-ng: each take has ~300 ms of silence at its edges, "
        "so the fault-free longest silence is the pause plus that)"
    )
    for name, first_ms, silence, gap, engine in rows:
        print(f"{name:<30}{first_ms:>15.0f}{silence:>20.0f}{gap:>13.1f}  {engine}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=600)
    a = p.parse_args()
    asyncio.run(main(a.chars))
