"""Live paging latency: a talker's captured sample to its play-at time at the endpoint.

Starts the real service with the default playout delay (300 ms) on 127.0.0.1,
connects a reference endpoint, and pages through the uplink (docs/paging.md)
with the Python talker: 20 ms frames sent in real time, each sent when its last
sample is "captured" (as a microphone's frame would be). The audio is silence
with a short 1 kHz beep every half second; the bench finds each beep's onset in
the endpoint's decoded audio and takes that sample's play-at time (the chunk's
``play_at_us`` plus its position) minus the moment the talker captured it. Same
machine, so both sides read the same monotonic clock: no clock estimate enters.

Also prints the server's own estimate (the record's ``live.latency_ms``).

    python bench/paging_latency.py [--seconds 6] [--codec opus|pcm_s16le]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
from _api import HEADERS, TOKEN, api_tokens

from broadcaster.app import Service
from broadcaster.audio.transcode import Transcoder
from broadcaster.clock import SystemClock
from broadcaster.config import hash_token, parse_config
from broadcaster.endpoint import ReferenceEndpoint
from broadcaster.model import Codec, StreamFormat
from broadcaster.paging_client import PagingClient

RATE = 48000
FRAME = 960
BEEP_EVERY_S = 0.5
BEEP_S = 0.06


def beeps(seconds: float) -> tuple[bytes, list[int]]:
    """Silence with a 1 kHz beep every BEEP_EVERY_S; the beeps' first samples."""
    n = int(seconds * RATE)
    x = np.zeros(n)
    onsets = []
    t = np.arange(int(BEEP_S * RATE)) / RATE
    for start in range(int(0.2 * RATE), n - len(t), int(BEEP_EVERY_S * RATE)):
        x[start : start + len(t)] = 0.3 * np.sin(2 * np.pi * 1000 * t)
        onsets.append(start)
    return bytes((x * 32767).astype("<i2").tobytes()), onsets


def onsets_in(pcm: bytes, expected: int) -> list[int]:
    """Sample indices where a beep starts (envelope over a quarter of its peak)."""
    x = np.abs(np.frombuffer(pcm, "<i2").astype(float))
    env = np.convolve(x, np.ones(48) / 48, mode="same")
    above = env > env.max() / 4
    starts = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    out: list[int] = []
    for s in starts:
        if not out or s - out[-1] > BEEP_EVERY_S * RATE / 2:
            out.append(int(s))
    return out[:expected]


async def run(seconds: float, codec: str) -> None:
    clock = SystemClock()
    cfg = parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0},
            "api_tokens": api_tokens(),
            "store": {"path": ":memory:"},
            "zones": [{"id": "hall"}],
            "endpoints": [{"id": "ep", "token_hash": hash_token("ep-token"), "zones": ["hall"]}],
        },
        "bench",
    )
    async with Service(cfg) as svc:
        ep = ReferenceEndpoint(
            url=f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint",
            endpoint_id="ep",
            token="ep-token",
            zones=["hall"],
            formats=["pcm_s16le/48000"],
            out_dir=Path(tempfile.mkdtemp()),
            reconnect=False,
        )
        ep_task = asyncio.create_task(ep.run())
        await asyncio.wait_for(ep.joined.wait(), 10)
        pcm, onsets = beeps(seconds)
        blocks = [pcm[i : i + 2 * FRAME] for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME)]
        encoder = Transcoder(StreamFormat(Codec.OPUS, RATE), source_rate_hz=RATE)
        client = await PagingClient.open(
            f"ws://127.0.0.1:{svc.http_port}/v1/paging",
            {"token": TOKEN, "zones": ["hall"], "codec": codec, "sample_rate_hz": RATE},
        )
        await asyncio.wait_for(client.live.wait(), 10)
        t0 = clock.monotonic_us()
        sent_at: list[int] = []
        for i, block in enumerate(blocks):
            # Frame i holds samples captured from t0 + 20 ms * i; it is complete (and
            # sent) 20 ms later.
            await clock.sleep_until_us(t0 + (i + 1) * 20_000)
            payloads = [f.payload for f in encoder.push(block)] if codec == "opus" else [block]
            for p in payloads:
                await client.send(p, t0 + i * 20_000)
            sent_at.append(clock.monotonic_us())
        await client.stop()
        ended = await client.wait_ended()
        await client.close()
        assert ended is not None
        ann_id = client.accepted["announcement_id"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{svc.http_port}/v1/announcements/{ann_id}", headers=HEADERS
            ) as r,
        ):
            record = await r.json()
        rec = ep.announcements[ann_id]
        found = onsets_in(bytes(rec.pcm), len(onsets))
        first_play = rec.play_at_us[0]
        # The talker's first live sample is the first the endpoint got (pre-live audio is
        # dropped and nothing was sent before "live"); match beeps in order.
        lat = [
            (first_play + f * 1_000_000 // RATE) - (t0 + o * 1_000_000 // RATE)
            for f, o in zip(found, onsets, strict=False)
        ]
        ep.stop()
        ep_task.cancel()
        print(
            f"codec {codec}, playout delay {cfg.streaming.playout_delay_ms} ms, "
            f"{len(blocks)} frames of 20 ms, {len(lat)} beeps matched of {len(onsets)}"
        )
        ms = [v / 1000 for v in lat]
        print(
            f"mic (frame start) -> endpoint play-at: median {statistics.median(ms):.1f} ms, "
            f"min {min(ms):.1f}, max {max(ms):.1f}"
        )
        print(f"server's estimate (record live.latency_ms): {record['live']['latency_ms']}")
        print(
            f"record: state {record['state']}, underruns {record['underruns']}, "
            f"dropped {record['live']['dropped_catch_up']} catch-up / "
            f"{record['live']['dropped_overflow']} overflow"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--codec", choices=("opus", "pcm_s16le"), default="opus")
    args = ap.parse_args()
    asyncio.run(run(args.seconds, args.codec))


if __name__ == "__main__":
    main()
