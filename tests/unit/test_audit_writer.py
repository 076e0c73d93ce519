"""The audit writer: bounded, never waits for the store, survives a failing store."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from broadcaster.api.access import AuditWriter
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


async def test_a_failing_store_is_logged_and_the_writer_goes_on(caplog):
    store = ThreadlessStore()
    writer = AuditWriter(store, limit=10)  # type: ignore[arg-type]
    store.fail = True
    writer.record(row(1))
    await writer.flush()
    assert writer.failed_writes == 1
    assert any(
        r.levelno == logging.ERROR and "1 entries could not be stored" in r.getMessage()
        for r in caplog.records
    )
    store.fail = False
    writer.record(row(2))
    await writer.flush()
    assert [r.path for r in store.store.list_audit()] == ["/p/2"]
