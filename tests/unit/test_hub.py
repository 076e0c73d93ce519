"""Fan-out policy with recording fakes: no sockets."""

from broadcaster.model import StreamFormat
from broadcaster.streaming.hub import DeliveryStats, EndpointLink, Hub, Outbox

OPUS = StreamFormat.parse("opus/48000")


def link(eid, zones, fmt=OPUS, max_audio_us=100_000):
    closed = []
    lk = EndpointLink(
        endpoint_id=eid,
        session_id=f"s-{eid}",
        zones=tuple(zones),
        format=fmt,
        outbox=Outbox(max_audio_us=max_audio_us),
        connected_at_us=0,
        close=lambda code, reason: closed.append((code, reason)),
    )
    lk.closed = closed
    return lk


def test_audience_is_each_endpoint_once():
    hub = Hub()
    a, b, c = link("a", ["z1", "z2"]), link("b", ["z2"]), link("c", ["z3"])
    for lk in (a, b, c):
        hub.register(lk)
    assert [lk.endpoint_id for lk in hub.audience(["z1", "z2"])] == ["a", "b"]
    assert hub.audience(["nowhere"]) == []
    assert hub.zone_members("z2") == ["a", "b"]


def test_reconnect_replaces_the_old_link():
    hub = Hub()
    old, new = link("a", ["z1"]), link("a", ["z1"])
    hub.register(old)
    assert hub.register(new) is old
    assert hub.is_current(new) and not hub.is_current(old)
    assert not hub.unregister(old)  # the old link's late cleanup must not remove the new one
    assert hub.audience(["z1"]) == [new]
    assert hub.unregister(new)
    assert hub.audience(["z1"]) == []


def test_same_bytes_object_is_queued_for_every_endpoint():
    a, b = link("a", ["z"]), link("b", ["z"])
    frame = b"frame"
    for lk in (a, b):
        lk.outbox.put_audio(frame, play_at_us=10_000, duration_us=20_000, now_us=0)
    assert a.outbox.pop(0) is frame and b.outbox.pop(0) is frame


def test_overflow_drops_oldest_audio_never_control():
    box = Outbox(max_audio_us=60_000)
    stats = DeliveryStats("a", "opus/48000")
    box.put_control("started")
    for i in range(5):
        box.put_audio(
            bytes([i]), play_at_us=1_000_000 + i * 20_000, duration_us=20_000, now_us=i, stats=stats
        )
    box.put_control("ended")
    assert box.queued_audio_us == 60_000
    assert stats.dropped_overflow == 2 and box.counters.dropped_overflow == 2
    assert box.lagging_since_us == 3
    items = [box.pop(0) for _ in range(2)]
    assert items == ["started", bytes([2])]
    assert box.lagging_since_us == 3  # still full beyond half its bound
    items += [box.pop(0) for _ in range(3)]
    assert items == ["started", bytes([2]), bytes([3]), bytes([4]), "ended"]
    assert box.lagging_since_us is None  # drained: no longer lagging
    assert stats.chunks_queued == 5 and stats.chunks_sent == 3


def test_stale_audio_is_dropped_not_sent():
    box = Outbox(max_audio_us=1_000_000)
    stats = DeliveryStats("a", "opus/48000")
    box.put_audio(b"old", play_at_us=100, duration_us=20_000, now_us=0, stats=stats)
    box.put_audio(b"new", play_at_us=50_000, duration_us=20_000, now_us=0, stats=stats)
    assert box.pop(now_us=30_000) == b"new"
    assert stats.dropped_stale == 1 and box.pop(0) is None


def test_discard_removes_only_that_announcements_audio():
    box = Outbox(max_audio_us=1_000_000)
    s1, s2 = DeliveryStats("a", "x"), DeliveryStats("a", "x")
    box.put_audio(b"1", play_at_us=10**9, duration_us=20_000, now_us=0, stats=s1)
    box.put_audio(b"2", play_at_us=10**9, duration_us=20_000, now_us=0, stats=s2)
    box.put_control("c")
    assert box.discard_audio(s1) == 1
    assert [box.pop(0), box.pop(0), box.pop(0)] == [b"2", "c", None]


def test_too_many_control_messages_mark_overflow():
    box = Outbox(max_audio_us=1000, max_control=3)
    for i in range(4):
        box.put_control(str(i))
    assert box.overflowed


def test_heartbeats_jump_the_queue():
    box = Outbox(max_audio_us=1_000_000)
    box.put_control("started")
    box.put_audio(b"a", play_at_us=10**9, duration_us=20_000, now_us=0)
    box.put_urgent("pong")
    assert [box.pop(0), box.pop(0), box.pop(0)] == ["pong", "started", b"a"]


def test_stale_drops_also_end_lagging():
    box = Outbox(max_audio_us=40_000)
    for i in range(4):
        box.put_audio(bytes([i]), play_at_us=100 + i, duration_us=20_000, now_us=5)
    assert box.lagging_since_us == 5
    assert box.pop(now_us=10**6) is None  # all too old to play: dropped, queue empty
    box.put_control("ended")
    assert box.pop(0) == "ended"
    assert box.lagging_since_us is None


def test_direct_write_when_nothing_is_queued_else_queue():
    written = []
    box = Outbox(max_audio_us=1_000_000)
    box.direct = lambda frame: written.append(frame) or True
    stats = DeliveryStats("a", "x")
    box.put_audio(
        b"one", play_at_us=10**9, duration_us=20_000, now_us=0, stats=stats, ws_frame=b"W1"
    )
    assert written == [b"W1"] and len(box) == 0
    assert stats.chunks_queued == stats.chunks_sent == 1 and box.counters.audio_sent == 1
    box.put_control("started")  # something queued: audio must wait behind it, in order
    box.put_audio(
        b"two", play_at_us=10**9, duration_us=20_000, now_us=0, stats=stats, ws_frame=b"W2"
    )
    assert written == [b"W1"] and [box.pop(0), box.pop(0)] == ["started", b"two"]
    box.direct = lambda frame: False  # the connection cannot take it now: queued
    box.put_audio(b"three", play_at_us=10**9, duration_us=20_000, now_us=0, ws_frame=b"W3")
    assert box.pop(0) == b"three"
