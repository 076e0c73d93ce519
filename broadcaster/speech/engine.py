"""The contract every speech engine fulfils.

An engine turns one :class:`~broadcaster.model.SpeechRequest` into an async
stream of mono s16le PCM blocks, so audio can flow to endpoints before the
whole text is synthesized. Engines never block the event loop: CPU-bound
synthesis runs in a worker thread owned by the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from broadcaster.model import PcmBlock, SpeechRequest


class SpeechError(Exception):
    """Synthesis failed. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@runtime_checkable
class SpeechEngine(Protocol):
    #: Short name shown in logs and announcement records ("espeak-ng", "runware").
    name: str
    #: Longest text one request may carry; longer texts are split before they get here.
    max_text_chars: int

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[PcmBlock]:
        """Yield PCM for ``request`` as it is produced.

        Closing the iterator early (``aclose()``, or cancelling the consumer)
        stops synthesis as soon as the engine can. Raises :class:`SpeechError`.
        """
        ...

    async def aclose(self) -> None:
        """Release threads and native resources."""
        ...
