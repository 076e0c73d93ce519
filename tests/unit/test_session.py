"""The endpoint protocol session as tables of messages in and out: no sockets, no sleeps."""

import json

import pytest

from broadcaster.config import hash_token
from broadcaster.model import StreamFormat
from broadcaster.streaming.session import (
    EndpointGrant,
    EndpointSession,
    Joined,
    ReceiptReceived,
    RoundTrip,
    SessionSettings,
    SessionState,
    StatusReceived,
)
from broadcaster.streaming.wire import CloseCode

T0 = 5_000_000
SETTINGS = SessionSettings(
    heartbeat_interval_us=3_000_000,
    heartbeat_timeout_us=10_000_000,
    hello_timeout_us=5_000_000,
    playout_delay_us=300_000,
    max_message_bytes=4096,
)
FORMATS = {
    f.key: f for f in (StreamFormat.parse("opus/48000"), StreamFormat.parse("pcm_s16le/16000"))
}


def grants():
    h = hash_token("secret")
    return {
        "ep1": EndpointGrant(zones=frozenset({"a", "b"}), token_ok=lambda t: hash_token(t) == h)
    }


def new_session():
    return EndpointSession(
        session_id="s1", grants=grants(), formats=FORMATS, settings=SETTINGS, now_us=T0
    )


def hello(**over):
    msg = {
        "type": "hello",
        "protocol": 1,
        "endpoint_id": "ep1",
        "token": "secret",
        "zones": ["a"],
        "formats": [
            {"codec": "pcm_s16le", "sample_rate_hz": 8000},
            {"codec": "opus", "sample_rate_hz": 48000},
        ],
    }
    msg.update(over)
    return json.dumps(msg)


def out(session):
    return [json.loads(t) for t in session.take_urgent() + session.take_outgoing()]


def test_hello_is_welcomed_with_the_first_available_format():
    s = new_session()
    s.receive_text(hello(), T0 + 10)
    [welcome] = out(s)
    assert welcome["type"] == "welcome"
    assert welcome["format"] == {
        "codec": "opus",
        "sample_rate_hz": 48000,
        "channels": 1,
        "frame_ms": 20,
    }
    assert welcome["server_time_us"] == T0 + 10
    assert welcome["settings"]["heartbeat_timeout_ms"] == 10_000
    assert s.state is SessionState.ACTIVE
    assert s.take_events() == [Joined("ep1", ("a",), FORMATS["opus/48000"])]


@pytest.mark.parametrize(
    ("text", "error", "close"),
    [
        (hello(token="wrong"), "unauthorized", CloseCode.UNAUTHORIZED),
        (hello(endpoint_id="nobody"), "unauthorized", CloseCode.UNAUTHORIZED),
        (hello(zones=["a", "c"]), "forbidden_zone", CloseCode.FORBIDDEN_ZONE),
        (hello(protocol=2), "unsupported_protocol", CloseCode.BAD_VERSION),
        (hello(protocol=2, new_v2_field=1), "unsupported_protocol", CloseCode.BAD_VERSION),
        (hello(zones="a"), "invalid_field", CloseCode.BAD_MESSAGE),
        (hello(protocol="1"), "unsupported_protocol", CloseCode.BAD_VERSION),
        (
            hello(formats=[{"codec": "pcm_mulaw", "sample_rate_hz": 8000}]),
            "no_common_format",
            CloseCode.NO_FORMAT,
        ),
        ('{"type": "ping", "id": 1, "sent_us": 0}', "expected_hello", CloseCode.BAD_MESSAGE),
        ("not json", "invalid_json", CloseCode.BAD_MESSAGE),
        ('{"type": "shout"}', "unknown_type", CloseCode.BAD_MESSAGE),
        ("x" * 5000, "message_too_big", CloseCode.TOO_BIG),
    ],
)
def test_refusals_send_an_error_then_close(text, error, close):
    s = new_session()
    s.receive_text(text, T0)
    [msg] = out(s)
    assert msg["type"] == "error" and msg["code"] == error and msg["message"]
    assert s.close is not None and s.close.code == close
    assert s.state is SessionState.CLOSED
    assert s.take_events() == []


def test_forbidden_zone_names_the_zone():
    s = new_session()
    s.receive_text(hello(zones=["a", "lounge"]), T0)
    [msg] = out(s)
    assert "lounge" in msg["message"] and msg["field"] == "zones"


def test_binary_from_endpoint_is_refused():
    s = new_session()
    s.receive_text(hello(), T0)
    out(s)
    s.receive_bytes(b"\x00", T0 + 1)
    [msg] = out(s)
    assert msg["code"] == "binary_not_allowed"
    assert s.close.code == CloseCode.UNSUPPORTED_DATA


def test_second_hello_is_refused():
    s = new_session()
    s.receive_text(hello(), T0)
    out(s)
    s.receive_text(hello(), T0 + 1)
    assert out(s)[0]["code"] == "duplicate_hello"


def test_strings_are_not_numbers():
    s = new_session()
    s.receive_text(hello(), T0)
    out(s)
    s.receive_text('{"type": "ping", "id": "9", "sent_us": 123}', T0 + 1)
    [err] = out(s)
    assert err["code"] == "invalid_field" and err["field"] == "id"


