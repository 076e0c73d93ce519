from broadcaster.streaming.supervision import Supervisor

S = 1_000_000


def sup():
    return Supervisor(timeout_us=10 * S, endpoints=["a", "b"])


def test_statuses_start_as_never_connected():
    s = sup()
    assert s.status("a")["status"] == "never_connected"


def test_silent_endpoint_is_a_fault_at_once():
    s = sup()
    s.joined("a", 0)
    [ev] = s.left("a", 12 * S, clean=False, silent=True, detail="nothing received for 10000 ms")
    assert ev.kind == "endpoint_fault" and s.status("a")["status"] == "faulty"


def test_a_dropped_link_is_a_fault_only_if_it_does_not_come_back_in_time():
    s = sup()
    s.joined("a", 0)
    s.joined("b", 0)
    assert s.left("a", 5 * S, clean=False, silent=False, detail="connection lost") == []
    assert s.left("b", 5 * S, clean=False, silent=False, detail="connection lost") == []
    assert s.next_deadline_us() == 15 * S
    [back] = s.joined("b", 6 * S)  # reconnected within the timeout: no fault
    assert back.kind == "endpoint_joined"
    assert s.tick(14 * S) == []
    [fault] = s.tick(15 * S)
    assert fault.endpoint_id == "a" and "not back" in fault.detail
    assert s.tick(30 * S) == []  # reported once
    [recovered] = s.joined("a", 40 * S)
    assert recovered.kind == "endpoint_recovered"
    assert s.status("a")["status"] == "ok"


def test_bye_is_offline_not_a_fault():
    s = sup()
    s.joined("a", 0)
    [ev] = s.left("a", 1, clean=True, silent=False, detail="endpoint said bye")
    assert ev.kind == "endpoint_offline"
    assert s.tick(100 * S) == []


def test_event_log_is_bounded():
    s = Supervisor(timeout_us=S, endpoints=["a"], max_events=3)
    for i in range(10):
        s.joined("a", i)
    assert len(s.events()) == 3
