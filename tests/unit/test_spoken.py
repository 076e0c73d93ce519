"""The spoken form of an announcement: made in one place (``prepare_spoken``), given to
the engine, shown in the record and kept in the store's record JSON."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from broadcaster.announcements import Registry, compose_spec, prepare_spoken, spoken_texts
from broadcaster.clock import FakeClock
from broadcaster.config import parse_config
from broadcaster.journal import StoreJournal, revive, row_as_dict, spec_from_json, to_row
from broadcaster.model import AnnouncementSpec
from broadcaster.store import AsyncStore

from .test_announcer import FakeEngine, play, setup

TEXT = "The 17.30 from platforms 4 and 5, call 555-0123."
SPOKEN = (
    "The seventeen thirty from platforms four and five, call five five five, zero one two three."
)
GERMAN = "Abfahrt 17.30 Uhr von Gleis 3a."
GERMAN_SPOKEN = "Abfahrt siebzehn Uhr dreißig von Gleis drei A."


def multi() -> AnnouncementSpec:
    return AnnouncementSpec(
        text=TEXT,
        zones=("z",),
        voice="ryan",
        language="English",
        speed=1.0,
        also=(("German", GERMAN),),
    )


def test_prepare_spoken_reads_each_language_by_its_own_rules():
    assert prepare_spoken("English", TEXT, (("German", GERMAN),)) == (
        ("English", SPOKEN),
        ("German", GERMAN_SPOKEN),
    )


def test_compose_spec_keeps_the_text_as_written_and_the_spoken_form_beside_it():
    config = parse_config({"zones": [{"id": "z"}]}, "t")
    spec = compose_spec(
        config, None, text=TEXT, zones=["z"], language="English", also=(("German", GERMAN),)
    )
    assert spec.text == TEXT and spec.also == (("German", GERMAN),)
    assert spec.spoken == (("English", SPOKEN), ("German", GERMAN_SPOKEN))
    assert spoken_texts(spec) == spec.spoken


def test_a_spec_made_by_hand_is_prepared_when_spoken():
    assert spoken_texts(multi()) == (("English", SPOKEN), ("German", GERMAN_SPOKEN))


async def test_the_engine_is_given_the_spoken_texts_in_order():
    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=0.2))
    [ann] = await play(clock, announcer, multi())
    said = [(r.language, r.text) for r in announcer.engine.requests]
    assert said == [("English", SPOKEN), ("German", GERMAN_SPOKEN)]
    # The endpoints' caption is the operator's text.
    [started] = [m for m in box.control if m["type"] == "announcement_started"]
    assert started["text"] == TEXT
    assert ann.as_dict()["text"] == TEXT
    assert ann.as_dict()["spoken"] == [
        {"language": "English", "text": SPOKEN},
        {"language": "German", "text": GERMAN_SPOKEN},
    ]


async def test_the_spoken_texts_are_kept_in_the_stored_record(tmp_path):
    clock = FakeClock()
    store = await AsyncStore.open(tmp_path / "s.db", wall=clock.wall)
    try:
        spec = dataclasses.replace(multi(), spoken=(("English", "as said then"),))
        ann = Registry(10).create(spec, now=clock.wall(), now_us=0)
        await StoreJournal(store).record_new(ann)
        row = await store.get_announcement(ann.id)
        assert row is not None
        assert row.spec["spoken"] == [["English", "as said then"]]
        # The stored words are shown, not made again (the rules may change later).
        assert row_as_dict(row)["spoken"] == [{"language": "English", "text": "as said then"}]
        assert spec_from_json(row.spec).spoken == (("English", "as said then"),)
        revived = revive(row, Registry(10), now_us=0)
        assert spoken_texts(revived.spec) == (("English", "as said then"),)
    finally:
        await store.close()


def test_a_record_stored_before_spoken_was_kept_shows_it_made_from_its_text():
    ann = Registry(10).create(multi(), now=datetime(2026, 1, 1, tzinfo=UTC), now_us=0)
    row = to_row(ann)
    old = dataclasses.replace(row, spec={k: v for k, v in row.spec.items() if k != "spoken"})
    assert row_as_dict(old)["spoken"] == [
        {"language": "English", "text": SPOKEN},
        {"language": "German", "text": GERMAN_SPOKEN},
    ]


# --- templates: shown as written, spoken in words ---------------------------------------------

DISPLAY_VARIABLES = {
    "time": "time",
    "minutes": "int",
    "length": "float",
    "late": "bool",
    "platform": "str",
    "note": {"type": "str", "required": False},
    "code": "str",
}
DISPLAY_SOURCE = (
    "The {{ time }} is {{ minutes }} min late ({{ late }}), {{ length }} km, platform "
    "{{ platform }}, {{ code | spell }}, {{ minutes | words }}, {{ code | digits }}.{{ note }}"
)
DISPLAY_VALUES = {
    "time": "08:05",
    "minutes": 18,
    "length": 2.5,
    "late": True,
    "platform": "2b",
    "code": "IC 2735",
}


def display_template():
    from broadcaster.scheduling.templates import TemplateRenderer, parse_variable_specs

    specs = parse_variable_specs(DISPLAY_VARIABLES)
    return TemplateRenderer().compile("display", DISPLAY_SOURCE, specs)


def test_a_template_renders_as_written_for_display_and_in_words_for_speech():
    tpl = display_template()
    assert tpl.render(DISPLAY_VALUES, display=True) == (
        "The 08:05 is 18 min late (yes), 2.5 km, platform 2b, IC 2735, 18, IC 2735."
    )
    spoken = tpl.render(DISPLAY_VALUES)
    assert spoken == (
        "The eight oh five is eighteen min late (yes), two point five km, platform two B, "
        "I C two seven three five, eighteen, IC two seven three five."
    )
    # What is spoken is the speech rendering, prepared like every text (the literal
    # "min" and "km" after values in words stay as the template wrote them).
    assert prepare_spoken("English", spoken) == (("English", spoken),)


def test_display_numbers_follow_the_language():
    tpl = display_template()
    shown = tpl.render(DISPLAY_VALUES, language="German", display=True)
    assert "2,5 km" in shown and "(ja)" in shown


def test_display_refuses_what_speech_refuses():
    from broadcaster.scheduling.templates import TemplateError

    tpl = display_template()
    with pytest.raises(TemplateError, match="minutes"):
        tpl.render({**DISPLAY_VALUES, "minutes": "soon"}, display=True)
