"""The Runware client's own work on one large result: a 3 MB WAV sent as base64.

What a long segment costs between "its frame arrived" and "its PCM is ready":
JSON parse of the ~4 MB frame, base64 decode, WAV → PCM. Prints each step's time,
then the whole path as it was (parse and base64 on the event loop, WAV through
PyAV) and as it is (everything in worker threads, WAV read straight from its data
chunk), with the longest event-loop stall seen by a 1 ms ticker meanwhile.

    python bench/runware_decode.py [--seconds 65] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import time
import uuid
import wave

import numpy as np

from broadcaster.audio.decode import decode_audio_file
from broadcaster.clock import SystemClock
from broadcaster.speech.runware.client import ClientSettings, RunwareClient
from broadcaster.speech.runware.engine import decode_speech_audio
from broadcaster.speech.runware.schema import (
    _B64_RE,
    build_task,
    decode_inline_audio,
    new_task_uuid,
)


def make_frame(seconds: float) -> tuple[str, str, int]:
    rate = 24000
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    wav = buf.getvalue()
    task_uuid = new_task_uuid()
    item = {
        "taskType": "audioInference",
        "taskUUID": task_uuid,
        "audioUUID": str(uuid.uuid4()),
        "audioBase64Data": base64.b64encode(wav).decode(),
        "cost": 0.0042,
    }
    return json.dumps({"data": [item]}), task_uuid, len(wav)


def ms(f, *a):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    f(*a)
    return (time.perf_counter() - t0) * 1000


def steps(frame: str) -> None:
    item = json.loads(frame)["data"][0]
    wav = base64.b64decode(item["audioBase64Data"])
    print(f"  json.loads of the frame     {ms(json.loads, frame):7.1f} ms")
    b64 = item["audioBase64Data"]
    print(f"  base64 check + decode       {ms(old_b64decode, b64):7.1f} ms  (before)")
    print(f"  base64 decode, validated    {ms(base64.b64decode, b64, None, True):7.1f} ms  (now)")
    print(f"  WAV → PCM through PyAV      {ms(decode_audio_file, wav):7.1f} ms  (before)")
    print(f"  WAV → PCM from data chunk   {ms(decode_speech_audio, wav):7.1f} ms  (now)")


async def ticker(stalls: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        stalls.append((now - last) * 1000)
        last = now


def old_b64decode(text: str) -> bytes:
    """What the client did before: strip whitespace, regex-check, then decode."""
    compact = "".join(text.split())
    assert _B64_RE.fullmatch(compact)
    return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)


async def old_path(frame: str) -> None:
    item = json.loads(frame)["data"][0]  # on the loop
    wav = old_b64decode(item["audioBase64Data"])  # on the loop
    await asyncio.to_thread(decode_audio_file, wav)


async def new_path(frame: str, task_uuid: str) -> None:
    client = RunwareClient(ClientSettings(api_key="k", ws_url="ws://unused"), clock=SystemClock())
    task = build_task(
        taskType="audioInference",
        taskUUID=task_uuid,
        model="alibaba:qwen@3-tts-1.7b-customvoice",
        speech={"text": "x", "voice": "ryan", "language": "English", "speed": 1.0},
        outputType="base64Data",
        outputFormat="WAV",
        deliveryMethod="sync",
    )
    entry = client._register(task, via_ws=True)
    await client._receive(frame)  # the client's real receive path
    [result] = entry.future.result()
    wav = await asyncio.to_thread(decode_inline_audio, result)
    assert wav is not None
    await asyncio.to_thread(decode_speech_audio, wav)


async def measure(make, runs: int) -> tuple[float, float]:
    totals, worst = [], []
    for _ in range(runs):
        stalls: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stalls, stop))
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await make()
        totals.append((time.perf_counter() - t0) * 1000)
        stop.set()
        await tick
        worst.append(max(stalls))
    return statistics.median(totals), statistics.median(worst)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=65.0, help="audio length (65 s ≈ 3 MB)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    frame, task_uuid, wav_bytes = make_frame(args.seconds)
    print(f"one result: {wav_bytes / 1e6:.2f} MB WAV, frame {len(frame) / 1e6:.2f} MB")
    steps(frame)
    old_total, old_stall = await measure(lambda: old_path(frame), args.runs)
    new_total, new_stall = await measure(lambda: new_path(frame, task_uuid), args.runs)
    print(f"before: {old_total:7.1f} ms to PCM, longest event-loop stall {old_stall:6.1f} ms")
    print(f"now:    {new_total:7.1f} ms to PCM, longest event-loop stall {new_stall:6.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
