"""The console feed's pure parts: what changed, who sees it, the slow-client policy."""

from __future__ import annotations

from broadcaster.api.console import ConsoleFeed, Item, State, Subscriber, diff, visible
from broadcaster.auth import Principal
from broadcaster.clock import FakeClock

OPERATOR = Principal("op", "operator")
GATE = Principal("gate-op", "operator", frozenset({"gate"}))


def _ep(eid: str, zones: set[str], **body: object) -> Item:
    return Item("endpoint", eid, frozenset(zones), {"endpoint_id": eid, **body})


def test_diff_reports_new_and_changed_items_and_volatile_fields_only_on_refresh():
    old: State = {("endpoint", "a"): _ep("a", {"hall"}, connected=False, rtt_ms=None)}
    new: State = {
        ("endpoint", "a"): _ep("a", {"hall"}, connected=False, rtt_ms=3.0),
        ("endpoint", "b"): _ep("b", {"gate"}, connected=True),
    }
    assert [i.key for i in diff(old, new, refresh=False)] == ["b"]  # rtt alone: not yet
    assert [i.key for i in diff(old, new, refresh=True)] == ["a", "b"]
    flipped: State = {("endpoint", "a"): _ep("a", {"hall"}, connected=True, rtt_ms=None)}
    assert [i.key for i in diff(old, flipped, refresh=False)] == ["a"]
    assert diff(new, new, refresh=True) == []


def test_a_zone_limited_token_sees_only_items_of_its_zones():
    assert visible(GATE, frozenset({"gate", "hall"}))
    assert not visible(GATE, frozenset({"hall"}))
    assert visible(GATE, None)
    assert visible(OPERATOR, frozenset({"hall"}))


def test_a_slow_subscriber_loses_its_queue_and_is_marked_for_a_fresh_snapshot():
    sub = Subscriber(OPERATOR, limit=3)
    for n in range(3):
        sub.offer("endpoint", {"n": n})
    assert len(sub.queue) == 3 and not sub.resync
    sub.offer("endpoint", {"n": 3})  # one too many
    assert sub.resync and len(sub.queue) == 0 and sub.overflows == 1
    sub.offer("endpoint", {"n": 4})  # the coming snapshot holds it
    assert len(sub.queue) == 0
    sub.resync = False  # the writer sent the snapshot
    sub.offer("endpoint", {"n": 5})
    assert sub.take() == ("endpoint", {"n": 5}) and sub.take() is None
    sub.close()
    sub.offer("endpoint", {"n": 6})
    assert sub.closed and sub.take() is None


async def test_the_feed_offers_each_change_to_those_who_may_see_it_and_bounds_clients():
    state: State = {("endpoint", "a"): _ep("a", {"hall"}, connected=False)}
    feed = ConsoleFeed(lambda: dict(state), FakeClock(), max_clients=2)
    everyone = feed.subscribe(OPERATOR)
    gate = feed.subscribe(GATE)
    assert everyone is not None and gate is not None
    assert feed.subscribe(OPERATOR) is None  # max_clients
    assert feed.snapshot(GATE)["endpoints"] == []
    assert feed.snapshot(OPERATOR)["endpoints"] == [{"endpoint_id": "a", "connected": False}]
    feed.step()  # the first step only remembers
    assert everyone.take() is None
    state[("endpoint", "a")] = _ep("a", {"hall"}, connected=True)
    state[("endpoint", "d")] = _ep("d", {"gate"}, connected=True)
    feed.step()
    assert [b["endpoint_id"] for _, b in everyone.queue] == ["a", "d"]
    assert [b["endpoint_id"] for _, b in gate.queue] == ["d"]
    feed.close()
    assert everyone.closed and gate.closed
    feed.unsubscribe(everyone)
    assert feed.subscribe(OPERATOR) is not None
