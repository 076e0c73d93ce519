"""Plain frozen values that cross stage boundaries.

Pydantic is used only at the edges (config, HTTP bodies, JSON wire messages);
inside the pipeline everything is one of these small dataclasses.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

#: The nine preset voices of Qwen3-TTS 1.7B CustomVoice, spelled as the API wants them.
VOICES: tuple[str, ...] = (
    "vivian",
    "serena",
    "uncle_fu",
    "dylan",
    "eric",
    "ryan",
    "aiden",
    "ono_anna",
    "sohee",
)

#: The eleven ``speech.language`` values of the production model.
LANGUAGES: tuple[str, ...] = (
    "Auto",
    "English",
    "Chinese",
    "Japanese",
    "Korean",
    "German",
    "French",
    "Russian",
    "Portuguese",
    "Spanish",
    "Italian",
)

#: Named priority bands (EN 54-16 / PA practice): the lowest value of each band, and
#: the value a request naming the band gets.
PRIORITY_BANDS: dict[str, tuple[int, int]] = {
    "background": (0, 16),
    "routine": (32, 100),
    "operational": (128, 160),
    "emergency": (224, 240),
}


def priority_band(priority: int) -> str:
    """The name of the band a numeric priority falls in."""
    name = "background"
    for band, (lowest, _) in PRIORITY_BANDS.items():
        if priority >= lowest:
            name = band
    return name


SPEED_MIN = 0.25
SPEED_MAX = 4.0
#: The model's speed grid (the seed: ``speech.speed`` float, min 0.25, max 4, step 0.01).
SPEED_STEP = 0.01


def check_speed(value: object) -> float:
    """``value`` as a speed on the model's grid, or ``ValueError`` saying why not.

    The grid applies whatever the engine (espeak-ng would take any speed in range):
    which engine speaks is only known segment by segment (fallback), so a speed
    must be valid for both, and it is never rounded silently.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    speed = float(value)
    if not SPEED_MIN <= speed <= SPEED_MAX:  # (NaN fails this too)
        raise ValueError(f"must be between {SPEED_MIN} and {SPEED_MAX:g}, got {value!r}")
    hundredths = round(speed / SPEED_STEP)
    if abs(speed / SPEED_STEP - hundredths) > 1e-6:
        low = math.floor(speed / SPEED_STEP) / 100
        raise ValueError(
            f"must be a multiple of {SPEED_STEP} (the model's grid; {low:.2f} or "
            f"{low + SPEED_STEP:.2f}?), got {value!r}; speeds are never rounded"
        )
    return hundredths / 100


def check_style(v: str) -> str:
    """A style prompt (Runware's positivePrompt) must say something: a blank one is
    refused, not dropped, so a request meaning "no style" (leave the field out) is
    never confused with one that lost its text (and a template's style is never
    replaced by nothing)."""
    if not v.strip():
        raise ValueError("is blank; leave style out for no style prompt")
    return v


class Codec(enum.StrEnum):
    """Audio codecs an endpoint may ask for."""

    PCM_S16LE = "pcm_s16le"
    OPUS = "opus"
    PCM_MULAW = "pcm_mulaw"


#: Sample rates each codec is offered at.
CODEC_RATES_HZ: dict[Codec, tuple[int, ...]] = {
    Codec.PCM_S16LE: (8000, 16000, 24000, 48000),
    Codec.OPUS: (48000,),
    Codec.PCM_MULAW: (8000,),
}