def test_ping_is_answered_with_server_time():
    s = new_session()
    s.receive_text(hello(), T0)
    out(s)
    s.receive_text('{"type": "ping", "id": 9, "sent_us": 123}', T0 + 500)
    assert out(s) == [{"type": "pong", "id": 9, "echo_us": 123, "time_us": T0 + 500}]


def test_heartbeat_pings_and_round_trip():
    s = new_session()
    s.receive_text(hello(), T0)
    out(s)
    s.take_events()
    assert s.next_timer_us() == T0 + 3_000_000
    s.tick(T0 + 2_999_999)
    assert out(s) == []
    s.tick(T0 + 3_000_000)
    [ping] = out(s)
    assert ping["type"] == "ping" and ping["sent_us"] == T0 + 3_000_000
    s.receive_text(
        json.dumps({"type": "pong", "id": ping["id"], "echo_us": ping["sent_us"], "time_us": 1}),
        T0 + 3_004_000,
    )
    assert s.take_events() == [RoundTrip(4_000)]


def test_silent_endpoint_times_out():
    s = new_session()
    s.receive_text(hello(), T0)
    out(s)
    s.tick(T0 + 9_999_999)
    assert s.close is None
    s.tick(T0 + 10_000_000)
    assert s.close.code == CloseCode.HEARTBEAT_TIMEOUT
    assert out(s)[-1]["code"] == "heartbeat_timeout"


def test_any_message_counts_as_alive():
    s = new_session()
    s.receive_text(hello(), T0)
    s.receive_text('{"type": "ping", "id": 1, "sent_us": 0}', T0 + 9_000_000)
    s.tick(T0 + 15_000_000)
    assert s.close is None


def test_hello_timeout():
    s = new_session()
    assert s.next_timer_us() == T0 + 5_000_000
    s.tick(T0 + 4_999_999)
    assert s.close is None
    s.tick(T0 + 5_000_000)
    assert s.close.code == CloseCode.HELLO_TIMEOUT


def test_receipt_becomes_an_event():
    s = new_session()
    s.receive_text(hello(), T0)
    s.take_events()
    s.receive_text(
        json.dumps(
            {
                "type": "receipt",
                "announcement_id": "x",
                "stream": 1,
                "status": "complete",
                "chunks": 5,
                "duration_ms": 100,
            }
        ),
        T0 + 1,
    )
    [ev] = s.take_events()
    assert isinstance(ev, ReceiptReceived) and ev.receipt.chunks == 5


def test_status_reports_the_audio_output_and_nothing_else():
    s = new_session()
    s.receive_text(hello(), T0)
    s.take_events()
    out(s)  # the welcome
    s.receive_text('{"type": "status", "audio_output": "blocked"}', T0 + 1)
    [ev] = s.take_events()
    assert isinstance(ev, StatusReceived) and ev.status.audio_output == "blocked"
    assert out(s) == [] and s.close is None  # not answered
    s.receive_text('{"type": "status", "audio_output": "muted"}', T0 + 2)
    [error] = out(s)
    assert error["code"] == "invalid_field" and error["field"] == "audio_output"
    assert s.close.code == CloseCode.BAD_MESSAGE


def test_status_before_hello_is_refused():
    s = new_session()
    s.receive_text('{"type": "status", "audio_output": "ready"}', T0)
    [error] = out(s)
    assert error["code"] == "expected_hello"


def test_bye_closes_normally():
    s = new_session()
    s.receive_text(hello(), T0)
    s.receive_text('{"type": "bye"}', T0 + 1)
    assert s.close.code == CloseCode.NORMAL


def test_nothing_happens_after_close():
    s = new_session()
    s.receive_text("garbage", T0)
    out(s)
    s.receive_text(hello(), T0 + 1)
    s.tick(T0 + 100_000_000)
    assert out(s) == [] and s.take_events() == []


def test_wrong_tokens_are_counted_per_source_and_then_refused_before_the_token_is_read():
    from broadcaster.auth import FailureLimiter

    limiter = FailureLimiter(burst=2, refill_us=10_000_000)

    def session(source, now_us=T0):
        return EndpointSession(
            session_id="s",
            grants=grants(),
            formats=FORMATS,
            settings=SETTINGS,
            now_us=now_us,
            limiter=limiter,
            source=source,
        )

    for _ in range(2):
        s = session("198.51.100.9")
        s.receive_text(hello(token="guess"), T0)
        assert s.close is not None and s.close.code == CloseCode.UNAUTHORIZED
    # the bucket is empty: even the right token from that address is refused, with a reason
    s = session("198.51.100.9")
    s.receive_text(hello(), T0)
    assert s.close is not None and s.close.code == CloseCode.RATE_LIMITED == 4029
    assert s.close.reason == "too many failed authentications from your address; retry in 10 s"
    err = json.loads(s.take_outgoing()[0])
    assert err["type"] == "error" and err["code"] == "too_many_failed_attempts"
    # another address is unaffected
    s = session("198.51.100.10")
    s.receive_text(hello(), T0)
    assert s.state is SessionState.ACTIVE
    # one refill period later the limited address may try again
    s = session("198.51.100.9", T0 + 10_000_000)
    s.receive_text(hello(), T0 + 10_000_000)
    assert s.state is SessionState.ACTIVE
