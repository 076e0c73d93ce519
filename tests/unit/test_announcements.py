from datetime import UTC, datetime

from broadcaster.announcements import Registry, ZoneArbiter
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
