"""Rules behind the console's API: zone groups and gains in the config, free-text
schedules, the template registry, gains in force, who may change what, and the
store's migration 5 (no sockets, no sleeps)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from broadcaster.api.access import Access
from broadcaster.auth import Principal, may_change_template, may_set_gain, may_silence
from broadcaster.clock import FakeClock
from broadcaster.config import ConfigError, ScheduleConfig, hash_token, parse_config
from broadcaster.endpoint import apply_gain
from broadcaster.gains import Gains
from broadcaster.scheduling.library import TemplateLibrary, TemplateProblem, describe_variables
from broadcaster.store import AsyncStore, GainRow, Store, StoreError, TemplateRow

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def cfg(**extra: Any):
    data: dict[str, Any] = {
        "zones": [{"id": "p1"}, {"id": "p2", "gain_db": -6}, {"id": "hall"}],
        "zone_groups": [{"id": "platforms", "name": "All platforms", "zones": ["p1", "p2"]}],
        "endpoints": [
            {"id": "e1", "token_hash": hash_token("t1"), "zones": ["p1", "p2"], "gain_db": -3},
            {"id": "e2", "token_hash": hash_token("t2"), "zones": ["hall"]},
        ],
        "templates": [
            {
                "name": "delay",
                "text": "Delayed by {{ minutes }} minutes.",
                "zones": ["platforms"],
                "variables": {"minutes": {"type": "int", "default": 5}},
            }
        ],
    }
    data.update(extra)
    return parse_config(data, "site.toml")


# --- zone groups --------------------------------------------------------------------------


def test_groups_expand_in_order_once_each_with_a_builtin_all():
    c = cfg()
    assert c.groups == {"platforms": ("p1", "p2"), "all": ("p1", "p2", "hall")}
    assert c.expand_zones(["hall", "platforms", "p1"]) == ["hall", "p1", "p2"]
    assert c.expand_zones(["all"]) == ["p1", "p2", "hall"]
    assert c.unknown_zones(["p1", "platforms", "all", "nope"]) == ["nope"]


def test_a_zone_or_group_called_all_replaces_the_builtin():
    c = cfg(zones=[{"id": "all"}, {"id": "p1"}, {"id": "p2"}, {"id": "hall"}])
    assert "all" not in c.groups and c.expand_zones(["all"]) == ["all"]
    c = cfg(zone_groups=[{"id": "all", "zones": ["hall"]}, {"id": "platforms", "zones": ["p1"]}])
    assert c.groups == {"all": ("hall",), "platforms": ("p1",)}


@pytest.mark.parametrize(
    ("groups", "words"),
    [
        ([{"id": "p1", "zones": ["p2"]}], "zone_groups[0] (p1): id is also a zone id"),
        ([{"id": "g", "zones": ["nope"]}], "zone_groups[0] (g): zones ['nope'] are not defined"),
        ([{"id": "g", "zones": ["platforms"]}], "a group lists zones, not other groups"),
        ([{"id": "g", "zones": []}], "zone_groups[0] (id 'g').zones"),
        (
            [{"id": "g", "zones": ["p1"]}, {"id": "g", "zones": ["p2"]}],
            "zone_groups ids listed twice",
        ),
        (
            [{"id": "g", "zones": ["p1"], "colour": 1}],
            "zone_groups[0] (id 'g').colour: unknown key",
        ),
    ],
)
def test_bad_zone_groups_name_file_key_and_problem(groups, words):
    extra = [{"id": "platforms", "zones": ["p1", "p2"]}] if "platforms" in str(groups) else []
    with pytest.raises(ConfigError) as info:
        cfg(zone_groups=extra + groups if extra else groups)
    assert str(info.value).startswith("site.toml: ") and words in str(info.value)


def test_groups_are_accepted_by_templates_schedules_tokens_but_not_endpoints():
    c = cfg(
        schedules=[
            {
                "id": "s",
                "text": "Hello.",
                "zones": ["all"],
                "every_s": 60,
                "start": "2026-01-01T00:00:00",
            }
        ],
        api_tokens=[
            {"id": "op", "role": "operator", "token_hash": hash_token("op"), "zones": ["platforms"]}
        ],
    )
    principal = Access.from_config(c, clock=FakeClock(), store=None).tokens.authenticate("op")
    assert principal is not None and principal.zones == frozenset({"p1", "p2"})
    with pytest.raises(ConfigError, match=r"endpoints\[0\] \(e1\): zones \['platforms'\]"):
        cfg(endpoints=[{"id": "e1", "token_hash": hash_token("t1"), "zones": ["platforms"]}])
    with pytest.raises(ConfigError, match=r"templates\[0\] \(x\): zones \['nope'\]"):
        cfg(templates=[{"name": "x", "text": "x", "zones": ["nope"]}])


# --- gains in the config ------------------------------------------------------------------


@pytest.mark.parametrize("gain", [0.5, -60.5, True])
def test_gains_in_the_config_are_attenuation_only(gain):
    with pytest.raises(ConfigError, match=r"zones\[0\] \(id 'p1'\)\.gain_db"):
        cfg(zones=[{"id": "p1", "gain_db": gain}, {"id": "p2"}, {"id": "hall"}])
    with pytest.raises(ConfigError, match=r"endpoints\[0\] \(id 'e1'\)\.gain_db"):
        cfg(
            endpoints=[
                {"id": "e1", "token_hash": hash_token("t"), "zones": ["p1"], "gain_db": gain}
            ]
        )


# --- schedules of free text ---------------------------------------------------------------


def sched(**kw: Any) -> ScheduleConfig:
    return ScheduleConfig.model_validate(
        {"id": "s", "every_s": 60, "start": "2026-01-01T00:00:00", **kw}, strict=True
    )


def test_a_schedule_carries_exactly_one_of_template_or_text():
    assert sched(text="  Closing soon. ", zones=["hall"]).text == "Closing soon."
    assert sched(template="delay").template == "delay"
    for kw, field in [
        ({}, "template"),
        ({"template": "delay", "text": "x"}, "template"),
        ({"text": "x"}, "zones"),
        ({"text": "x", "zones": ["hall"], "variables": {"a": 1}}, "variables"),
        ({"text": "  ", "zones": ["hall"]}, "text"),
        ({"text": "a\x07b", "zones": ["hall"]}, "text"),
        ({"text": "x", "zones": ["hall"], "chime_before": "gong"}, "chime_before"),
        ({"text": "x", "zones": ["hall"], "voice": "robot"}, "voice"),
        ({"text": "x", "zones": ["hall"], "repeats": 11}, "repeats"),
    ]:
        with pytest.raises(ValidationError) as info:
            sched(**kw)
        assert field in str(info.value), (kw, str(info.value))


def test_the_stored_copy_leaves_out_new_keys_while_unset():
    # So a config schedule stored by an older version compares equal (keeps its state).
    plain = sched(template="delay").stored()
    assert not {"text", "voice", "chime_before", "chime_after", "repeats"} & set(plain)
    assert plain["template"] == "delay"
    assert sched(text="x", zones=["hall"], repeats=1).stored()["repeats"] == 1


def test_config_schedule_text_is_bounded_and_needs_no_template():
    c = cfg(schedules=[{"id": "s", "text": "Hi.", "zones": ["hall"], "cron": "0 * * * *"}])
    assert c.schedules[0].template is None
    with pytest.raises(ConfigError, match=r"schedules\[0\] \(s\): text: 200 characters"):
        cfg(
            announcements={"max_text_chars": 100},
            schedules=[{"id": "s", "text": "x" * 200, "zones": ["hall"], "cron": "0 * * * *"}],
        )


# --- gains in force -----------------------------------------------------------------------


def test_endpoint_gain_is_its_own_plus_the_highest_zone_it_hears():
    g = Gains(cfg())
    assert g.for_endpoint("e1", ["p1", "p2"]) == -3.0  # p1 (0) beats p2 (-6)
    assert g.for_endpoint("e1", ["p2"]) == -9.0
    assert g.for_endpoint("e2", ["hall"]) == 0.0
    g.set("zone", "p1", -20)
    assert g.for_endpoint("e1", ["p1", "p2"]) == -9.0  # now p2 (-6) is the highest
    assert g.as_dict("zone", "p1") == {
        "gain_db": -20.0,
        "gain_db_config": 0.0,
        "gain_source": "api",
    }
    g.set("zone", "p1", None)
    assert g.source("zone", "p1") == "config" and g.get("zone", "p1") == 0.0
    with pytest.raises(ValueError, match="between -60 and 0"):
        g.set("endpoint", "e1", 1.0)
    g.set("zone", "unknown", -5)  # ignored: not configured
    assert not g.known("zone", "unknown") and g.get("zone", "unknown") == 0.0


def test_the_reference_endpoint_attenuates_and_never_boosts():
    pcm = np.array([0, 1000, -1000, 32767, -32768], dtype="<i2").tobytes()
    out = np.frombuffer(apply_gain(pcm, -6.0), "<i2")
    assert list(out) == [0, 501, -501, 16422, -16423]
    assert apply_gain(pcm, 0.0) == pcm and apply_gain(pcm, 6.0) == pcm


# --- who may change what ------------------------------------------------------------------


def test_template_rights_follow_the_band_and_the_token_zones():
    op = Principal("op", "operator")
    disp = Principal("d", "dispatcher")
    view = Principal("v", "viewer")
    gate_op = Principal("g", "operator", frozenset({"p1"}))
    kw = {"name": "t", "zones": ["p1"], "emergency_priority": 224, "verb": "edit"}
    assert may_change_template(op, priority=223, **kw) is None
    refused = may_change_template(op, priority=224, **kw)
    assert refused is not None and refused.status == 403 and refused.fields[0][0] == "priority"
    assert may_change_template(disp, priority=255, **kw) is None
    assert may_change_template(Principal("a", "admin"), priority=255, **kw) is None
    assert may_change_template(view, priority=0, **kw) is not None
    assert may_change_template(gate_op, priority=100, **{**kw, "zones": ["p1"]}) is None
    refused = may_change_template(gate_op, priority=100, **{**kw, "zones": ["p1", "p2"]})
    assert refused is not None and "p2" in refused.message


def test_gains_need_admin_and_silence_takes_a_group_s_zones():
    assert may_set_gain(Principal("a", "admin"), "zone p1", ["p1"]) is None
    assert may_set_gain(Principal("d", "dispatcher"), "zone p1", ["p1"]) is not None
    limited = Principal("a", "admin", frozenset({"p1"}))
    assert may_set_gain(limited, "zone p2", ["p2"]) is not None
    gate = Principal("d", "dispatcher", frozenset({"p1"}))
    assert may_silence(gate, ["p1"]) is None
    assert may_silence(gate, ["p1", "p2"]) is not None


# --- the template registry ----------------------------------------------------------------

BODY = {
    "name": "platform",
    "text": "Platform {{ n }} for the {{ service }}.",
    "zones": ["platforms"],
    "variables": {
        "n": {"type": "int", "default": 2},
        "service": {"type": "str", "choices": ["York train"], "max_length": 40},
        "at": {"type": "time", "default": "12:40"},
    },
}


def test_variables_are_described_for_a_form():
    lib = TemplateLibrary(cfg())
    tpl = lib.parse({**BODY, "text": BODY["text"] + " {{ at }}"})
    assert describe_variables(tpl) == {
        "n": {"type": "int", "default": 2, "choices": None, "max_length": None, "required": False},
        "service": {
            "type": "str",
            "default": None,
            "choices": ["York train"],
            "max_length": 40,
            "required": True,
        },
        "at": {
            "type": "time",
            "default": "12:40",
            "choices": None,
            "max_length": None,
            "required": False,
        },
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"text": "Platform {% if n %}"}, "text"),
        ({"text": "{{ colour }}"}, "text"),
        ({"variables": {"n": "colour"}}, "variables.n"),
        ({"variables": {"n": {"type": "int", "default": "2"}}}, "variables.n"),
        ({"translations": {"German": "Gleis {{ m }}"}}, "translations.German"),
        ({"zones": ["nowhere"]}, "zones"),
        ({"chime_after": "file:/etc/passwd"}, "chime_after"),
        ({"chime_after": "file:../up.wav"}, "chime_after"),
    ],
)
def test_a_bad_template_names_the_field(change, field):
    lib = TemplateLibrary(cfg())
    with pytest.raises(TemplateProblem) as info:
        lib.parse({**BODY, **change})
    assert info.value.field == field and info.value.status == 422


def test_templates_longer_than_announcements_may_be_are_refused():
    lib = TemplateLibrary(cfg(announcements={"max_text_chars": 100}))
    with pytest.raises(TemplateProblem) as info:
        lib.parse({**BODY, "text": "x" * 101, "variables": {}})
    assert info.value.field == "text"


async def test_templates_are_kept_in_the_store_and_read_back(tmp_path: Path):
    path = tmp_path / "s.db"
    clock = FakeClock(wall_start=T0)
    store = await AsyncStore.open(path, now=T0)
    try:
        lib = TemplateLibrary(cfg(), store, clock)
        await lib.save(lib.parse(BODY), by="op", create=True)
        with pytest.raises(TemplateProblem) as info:
            await lib.save(lib.parse(BODY), by="op", create=True)
        assert info.value.status == 409
        with pytest.raises(TemplateProblem) as info:
            await lib.save(lib.parse({**BODY, "name": "delay"}), by="op", create=True)
        assert info.value.status == 409 and "site.toml" in str(info.value)
        await clock.advance_us(60_000_000)
        await lib.save(lib.parse({**BODY, "text": "Now {{ n }}."}), by="op2", create=False)
        assert lib.names() == ["delay", "platform"]
        assert lib.source("delay") == "config" and lib.source("platform") == "api"
        # a stored template the config now shadows, and one that no longer validates
        await store.upsert_template(
            TemplateRow(name="delay", data={**BODY, "name": "delay"}, created_at=T0, updated_at=T0)
        )
        await store.upsert_template(
            TemplateRow(
                name="gone",
                data={**BODY, "name": "gone", "zones": ["removed-zone"]},
                created_at=T0,
                updated_at=T0,
            )
        )
    finally:
        await store.close()
    store = await AsyncStore.open(path, now=T0)
    try:
        again = TemplateLibrary(cfg(), store, clock)
        await again.load()
        assert again.names() == ["delay", "platform"]
        assert again.get("delay") is not None and again.get("delay").text.startswith("Delayed")
        shown = again.describe("platform")
        assert shown["text"] == "Now {{ n }}." and shown["source"] == "api"
        assert shown["created_by"] == "op" and shown["updated_by"] == "op2"
        assert shown["created_at"] == T0.isoformat()
        assert shown["updated_at"] == (T0 + timedelta(seconds=60)).isoformat()
        assert shown["zones_expanded"] == ["p1", "p2"] and shown["effective_priority"] == 100
        assert await again.delete("platform") is True
        assert await again.delete("platform") is False
        with pytest.raises(TemplateProblem):
            await again.delete("delay")
        assert [r.name for r in await store.list_templates()] == ["delay", "gone"]
    finally:
        await store.close()


# --- migration 5 ----------------------------------------------------------------------------


def test_migration_5_keeps_templates_and_gains(tmp_path: Path):
    path = tmp_path / "s.db"
    s = Store.open(path, now=T0)
    try:
        assert s.schema_version() >= 5
        s.set_gain(GainRow("zone", "p1", -6.5, T0, "admin"))
        s.set_gain(GainRow("zone", "p1", -7.0, T0 + timedelta(seconds=1), "admin2"))
        s.set_gain(GainRow("endpoint", "e1", 0.0, T0, None))
        assert s.list_gains() == [
            GainRow("endpoint", "e1", 0.0, T0, None),
            GainRow("zone", "p1", -7.0, T0 + timedelta(seconds=1), "admin2"),
        ]
        assert s.clear_gain("zone", "p1") is True and s.clear_gain("zone", "p1") is False
        with pytest.raises(StoreError):  # the table refuses a boost too
            s.set_gain(GainRow("zone", "p1", 1.0, T0, None))
        s.upsert_template(TemplateRow("t", {"text": "a"}, T0, T0, "op", "op"))
        s.upsert_template(
            TemplateRow("t", {"text": "b"}, T0 + timedelta(1), T0 + timedelta(1), "x", "op2")
        )
        [row] = s.list_templates()
        assert row.data == {"text": "b"} and row.created_at == T0 and row.created_by == "op"
        assert row.updated_by == "op2"
        assert s.delete_template("t") is True and s.list_templates() == []
    finally:
        s.close()
    with sqlite3.connect(path) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"templates", "gains"} <= tables


# --- the announcer tells each endpoint its gain ---------------------------------------------


async def test_each_endpoint_gets_its_own_gain_in_announcement_started():
    from broadcaster.announcements import Registry
    from broadcaster.announcer import Announcer, AudioSettings, PlayoutSettings
    from broadcaster.model import AnnouncementSpec, StreamFormat
    from broadcaster.streaming.hub import EndpointLink, Hub
    from tests.unit.test_announcer import FakeEngine, InlineExecutor, RecordingOutbox, play

    config = cfg()
    gains = Gains(config)
    gains.set("zone", "hall", -10)
    clock = FakeClock()
    hub = Hub()
    fmt = StreamFormat.parse("pcm_s16le/16000")
    boxes = {eid: RecordingOutbox(clock) for eid in ("e1", "e2", "e3")}
    hub.register(EndpointLink("e1", "s1", ("p1", "p2"), fmt, boxes["e1"], 0))
    hub.register(EndpointLink("e2", "s2", ("hall",), fmt, boxes["e2"], 0))
    hub.register(EndpointLink("e3", "s3", ("p2",), fmt, boxes["e3"], 0))  # not configured
    announcer = Announcer(
        engine=FakeEngine(clock, seconds=0.2),
        hub=hub,
        clock=clock,
        registry=Registry(100),
        settings=PlayoutSettings(
            lead_us=300_000,
            opus_bitrate_bps=32000,
            first_segment_max_chars=100,
            queue_limit=10,
            audio=AudioSettings(normalize=False),
        ),
        transcode_executor=InlineExecutor(),
        gains=gains,
    )
    spec = AnnouncementSpec(
        text="Hi.", zones=("p1", "p2", "hall"), voice="ryan", language="English", speed=1.0
    )
    await play(clock, announcer, spec)
    started = {
        eid: next(m for m in box.control if m["type"] == "announcement_started")
        for eid, box in boxes.items()
    }
    # e1: its own -3 plus the highest of p1 (0) and p2 (-6); e2: hall's -10 set through
    # the API; e3: no configured gain of its own, p2's -6.
    assert {eid: m["gain_db"] for eid, m in started.items()} == {
        "e1": -3.0,
        "e2": -10.0,
        "e3": -6.0,
    }
    assert len({m["stream"] for m in started.values()}) == 1


async def test_the_api_holds_a_bounded_number_of_templates():
    lib = TemplateLibrary(cfg())
    lib.max_templates = 2
    for name in ("a", "b"):
        await lib.save(lib.parse({**BODY, "name": name}), by=None, create=True)
    with pytest.raises(TemplateProblem) as info:
        await lib.save(lib.parse({**BODY, "name": "c"}), by=None, create=True)
    assert info.value.status == 409 and "delete one first" in str(info.value)
    await lib.save(lib.parse({**BODY, "name": "a", "text": "Edited."}), by=None, create=False)
