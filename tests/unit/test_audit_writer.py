"""The audit writer: bounded, never waits for the store, survives a failing store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from broadcaster.api.access import AuditWriter
from broadcaster.clock import FakeClock
from broadcaster.store import AuditRow, Store, StoreError


class ThreadlessStore:
    """The real Store, called inline (AsyncStore's thread is not the point here)."""

    def __init__(self) -> None:
        self.store = Store.open(":memory:")
        self.fail = False

    async def insert_audit(self, rows):
        if self.fail:
            raise StoreError("database x: disk I/O error")
        self.store.insert_audit(rows)


def row(i: int) -> AuditRow:
    return AuditRow(at=datetime(2026, 1, 1, tzinfo=UTC), method="POST", path=f"/p/{i}", status=202)


async def test_a_full_queue_drops_new_entries_and_counts_them(caplog):
    caplog.set_level(logging.INFO)
    store = ThreadlessStore()
    writer = AuditWriter(store, limit=10)  # type: ignore[arg-type]
    for i in range(25):
        writer.record(row(i))
    assert writer.dropped == 15
    assert sum("audit: POST '/p/" in r.getMessage() for r in caplog.records) == 25  # all logged
    assert any("audit queue full" in r.getMessage() for r in caplog.records)
    await writer.flush()
    assert [r.path for r in store.store.list_audit()] == [f"/p/{i}" for i in range(10)]


async def test_a_failing_store_keeps_the_entries_and_they_land_once_it_writes(caplog):
    store = ThreadlessStore()
    writer = AuditWriter(store, limit=10)  # type: ignore[arg-type]
    store.fail = True
    writer.record(row(1))
    await writer.flush()  # returns (the request is never held up); the entry stays
    writer.record(row(2))
    await writer.flush()
    assert writer.failed_writes == 1 + 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "could not be stored (kept, retried" in errors[0].getMessage()
    store.fail = False
    writer.record(row(3))
    await writer.flush()
    assert [r.path for r in store.store.list_audit()] == ["/p/1", "/p/2", "/p/3"]  # in order
    assert any("stored again" in r.getMessage() for r in caplog.records)


async def test_the_writer_task_retries_on_the_clock():
    clock = FakeClock()
    store = ThreadlessStore()
    writer = AuditWriter(store, limit=10, clock=clock)  # type: ignore[arg-type]
    store.fail = True
    task = asyncio.create_task(writer._drain())
    writer.record(row(1))
    await clock.advance_us(0)
    assert store.store.list_audit() == [] and writer.failed_writes == 1
    await clock.advance_us(1_000_000)
    assert writer.failed_writes == 2  # tried again a second later, not in a busy loop
    store.fail = False
    await clock.advance_us(1_000_000)
    assert [r.path for r in store.store.list_audit()] == ["/p/1"]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
