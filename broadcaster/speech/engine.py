"""The contract every speech engine fulfils.

An engine turns one :class:`~broadcaster.model.SpeechRequest` into an async
stream of mono s16le PCM blocks, so audio can flow to endpoints before the
whole text is synthesized. Engines never block the event loop: CPU-bound
synthesis runs in a worker thread owned by the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, runtime_checkable

from broadcaster.model import PcmBlock, SpeechRequest


class SpeechError(Exception):
    """Synthesis failed. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class SynthesisMeta:
    """What one synthesis cost and how it was made; engines fill in what they know.

    Passed in by the caller (one per announcement) and added to, so a single
    object totals the cost and the requests of every segment.
    """

    requests: int = 0  # requests sent to a remote engine
    cache_hits: int = 0
    retries: int = 0
    notes: list[str] = field(default_factory=list)
    #: Every task a remote engine may bill: task id -> its cost (None: not known
    #: yet, e.g. abandoned before its answer came). Abandoned, timed-out and
    #: superseded tasks stay here; a late answer fills their cost in.
    billed: dict[str, Decimal | None] = field(default_factory=dict)
    #: Segment (request identity) -> the task whose audio it is, for ``mark_heard``.
    segment_task: dict[int, str] = field(default_factory=dict)
    #: Task ids whose audio was handed on to be played.
    heard: set[str] = field(default_factory=set)

    def bill(self, task_uuid: str, cost: float | Decimal | None) -> None:
        """Record a task the provider may charge for (idempotent; a known cost sticks)."""
        if cost is not None:
            # repr() is the shortest text that reads back as the same float: the
            # provider's decimal figure, without binary noise (0.0001 stays 0.0001).
            self.billed[task_uuid] = cost if isinstance(cost, Decimal) else Decimal(repr(cost))
        else:
            self.billed.setdefault(task_uuid, None)

    def add_cost(self, cost: float | None) -> None:
        """A cost not tied to a task id (kept for engines that know no ids)."""
        if cost is not None:
            self.bill(f"untracked-{len(self.billed)}", cost)

    def mark_heard(self, request: object) -> None:
        task = self.segment_task.get(id(request))
        if task is not None:
            self.heard.add(task)

    @property
    def cost(self) -> Decimal | None:
        """Exact decimal sum of the known costs (None: nothing billed with a cost)."""
        known = [c for c in self.billed.values() if c is not None]
        return sum(known, Decimal(0)) if known else None

    @property
    def tasks_billed(self) -> int:
        return len(self.billed)

    @property
    def tasks_heard(self) -> int:
        return len(self.heard & self.billed.keys())


@runtime_checkable
class SpeechEngine(Protocol):
    #: Short name shown in logs and announcement records ("espeak-ng", "runware").
    name: str
    #: Longest text one request may carry; longer texts are split before they get here.
    max_text_chars: int
    #: How many segments it is worth requesting at once (1 for a local engine that
    #: works serially; more for a remote engine whose latency is per request).
    concurrency: int

    def synthesize(
        self, request: SpeechRequest, meta: SynthesisMeta | None = None
    ) -> AsyncIterator[PcmBlock]:
        """Yield PCM for ``request`` as it is produced.

        Closing the iterator early (``aclose()``, or cancelling the consumer)
        stops synthesis as soon as the engine can. Raises :class:`SpeechError`.
        """
        ...

    async def aclose(self) -> None:
        """Release threads and native resources."""
        ...