#: Opus is always sent as one 20 ms packet per chunk.
OPUS_FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """What an endpoint receives: codec, rate, channels and chunk length.

    ``key`` (for example ``"opus/48000"``) names the format on the wire and in
    logs; every endpoint with the same key gets the very same bytes.
    """

    codec: Codec
    sample_rate_hz: int
    channels: int = 1
    frame_ms: int = 20

    def __post_init__(self) -> None:
        rates = CODEC_RATES_HZ.get(self.codec)
        if rates is None or self.sample_rate_hz not in rates:
            raise ValueError(
                f"{self.codec} is not offered at {self.sample_rate_hz} Hz (offered: {rates})"
            )
        if self.channels != 1:
            raise ValueError("only mono streams are offered")
        if self.codec is Codec.OPUS and self.frame_ms != OPUS_FRAME_MS:
            raise ValueError(f"opus is sent in {OPUS_FRAME_MS} ms frames")
        if not 10 <= self.frame_ms <= 200 or self.frame_ms % 10:
            raise ValueError("frame_ms must be a multiple of 10 between 10 and 200")

    @property
    def key(self) -> str:
        return f"{self.codec.value}/{self.sample_rate_hz}"

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate_hz * self.frame_ms // 1000

    @classmethod
    def parse(cls, key: str, pcm_frame_ms: int = 20) -> StreamFormat:
        """Parse ``"codec/rate"``; PCM formats use ``pcm_frame_ms`` chunks."""
        codec_s, _, rate_s = key.partition("/")
        try:
            codec = Codec(codec_s)
        except ValueError:
            raise ValueError(f"unknown codec {codec_s!r}") from None
        try:
            rate = int(rate_s)
        except ValueError:
            raise ValueError(f"bad sample rate in {key!r}") from None
        frame_ms = OPUS_FRAME_MS if codec is Codec.OPUS else pcm_frame_ms
        return cls(codec=codec, sample_rate_hz=rate, frame_ms=frame_ms)


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """One piece of text to speak, with everything that changes the audio."""

    text: str
    voice: str = "ryan"
    language: str = "English"
    speed: float = 1.0
    style: str | None = None  # positivePrompt for engines that take one
    #: Cap on generated audio tokens for engines that take one (None: sized to the text).
    max_new_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class PcmBlock:
    """Mono signed 16-bit little-endian PCM."""

    samples: bytes
    sample_rate_hz: int

    @property
    def sample_count(self) -> int:
        return len(self.samples) // 2

    @property
    def duration_us(self) -> int:
        return self.sample_count * 1_000_000 // self.sample_rate_hz


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One chunk of one format: its payload and where it sits in the announcement.

    ``offset_us`` is the position of the first sample from the start of the
    announcement's audio; ``duration_us`` how much audio the payload holds.
    """

    payload: bytes
    offset_us: int
    duration_us: int


class AnnouncementState(enum.StrEnum):
    QUEUED = "queued"
    PLAYING = "playing"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"
    #: A scheduled firing found too late to play (past its misfire grace).
    MISSED = "missed"
    #: Its expiry passed before it could start.
    EXPIRED = "expired"
    #: Never admitted: the waiting queue of its priority band was full in one of its
    #: zones (the reason names the zone and the bound). Recorded, never played.
    REFUSED = "refused"
    #: Admitted, then pushed out of a full queue by a higher priority before it started.
    DROPPED = "dropped"
    #: Played, but in at least one of its zones nobody could hear it (no endpoint, or
    #: every endpoint there missed it); ``zones`` in the record says which.
    PARTIAL = "partial"
    #: Played and all audio sent to every zone, but some zone's endpoints sent no
    #: playback receipt, so that it was heard is not verified there.
    UNCONFIRMED = "unconfirmed"

    @property
    def is_final(self) -> bool:
        return self not in (AnnouncementState.QUEUED, AnnouncementState.PLAYING)


@dataclass(frozen=True, slots=True)
class AnnouncementSpec:
    """What was asked for: validated, defaults applied, ready to play."""

    text: str
    zones: tuple[str, ...]
    voice: str
    language: str
    speed: float
    style: str | None = None
    priority: int = 100
    #: False: speak the text as one engine request (as far as the engine allows),
    #: trading first-audio latency for one uninterrupted take.
    split: bool = True
    max_new_tokens: int | None = None
    template: str | None = None
    #: When a higher priority takes its zones: "stack" (replay it afterwards from
    #: the start) or "drop".
    on_preempt: str = "stack"
    #: Call composition: chimes (a built-in name or "file:PATH"), repeats of the
    #: spoken part, and more languages spoken after the first, in order.
    chime_before: str | None = None
    chime_after: str | None = None
    repeats: int = 0
    repeat_gap_ms: int = 1000
    also: tuple[tuple[str, str], ...] = ()  # (language, text) pairs
    #: What the engine is given: (language, prepared text) for the text and then each
    #: of ``also`` (see :func:`broadcaster.announcements.spoken_texts`); empty: made
    #: from the texts when needed (a spec built by hand, a record from before).
    spoken: tuple[tuple[str, str], ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    #: "speech" (text spoken by an engine) or "live" (a live page from a microphone:
    #: its audio comes from the paging uplink, never replayed, see docs/paging.md).
    kind: str = "speech"
