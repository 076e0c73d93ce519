"""HTTP request bodies, validated with pydantic; errors name the field.

Bodies are untrusted: before a body reaches a model, :func:`check_json` refuses
what no field may hold (nesting deeper than :data:`MAX_JSON_DEPTH`, strings with
lone surrogates, NaN or infinities, integers outside 64 bits), naming where it
was found. The models are strict (``true`` is not a priority, ``"1.5"`` is not
a speed) and every number has an upper bound, so nothing downstream overflows.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from broadcaster.model import (
    LANGUAGES,
    PRIORITY_BANDS,
    SPEED_MAX,
    SPEED_MIN,
    VOICES,
    check_speed,
    check_style,
)

#: Deepest nesting of arrays and objects a request body may have.
MAX_JSON_DEPTH = 32
#: Integers in a body must fit in a signed 64-bit integer.
_INT_LIMIT = 2**63
#: ``expires_after_s`` (and a template's or schedule's) is at most a week.
MAX_EXPIRES_AFTER_S = 7 * 86400
#: ``due_at`` may be at most this far ahead...
DUE_AT_MAX_AHEAD_DAYS = 366
#: ...and at most this far in the past (a past due time means "now").
DUE_AT_MAX_PAST_DAYS = 1

_Name = Annotated[str, Field(min_length=1, max_length=64)]
#: Control characters no spoken text may hold (tab, newline and carriage return may).
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_spoken(v: str) -> str:
    if CONTROL_CHARS.search(v):
        raise ValueError("contains control characters")
    return v


_Wire = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def check_json(value: Any, path: str = "") -> list[dict[str, str]]:
    """Problems with a parsed JSON document that no schema may accept, by field.

    Iterative (no recursion), so a body nested a million levels deep is refused
    rather than overflowing the stack.
    """
    problems: list[dict[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack and len(problems) < 20:
        node, where, depth = stack.pop()
        field = where or "(body)"
        if isinstance(node, dict | list):
            if depth >= MAX_JSON_DEPTH:
                # Named by its top-level field: the full path would be as deep as the body.
                top = where.split(".", 1)[0] or "(body)"
                problems.append(
                    {"field": top, "message": f"nested deeper than {MAX_JSON_DEPTH} levels"}
                )
                continue
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str) and _has_surrogate(key):
                    problems.append({"field": field, "message": "a key is not valid Unicode"})
                    continue
                stack.append((child, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(node, str):
            if _has_surrogate(node):
                problems.append({"field": field, "message": "not valid Unicode (a lone surrogate)"})
        elif isinstance(node, float):
            if not math.isfinite(node):
                problems.append({"field": field, "message": "must be a finite number"})
        elif (
            isinstance(node, int)
            and not isinstance(node, bool)
            and not -_INT_LIMIT <= node < _INT_LIMIT
        ):
            problems.append({"field": field, "message": "integer out of range"})
    return problems


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class AlsoSpoken(BaseModel):
    """The announcement again in another language, spoken after the first."""

    model_config = _Wire

    language: str
    text: str = Field(min_length=1, max_length=100_000)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_spoken(v)

    @field_validator("language")
    @classmethod
    def _language(cls, v: str) -> str:
        if v not in LANGUAGES:
            raise ValueError(f"unknown language {v[:40]!r}; one of {', '.join(LANGUAGES)}")
        return v


class AnnouncementRequest(BaseModel):
    """POST /v1/announcements."""

    model_config = _Wire

    #: The text, or the name of a configured template (or both: the text overrides).
    text: str | None = Field(default=None, max_length=100_000)
    template: str | None = Field(default=None, min_length=1, max_length=64)
    zones: list[_Name] | None = Field(default=None, min_length=1, max_length=256)
    voice: str | None = None
    language: str | None = None
    speed: float | None = Field(default=None, ge=SPEED_MIN, le=SPEED_MAX)
    style: str | None = Field(default=None, max_length=2000)
    #: 0-255 (higher wins), or a band: background, routine, operational, emergency.
    priority: int | str | None = None
    #: When a higher priority takes its zones: replay it afterwards ("stack") or "drop".
    on_preempt: Literal["stack", "drop"] | None = None
    #: Call composition (default: the template's): chimes, repeats, more languages.
    chime_before: str | None = Field(default=None, max_length=200)
    chime_after: str | None = Field(default=None, max_length=200)
    repeats: int | None = Field(default=None, ge=0, le=10)
    repeat_gap_ms: int | None = Field(default=None, ge=0, le=60000)
    also: list[AlsoSpoken] | None = Field(default=None, max_length=10)
    #: Values for the template's variables.
    variables: dict[str, Any] = Field(default_factory=dict, max_length=100)
    #: When to start (ISO 8601 with an offset; default: now; at most a year ahead) and
    #: after when never to start.
    due_at: Annotated[AwareDatetime | None, Field(strict=False)] = None
    expires_at: Annotated[AwareDatetime | None, Field(strict=False)] = None
    #: Seconds from due_at (or now) after which it never starts (instead of expires_at).
    expires_after_s: float | None = Field(default=None, gt=0, le=MAX_EXPIRES_AFTER_S)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("text is empty")
        return check_spoken(v)

    @field_validator("style")
    @classmethod
    def _style(cls, v: str | None) -> str | None:
        return None if v is None else check_spoken(check_style(v))

    @field_validator("speed")
    @classmethod
    def _speed(cls, v: float | None) -> float | None:
        return None if v is None else check_speed(v)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: object) -> int | None:
        if v is None:
            return None
        if isinstance(v, str):
            band = PRIORITY_BANDS.get(v)
            if band is None:
                raise ValueError(
                    f"unknown band {v[:40]!r}; one of {', '.join(PRIORITY_BANDS)} or 0-255"
                )
            return band[1]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
            raise ValueError("must be an integer 0-255 or a band name")
        return v

    @field_validator("chime_before", "chime_after")
    @classmethod
    def _chime(cls, v: str | None) -> str | None:
        from broadcaster.config import check_request_chime

        return check_request_chime(v)

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | None) -> str | None:
        if v is not None and v not in (*VOICES, "auto"):
            raise ValueError(f"unknown voice {v[:40]!r}; one of {', '.join(VOICES)} or auto")
        return v

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        if v is not None and v not in LANGUAGES:
            raise ValueError(f"unknown language {v[:40]!r}; one of {', '.join(LANGUAGES)}")
        return v

    @field_validator("zones")
    @classmethod
    def _zones(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else list(dict.fromkeys(v))


class TriggerRequest(AnnouncementRequest):
    """POST /v1/triggers/{template}: the template comes from the path."""


def _field(loc: tuple[int | str, ...]) -> str:
    # pydantic adds the member of a union it tried ("int", "function-after[...]"):
    # those are not fields.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _TAGS))]
    return ".".join(parts) or "(body)"


_TAGS = frozenset({"int", "str", "float", "bool", "list", "dict", "none"})


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as ``[{"field": "speed", "message": "..."}]``."""
    out = []
    for err in exc.errors():
        field = _field(tuple(err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required"
        out.append({"field": field, "message": msg})
    return out


# --- responses (documentation only: the routes build plain dicts) --------------------------


class _Open(BaseModel):
    """A response object: the listed keys are always there; more may be added."""

    model_config = ConfigDict(extra="allow")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every error: a code, a message for people, and the fields at fault (422)."""

    error: str
    message: str
    fields: list[FieldError] | None = None


class SpokenText(BaseModel):
    """One language's text exactly as the speech engine is given it."""

    language: str
    text: str


class AnnouncementRecord(_Open):
    """An announcement's record: state, reason, timings, per-endpoint deliveries.

    ``text`` (and ``also``) are as written; ``spoken`` is what was said, per language
    in order: numbers, times, phone numbers, codes and platforms read out in words.
    """

    id: str
    state: str
    reason: str | None = None
    zones: list[str]
    priority: int
    created_at: str
    spoken: list[SpokenText] = []


class PreviewResponse(_Open):
    """What announcing a body would say and where, without announcing it."""

    text: str
    language: str
    also: list[SpokenText]
    #: Per language, in the order spoken: the text given to the speech engine.
    spoken: list[SpokenText]
    priority: int
    zones: list[str]
    template: str | None = None


class AnnouncementList(BaseModel):
    announcements: list[AnnouncementRecord]


class ScheduleRecord(_Open):
    """A schedule as configured, with its source (config or api) and next firings."""

    id: str
    template: str | None
    text: str | None
    paused: bool
    source: str
    next_firings: list[str]


class ScheduleList(BaseModel):
    schedules: list[ScheduleRecord]


class ScheduleDeleted(BaseModel):
    deleted: str


class SilenceRequest(BaseModel):
    """POST /v1/zones/{id}/silence (optional body): a note added to the reason."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str | None = Field(default=None, max_length=200)


class ReplayRequest(BaseModel):
    """POST /v1/announcements/{id}/replay (optional body): where and how to replay a
    recorded live page (default: its zones, priority and chimes)."""

    model_config = ConfigDict(extra="forbid")

    zones: list[_Name] | None = Field(default=None, min_length=1, max_length=256)
    #: 0-255 (higher wins), or a band: background, routine, operational, emergency.
    priority: int | str | None = None
    chime_before: str | None = Field(default=None, max_length=200)
    chime_after: str | None = Field(default=None, max_length=200)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: object) -> int | None:
        return AnnouncementRequest._priority(v)


class SilenceResult(BaseModel):
    zone: str
    reason: str
    cancelled: list[str]


class AuditList(BaseModel):
    audit: list[dict[str, Any]]


class ReadinessResponse(BaseModel):
    ready: bool
    reasons: list[dict[str, str]]


class EndpointStatus(_Open):
    endpoint_id: str
    allowed_zones: list[str]
    connected: bool
    audio_output: Literal["ready", "blocked"] | None = Field(
        default=None,
        description="What the connected endpoint reports in its status message "
        '(docs/protocol.md 5.13): "blocked" when it cannot make sound now, e.g. a '
        "browser kiosk waiting for a tap to enable sound; null when not reported.",
    )


class EndpointList(BaseModel):
    endpoints: list[EndpointStatus]


class ZoneStatus(_Open):
    id: str
    name: str | None
    endpoints: list[str]
    playing: str | None


class ZoneGroupStatus(BaseModel):
    """A zone group: configured ([[zone_groups]]), or the built-in ``all``."""

    id: str
    name: str | None
    zones: list[str]
    builtin: bool


class ZoneList(BaseModel):
    zones: list[ZoneStatus]
    groups: list[ZoneGroupStatus]


class GainRequest(BaseModel):
    """PUT /v1/zones/{id}/gain, PUT /v1/endpoints/{id}/gain: attenuation in dB, -60..0
    (never a boost: the true-peak ceiling holds); null goes back to the config's gain."""

    model_config = _Wire

    gain_db: float | None = Field(ge=-60, le=0)


class GainResult(BaseModel):
    kind: Literal["zone", "endpoint"]
    id: str
    #: In force; the config's; where the one in force comes from.
    gain_db: float
    gain_db_config: float
    gain_source: Literal["config", "api"]


class TemplateVariable(BaseModel):
    """A template variable, as a form needs it."""

    type: Literal["str", "int", "float", "bool", "time"]
    default: Any = None
    choices: list[str] | None = None
    max_length: int | None = None
    required: bool


class TemplateRecord(_Open):
    """A template: its fields, where it comes from (config: read-only; api: editable),
    its variables described, and its effective priority."""

    name: str
    text: str
    source: Literal["config", "api"]
    zones: list[str]
    priority: int | None
    effective_priority: int
    emergency: bool
    variables: dict[str, TemplateVariable]


class TemplateList(BaseModel):
    templates: list[TemplateRecord]


class TemplateDeleted(BaseModel):
    deleted: str


class EventList(BaseModel):
    events: list[dict[str, Any]]


class HealthResponse(_Open):
    status: str


class OpenApiDocument(_Open):
    openapi: str
    paths: dict[str, Any]
