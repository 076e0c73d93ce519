"""Time from POST /v1/announcements to the first audio frame at an endpoint.

Starts the real service (HTTP API + endpoint WebSocket server + espeak-ng) on
127.0.0.1 with free ports, connects reference endpoints (one per format), and
for each run POSTs a ~1,000-character announcement and measures until the
first binary audio frame of that announcement arrives at each endpoint. Also
reports how long the announcement's synthesis and encoding ran ahead of
real time (the pacer holds it back to real time on the wire).

    python bench/first_audio.py [--runs 5] [--chars 1000] [--file-store]

``--file-store`` keeps the journal in a SQLite file (as a station does) instead of
memory: the durable "playing" mark is then a real fsync'd write before the first chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from _api import HEADERS, api_tokens

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint

FORMATS = ["opus/48000", "pcm_s16le/16000", "pcm_mulaw/8000"]

BASE = (
    "Attention passengers waiting for the northbound line. The 12:40 service to Greenhaven "
    "is currently delayed by approximately eighteen minutes due to a signal check beyond "
    "Westbridge. We apologize for the inconvenience. If you are continuing to Hill Square, "
    "please remain on platform two. Connecting passengers for the coastal route should follow "
    "updated departure screens and listen for further announcements. Thank you for your "
    "patience, and please stand clear of the platform edge. "
)


def text_of(chars: int) -> str:
    text = (BASE * (chars // len(BASE) + 1))[:chars]
    return text.rsplit(" ", 1)[0] + "."


class TimingEndpoint(ReferenceEndpoint):
    """The reference endpoint, noting when the first frame of each stream arrived."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.first_frame: dict[int, float] = {}

    def _on_audio(self, frame: bytes) -> None:
        stream = int.from_bytes(frame[4:8], "big")
        self.first_frame.setdefault(stream, time.perf_counter())
        super()._on_audio(frame)


async def main(runs: int, chars: int, speed: float, file_store: bool) -> None:
    ids = [f"ep{i}" for i in range(len(FORMATS))]
    store = str(Path(tempfile.mkdtemp()) / "bench.sqlite3") if file_store else ":memory:"
    cfg = parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "api_tokens": api_tokens(),
            "store": {"path": store},
            "zones": [{"id": "z"}],
            "endpoints": [{"id": e, "token_hash": hash_token("t"), "zones": ["z"]} for e in ids],
        }
    )
    text = text_of(chars)
    print(f"text: {len(text)} characters, speed {speed}, {runs} runs, formats {FORMATS}")
    print(f"store: {store}")
    async with Service(cfg) as svc:
        tmp = Path(tempfile.mkdtemp())
        eps = [
            TimingEndpoint(
                url=f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint",
                endpoint_id=e,
                token="t",
                zones=["z"],
                formats=[f],
                out_dir=tmp,
                reconnect=False,
            )
            for e, f in zip(ids, FORMATS, strict=True)
        ]
        tasks = [asyncio.create_task(ep.run()) for ep in eps]
        for ep in eps:
            await ep.joined.wait()
        api = f"http://127.0.0.1:{svc.http_port}/v1/announcements"
        results: dict[str, list[float]] = {f: [] for f in FORMATS}
        server_side: list[float] = []
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for _ in range(runs):
                t0 = time.perf_counter()
                async with http.post(api, json={"text": text, "zones": ["z"], "speed": speed}) as r:
                    created = await r.json()
                ann = svc.announcer.registry.get(created["id"])
                while not all(ann.number in ep.first_frame for ep in eps):
                    await asyncio.sleep(0.001)
                for ep, f in zip(eps, FORMATS, strict=True):
                    results[f].append((ep.first_frame[ann.number] - t0) * 1000)
                server_side.append((ann.first_audio_sent_us - ann.accepted_us) / 1000)
                svc.announcer.cancel(ann.id, "benchmark run done")
                while not ann.state.is_final:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
        for ep in eps:
            ep.stop()
        for t in tasks:
            t.cancel()
    print(f"{'format':<18}{'median ms':>10}{'min ms':>9}{'max ms':>9}")
    for f, xs in results.items():
        print(f"{f:<18}{statistics.median(xs):>10.1f}{min(xs):>9.1f}{max(xs):>9.1f}")
    print(f"{'server: accept→1st chunk queued':<32} median {statistics.median(server_side):.1f} ms")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--chars", type=int, default=1000)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--file-store", action="store_true", help="journal in a SQLite file")
    a = p.parse_args()
    asyncio.run(main(a.runs, a.chars, a.speed, a.file_store))
