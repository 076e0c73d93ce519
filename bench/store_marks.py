"""What the durable playout marks cost: write latency of the store on this disk.

Opens a SQLite store (WAL, synchronous=FULL) in a temporary folder on the disk
the journal would use, inserts announcements and times, through ``AsyncStore``
(one worker thread, as the service uses it):

* the accept write (the record, or the record with its Idempotency-Key),
* the "playing" mark written before the first chunk (state + started_at + details),
* the "all audio sent" mark,
* the probe write made every 5 s.

The "playing" mark is written while the first segment is synthesized, so it
delays the first chunk only when it takes longer than that synthesis.

    python bench/store_marks.py [--n 500] [--dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from broadcaster.store import AnnouncementRow, AsyncStore, IdempotencyRow


def row(now: datetime) -> AnnouncementRow:
    return AnnouncementRow(
        id=str(uuid.uuid4()),
        number=1,
        spec={"text": "Platform two for Hill Square.", "zones": ["hall"], "priority": 100},
        state="queued",
        created_at=now,
    )


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await op(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def main(n: int, folder: Path) -> None:
    store = await AsyncStore.open(folder / "bench.sqlite3")
    now = datetime.now(UTC)
    rows = [row(now) for _ in range(n)]
    keyed = [row(now) for _ in range(n)]
    try:
        results = {
            "accept (insert)": await timed(n, lambda i: store.insert_announcement(rows[i])),
            "accept with Idempotency-Key": await timed(
                n,
                lambda i: store.insert_announcement_with_key(
                    keyed[i],
                    IdempotencyRow("anonymous", f"k{i}", "fp", 202, "announcement:x", {}, now),
                ),
            ),
            "'playing' mark": await timed(
                n,
                lambda i: store.update_announcement(
                    rows[i].id,
                    state="playing",
                    started_at=now,
                    details={"engine": "espeak-ng", "segments": 2, "warnings": []},
                ),
            ),
            "'all audio sent' mark": await timed(
                n, lambda i: store.mark_audio_sent(rows[i].id, now)
            ),
            "probe write": await timed(n, lambda i: store.probe(now)),
        }
    finally:
        await store.close()
    print(f"store: {folder} ({n} writes each, WAL, synchronous=FULL)")
    print(f"{'write':<30}{'median ms':>10}{'p99 ms':>9}{'max ms':>9}")
    for name, xs in results.items():
        xs.sort()
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        print(f"{name:<30}{statistics.median(xs):>10.2f}{p99:>9.2f}{xs[-1]:>9.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    a = p.parse_args()
    folder = a.dir or Path(tempfile.mkdtemp())
    asyncio.run(main(a.n, folder))
