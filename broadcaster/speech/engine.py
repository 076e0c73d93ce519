"""The contract every speech engine fulfils.

An engine turns one :class:`~broadcaster.model.SpeechRequest` into an async
stream of mono s16le PCM blocks, so audio can flow to endpoints before the
whole text is synthesized. Engines never block the event loop: CPU-bound
synthesis runs in a worker thread owned by the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
    cost: float | None = None  # USD, when the engine reports it
    notes: list[str] = field(default_factory=list)

    def add_cost(self, cost: float | None) -> None:
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost


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
