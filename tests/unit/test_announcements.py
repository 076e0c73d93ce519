from datetime import UTC, datetime

from broadcaster.announcements import Decision, Registry, ZoneArbiter
from broadcaster.model import AnnouncementSpec, AnnouncementState


def spec(zones=("a",)):
    return AnnouncementSpec(
        text="hi", zones=tuple(zones), voice="ryan", language="English", speed=1
    )


def test_fifo_per_zone():
    arb = ZoneArbiter()
    arb.submit("1", frozenset({"a"}))
    arb.submit("2", frozenset({"a"}))
    arb.submit("3", frozenset({"b"}))
    assert arb.startable() == ["1", "3"]
    assert arb.startable() == []
    arb.release("1")
    assert arb.startable() == ["2"]


def test_later_announcement_does_not_overtake_an_earlier_one_on_a_shared_zone():
    arb = ZoneArbiter()
    arb.submit("1", frozenset({"a"}))
    assert arb.startable() == ["1"]
    arb.submit("2", frozenset({"a", "b"}))  # waits for a
    arb.submit("3", frozenset({"b"}))  # must wait behind 2, which claims b
    assert arb.startable() == []
    arb.release("1")
    assert arb.startable() == ["2"]
    arb.release("2")
    assert arb.startable() == ["3"]


def test_withdraw_queued():
    arb = ZoneArbiter()
    arb.submit("1", frozenset({"a"}))
    arb.submit("2", frozenset({"a"}))
    assert arb.startable() == ["1"]
    assert arb.withdraw("2")
    arb.release("1")
    assert arb.startable() == []
    assert arb.holder("a") is None


def test_registry_keeps_unfinished_and_bounded_history():
    reg = Registry(history_limit=2)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    anns = [reg.create(spec(), now=now, now_us=i) for i in range(4)]
    assert len({a.number for a in anns}) == 4 and all(a.number > 0 for a in anns)
    for a in anns[:3]:
        a.state = AnnouncementState.FINISHED
        reg.finished(a)
    assert reg.get(anns[0].id) is None  # oldest finished forgotten
    assert reg.get(anns[1].id) is not None and reg.get(anns[2].id) is not None
    assert reg.get(anns[3].id) is not None  # unfinished is never evicted
    assert [a.id for a in reg.recent(10)] == [anns[3].id, anns[2].id, anns[1].id]


def z(*names):
    return frozenset(names)


def test_higher_priority_preempts_a_lower_one_in_its_zone_only():
    arb = ZoneArbiter()
    arb.submit("routine-a", z("a"), 100)
    arb.submit("routine-b", z("b"), 100)
    assert arb.decide().start == ["routine-a", "routine-b"]
    arb.submit("emergency", z("a"), 240)
    d = arb.decide()
    assert d.start == ["emergency"] and d.preempt == [("routine-a", "emergency")]
    assert arb.holder("a") == "emergency" and arb.holder("b") == "routine-b"


def test_equal_or_lower_priority_waits_first_in_first_out():
    arb = ZoneArbiter()
    arb.submit("first", z("a"), 150)
    arb.decide()
    arb.submit("same", z("a"), 150)
    arb.submit("lower", z("a"), 50)
    arb.submit("same-later", z("a"), 150)
    assert arb.decide() == Decision([], [])
    arb.release("first")
    assert arb.decide().start == ["same"]
    arb.release("same")
    assert arb.decide().start == ["same-later"]
    arb.release("same-later")
    assert arb.decide().start == ["lower"]


def test_emergency_to_all_zones_preempts_everything():
    arb = ZoneArbiter()
    for i, zone in enumerate("abc"):
        arb.submit(f"r{i}", z(zone), 100 + i)
    arb.decide()
    arb.submit("evacuate", z("a", "b", "c"), 255)
    d = arb.decide()
    assert d.start == ["evacuate"]
    assert sorted(p for p, _ in d.preempt) == ["r0", "r1", "r2"]


def test_a_waiting_higher_one_is_not_overtaken_by_a_lower_one():
    arb = ZoneArbiter()
    arb.submit("emergency-ab", z("a", "b"), 240)
    arb.submit("playing-b", z("b"), 250)  # even higher: plays in b first
    d = arb.decide()
    assert d.start == ["playing-b"]
    arb.submit("routine-a", z("a"), 100)  # a is free, but emergency-ab claims it
    assert arb.decide().start == []
    arb.release("playing-b")
    assert arb.decide().start == ["emergency-ab"]


def test_a_stacked_replay_keeps_its_place():
    arb = ZoneArbiter()
    arb.submit("one", z("a"), 100)
    arb.decide()
    seq_one = 1
    arb.submit("two", z("a"), 100)
    arb.submit("alarm", z("a"), 240)
    d = arb.decide()
    assert d.preempt == [("one", "alarm")]
    arb.submit("one", z("a"), 100, seq=seq_one)  # replayed afterwards, ahead of "two"
    arb.release("alarm")
    assert arb.decide().start == ["one"]


def test_created_by_is_in_the_record_its_stored_form_and_comes_back_after_a_restart():
    from broadcaster.journal import revive, row_as_dict, to_row

    reg = Registry(history_limit=10)
    ann = reg.create(spec(), now=datetime(2026, 1, 1, tzinfo=UTC), now_us=0)
    assert ann.as_dict()["created_by"] is None  # a schedule's, or made internally
    ann.created_by = "desk-1"
    assert ann.as_dict()["created_by"] == "desk-1"
    row = to_row(ann)
    assert row.details["created_by"] == "desk-1"
    assert row_as_dict(row)["created_by"] == "desk-1"
    assert revive(row, Registry(history_limit=10), now_us=0).created_by == "desk-1"
