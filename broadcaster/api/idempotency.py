"""``Idempotency-Key`` for the POSTs that create work.

A client that did not get an answer (a timeout, a dropped connection, a server
killed mid-request) retries with the same key; it gets the first answer back
(the same record, the same status) and nothing is created twice:

* Keys are scoped to the caller (``request[PRINCIPAL].id``, else
  ``"anonymous"``), so two callers never see each other's answers.
* A key is 1–128 characters from ``A–Z a–z 0–9 . _ : ~ + / = -`` (a UUID fits);
  anything else is a 422 naming ``Idempotency-Key``.
* The first answer is stored with a fingerprint of method, path and body. The
  same key with another request is a 422 ``idempotency_key_reused``.
* For announcements the key is written in the same transaction as the record
  (``Store.insert_announcement_with_key``), so a crash leaves both or neither.
  For schedules it is written right after the schedule (a crash in between
  leaves the schedule, and a retry gets 409: the id exists).
* Only successful creates are remembered: a refused request (4xx, 503) may be
  retried with the same key and be decided afresh.
* Two requests with the same key at once: the second waits for the first and
  gets its answer.
* Keys are kept ``[store] idempotency_hours`` (default 24 h), then forgotten
  (pruned at start and at most hourly after).
* An emergency accepted while the store cannot write keeps its key in memory
  only (until restart; at most ``_MEMORY_LIMIT`` such keys).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from broadcaster.clock import Clock
from broadcaster.store import AsyncStore, IdempotencyRow, StoreError

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,128}")
_MEMORY_LIMIT = 1000
_PRUNE_EVERY = timedelta(hours=1)


def check_key(raw: str) -> str | None:
    """None if the key is acceptable, else what is wrong with it."""
    if _KEY.fullmatch(raw):
        return None
    if not raw or len(raw) > 128:
        return "must be 1 to 128 characters"
    return "may contain only letters, digits and . _ : ~ + / = -"


def scope_of(principal: object) -> str:
    """Whose key it is: the caller's token id, or "anonymous"."""
    ident = getattr(principal, "id", None)
    return str(ident) if ident else "anonymous"


def fingerprint(method: str, path: str, body: Any) -> str:
    """The same request, whatever the key order or spacing of its JSON body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


class IdempotencyKeys:
    """Stored answers by (scope, key), and the requests in flight."""

    def __init__(self, store: AsyncStore | None, clock: Clock, ttl: timedelta) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._in_flight: dict[tuple[str, str], asyncio.Event] = {}
        self._memory: OrderedDict[tuple[str, str], IdempotencyRow] = OrderedDict()
        self._pruned_at: datetime | None = None

    def row(
        self, scope: str, key: str, fp: str, status: int, resource: str, body: dict[str, Any]
    ) -> IdempotencyRow:
        return IdempotencyRow(
            scope=scope,
            key=key,
            fingerprint=fp,
            status=status,
            resource=resource,
            body=body,
            created_at=self.clock.wall(),
        )

    async def claim(self, scope: str, key: str) -> IdempotencyRow | None:
        """The stored answer for this key, or None: then the caller owns the key until
        :meth:`release` (a concurrent request with it waits here meanwhile)."""
        while True:
            found = await self._lookup(scope, key)
            if found is not None:
                return found
            event = self._in_flight.get((scope, key))
            if event is None:
                self._in_flight[(scope, key)] = asyncio.Event()
                return None
            await event.wait()

    def release(self, scope: str, key: str) -> None:
        event = self._in_flight.pop((scope, key), None)
        if event is not None:
            event.set()

    def remember(self, row: IdempotencyRow) -> None:
        """Keep an answer in memory only (the store could not write it)."""
        self._memory[(row.scope, row.key)] = row
        while len(self._memory) > _MEMORY_LIMIT:
            self._memory.popitem(last=False)

    async def save(self, row: IdempotencyRow) -> None:
        """Store an answer given after the resource was created (schedules)."""
        if self.store is None:
            self.remember(row)
            return
        await self.store.insert_idempotency(row)

    async def _lookup(self, scope: str, key: str) -> IdempotencyRow | None:
        now = self.clock.wall()
        cutoff = now - self.ttl
        found = self._memory.get((scope, key))
        if found is None and self.store is not None:
            if self._pruned_at is None or now - self._pruned_at >= _PRUNE_EVERY:
                await self._prune(now, cutoff)
            found = await self.store.get_idempotency(scope, key)
        if found is None:
            return None
        if found.created_at < cutoff:  # expired: forgotten, the key may be used afresh
            self._memory.pop((scope, key), None)
            await self._prune(now, cutoff)
            return None
        return found

    async def _prune(self, now: datetime, cutoff: datetime) -> None:
        if self.store is None:
            return
        try:
            await self.store.prune_idempotency(cutoff)
        except StoreError:  # a full disk: keys stay a while longer (the store health says so)
            return
        self._pruned_at = now
