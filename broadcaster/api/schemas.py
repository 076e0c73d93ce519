"""HTTP request bodies, validated with pydantic; errors name the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from broadcaster.model import LANGUAGES, PRIORITY_BANDS, SPEED_MAX, SPEED_MIN, VOICES


class AlsoSpoken(BaseModel):
    """The announcement again in another language, spoken after the first."""

    model_config = ConfigDict(extra="forbid")

    language: str
    text: str = Field(min_length=1)

    @field_validator("language")
    @classmethod
    def _language(cls, v: str) -> str:
        if v not in LANGUAGES:
            raise ValueError(f"unknown language {v!r}; one of {', '.join(LANGUAGES)}")
        return v


class AnnouncementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The text, or the name of a configured template (or both: the text overrides).
    text: str | None = None
    template: str | None = Field(default=None, max_length=64)
    zones: list[str] | None = Field(default=None, min_length=1, max_length=256)
    voice: str | None = None
    language: str | None = None
    speed: float | None = Field(default=None, ge=SPEED_MIN, le=SPEED_MAX)
    style: str | None = Field(default=None, max_length=2000)
    #: 0-255 (higher wins), or a band: background, routine, operational, emergency.
    priority: int | str | None = None
    #: When a higher priority takes its zones: replay it afterwards ("stack") or "drop".
    on_preempt: Literal["stack", "drop"] | None = None
    #: Call composition (default: the template's): chimes, repeats, more languages.
    chime_before: str | None = None
    chime_after: str | None = None
    repeats: int | None = Field(default=None, ge=0, le=10)
    repeat_gap_ms: int | None = Field(default=None, ge=0, le=60000)
    also: list[AlsoSpoken] | None = Field(default=None, max_length=10)
    #: Values for the template's variables.
    variables: dict[str, Any] = Field(default_factory=dict)
    #: When to start (ISO 8601; default: now) and after when never to start.
    due_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    #: Seconds from due_at (or now) after which it never starts (instead of expires_at).
    expires_after_s: float | None = Field(default=None, gt=0)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("text is empty")
        return v

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: int | str | None) -> int | None:
        if v is None:
            return None
        if isinstance(v, str):
            band = PRIORITY_BANDS.get(v)
            if band is None:
                raise ValueError(f"unknown band {v!r}; one of {', '.join(PRIORITY_BANDS)} or 0-255")
            return band[1]
        if isinstance(v, bool) or not 0 <= v <= 255:
            raise ValueError("must be 0-255 or a band name")
        return v

    @field_validator("chime_before", "chime_after")
    @classmethod
    def _chime(cls, v: str | None) -> str | None:
        from broadcaster.config import _check_chime

        return _check_chime(v)

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | None) -> str | None:
        if v is not None and v not in (*VOICES, "auto"):
            raise ValueError(f"unknown voice {v!r}; one of {', '.join(VOICES)} or auto")
        return v

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        if v is not None and v not in LANGUAGES:
            raise ValueError(f"unknown language {v!r}; one of {', '.join(LANGUAGES)}")
        return v

    @field_validator("zones")
    @classmethod
    def _zones(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else list(dict.fromkeys(v))


class TriggerRequest(AnnouncementRequest):
    """POST /v1/triggers/{template}: the template comes from the path."""


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as ``[{"field": "speed", "message": "..."}]``."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required"
        out.append({"field": field, "message": msg})
    return out
