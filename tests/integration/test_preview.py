"""POST /v1/preview and the record's `spoken`: what the preview shows is what the
engine is given (a recording espeak engine), per language; roles as for announcing."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broadcaster.app import Service
from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.engine import SynthesisMeta
from broadcaster.speech.espeak import EspeakEngine

from .conftest import Harness, make_config

pytestmark = pytest.mark.integration

TEMPLATES = [
    {
        "name": "departure",
        "text": "The {{ time }} to {{ destination }} leaves from platforms 4 and 5. "
        "For help call 555-0123.",
        "variables": {"time": {"type": "time"}, "destination": {"type": "str"}},
        "zones": ["hall"],
    },
    {"name": "alarm", "text": "Please leave the building.", "priority": 250, "zones": ["gate"]},
]

TEXT = "The 17.30 to Leeds, headcode 1A23, leaves from platform 3a in 3/4 of an hour."
GERMAN = "Der Zug um 17.30 Uhr fährt von Gleis 3a. Service: +49 30 1234 5678."


class RecordingEspeak(EspeakEngine):
    """espeak-ng that keeps every request it is given, in order."""

    def __init__(self) -> None:
        super().__init__(max_text_chars=200)
        self.requests: list[SpeechRequest] = []

    async def synthesize(
        self, request: SpeechRequest, meta: SynthesisMeta | None = None
    ) -> AsyncGenerator[PcmBlock, None]:
        self.requests.append(request)
        async for block in super().synthesize(request, meta):
            yield block


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    engine = RecordingEspeak()
    async with Service(make_config(templates=TEMPLATES), engine=engine) as service:
        harness = Harness(service, tmp_path)
        harness.engine = engine  # type: ignore[attr-defined]
        try:
            yield harness
        finally:
            await harness.close()


def said_per_language(requests: list[SpeechRequest]) -> dict[str, str]:
    """The engine's segments joined back per language."""
    out: dict[str, list[str]] = {}
    for r in requests:
        out.setdefault(r.language or "", []).append(r.text)
    return {lang: " ".join(parts) for lang, parts in out.items()}


async def test_preview_shows_per_language_exactly_what_the_engine_is_then_given(h):
    body: dict[str, Any] = {
        "text": TEXT,
        "zones": ["hall"],
        "language": "English",
        "also": [{"language": "German", "text": GERMAN}],
        "speed": 3.0,  # fast, to keep the test short; the words are the same
    }
    status, preview = await h.post(body, path="/v1/preview", as_="operator")
    assert status == 200, preview
    assert preview["text"] == TEXT  # the operator's text, as written
    assert preview["spoken"] == [
        {
            "language": "English",
            "text": "The seventeen thirty to Leeds, headcode one A twenty-three, leaves from "
            "platform three A in three quarters of an hour.",
        },
        {
            "language": "German",
            "text": "Der Zug um siebzehn Uhr dreißig fährt von Gleis drei A. Service: plus "
            "vier neun, drei null, eins zwo drei vier, fünf sechs sieben acht.",
        },
    ]
    assert preview["zones"] == ["hall"] and preview["priority"] == 100
    assert preview["language"] == "English"
    assert preview["also"] == [{"language": "German", "text": GERMAN}]  # as written
    # Nothing was announced, queued or stored.
    status, listing = await h.get("/v1/announcements")
    assert status == 200 and listing["announcements"] == []
    assert h.engine.requests == []  # type: ignore[attr-defined]

    await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
    status, created = await h.post(body, as_="operator")
    assert status == 202, created
    assert created["spoken"] == preview["spoken"]
    record = await h.wait_final(created["id"])
    assert record["text"] == TEXT  # the caption and the record keep the operator's text
    assert record["spoken"] == preview["spoken"]
    said = said_per_language(h.engine.requests)  # type: ignore[attr-defined]
    assert said == {s["language"]: s["text"] for s in preview["spoken"]}


async def test_a_rendered_template_is_prepared_too(h):
    body = {"template": "departure", "variables": {"time": "08:05", "destination": "Leeds"}}
    status, preview = await h.post(body, path="/v1/preview", as_="operator")
    assert status == 200, preview
    assert preview["template"] == "departure" and preview["zones"] == ["hall"]
    # Shown with the values as given; spoken with them (and the template's words) read out.
    assert preview["text"] == (
        "The 08:05 to Leeds leaves from platforms 4 and 5. For help call 555-0123."
    )
    # The template's own words are prepared as well: its platforms and phone number.
    assert preview["spoken"] == [
        {
            "language": "English",
            "text": "The eight oh five to Leeds leaves from platforms four and five. "
            "For help call five five five, zero one two three.",
        }
    ]
    await h.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
    status, created = await h.post({}, path="/v1/triggers/departure", as_="operator")
    assert status == 422  # the trigger needs its variables, as the preview would have said
    status, created = await h.post(
        {"variables": body["variables"], "speed": 3.0},
        path="/v1/triggers/departure",
        as_="operator",
    )
    assert status == 202, created
    record = await h.wait_final(created["id"])
    assert record["spoken"] == preview["spoken"]
    said = said_per_language(h.engine.requests)  # type: ignore[attr-defined]
    assert said == {"English": preview["spoken"][0]["text"]}


async def test_preview_has_the_rules_of_announcing(h):
    # An operator previewing an emergency is refused as announcing it would be.
    emergency = {"text": "Evacuate.", "zones": ["hall"], "priority": 240}
    status, resp = await h.post(emergency, path="/v1/preview", as_="operator")
    status2, resp2 = await h.post(emergency, as_="operator")
    assert status == status2 == 403
    assert resp["message"] == resp2["message"]
    status, resp = await h.post({"template": "alarm"}, path="/v1/preview", as_="operator")
    assert status == 403 and "priority 250" in resp["message"]
    status, resp = await h.post({"template": "alarm"}, path="/v1/preview", as_="dispatcher")
    assert status == 200 and resp["priority"] == 250 and resp["zones"] == ["gate"]
    # Viewers may not announce, so they may not preview.
    status, resp = await h.post(
        {"text": "Hi.", "zones": ["hall"]}, path="/v1/preview", as_="viewer"
    )
    assert status == 403
    # The same validation, naming the field.
    status, resp = await h.post({"text": "Hi.", "zones": ["nowhere"]}, path="/v1/preview")
    assert status == 422 and resp["fields"][0]["field"] == "zones"
    status, resp = await h.post({"template": "nope"}, path="/v1/preview")
    assert status == 422 and resp["fields"][0]["field"] == "template"
    status, resp = await h.post(
        {"template": "departure", "variables": {"time": "25:00", "destination": "X"}},
        path="/v1/preview",
    )
    assert status == 422 and resp["fields"][0]["field"] == "variables.time"
    status, listing = await h.get("/v1/announcements")
    assert listing["announcements"] == []


async def test_a_preview_is_audited_only_when_refused(h, caplog):
    caplog.set_level(logging.INFO, logger="broadcaster.audit")
    status, _ = await h.post({"text": "Hi.", "zones": ["hall"]}, path="/v1/preview", as_="operator")
    assert status == 200
    emergency = {"text": "Evacuate.", "zones": ["hall"], "priority": 240}
    status, _ = await h.post(emergency, path="/v1/preview", as_="operator")
    assert status == 403
    lines = [r.getMessage() for r in caplog.records if r.name == "broadcaster.audit"]
    previews = [line for line in lines if "'/v1/preview'" in line]
    assert len(previews) == 1 and " 403 " in previews[0], lines
