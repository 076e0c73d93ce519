import json

import pytest

from broadcaster.streaming import wire


def test_audio_frame_round_trip():
    frame = wire.pack_audio_frame(
        stream=7,
        seq=42,
        play_at_us=1_234_567_890,
        duration_us=20_000,
        payload=b"abc",
        flags=wire.FLAG_FIRST,
    )
    assert len(frame) == wire.AUDIO_HEADER_SIZE + 3 == 31
    header, payload = wire.unpack_audio_frame(frame)
    assert payload == b"abc"
    assert (header.stream, header.seq, header.play_at_us, header.duration_us) == (
        7,
        42,
        1_234_567_890,
        20_000,
    )
    assert header.flags == wire.FLAG_FIRST and header.payload_length == 3


def test_audio_header_layout_is_big_endian_and_fixed():
    frame = wire.pack_audio_frame(stream=1, seq=2, play_at_us=3, duration_us=4, payload=b"")
    assert frame.hex() == ("01010000000000010000000200000000000000030000000400000000")


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"\x01\x01", "shorter"),
        (bytes([2, 1]) + bytes(26), "version"),
        (bytes([1, 9]) + bytes(26), "kind"),
        (
            wire.pack_audio_frame(stream=1, seq=0, play_at_us=0, duration_us=0, payload=b"xy")[:-1],
            "header says",
        ),
    ],
)
def test_bad_audio_frames_are_refused(frame, problem):
    with pytest.raises(wire.FrameError, match=problem):
        wire.unpack_audio_frame(frame)


def test_parse_hello():
    msg = wire.parse_endpoint_message(
        json.dumps(
            {
                "type": "hello",
                "protocol": 1,
                "endpoint_id": "e",
                "token": "t",
                "zones": ["z"],
                "formats": [{"codec": "opus", "sample_rate_hz": 48000}],
            }
        )
    )
    assert isinstance(msg, wire.Hello)
    assert msg.formats[0].codec == "opus"


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_message", None),
        ('{"no": "type"}', "invalid_message", "type"),
        ('{"type": "dance"}', "unknown_type", "type"),
        ('{"type": "ping", "id": "x", "sent_us": 1}', "invalid_field", "id"),
        ('{"type": "ping", "id": 1, "sent_us": 1, "extra": 1}', "invalid_field", "extra"),
        (
            '{"type": "hello", "protocol": 1, "endpoint_id": "e", "token": "t", "zones": [],'
            ' "formats": [{"codec": "opus", "sample_rate_hz": 48000}]}',
            "invalid_field",
            "zones",
        ),
    ],
)
def test_bad_messages_name_the_problem(text, code, field):
    with pytest.raises(wire.MessageError) as err:
        wire.parse_endpoint_message(text)
    assert err.value.code == code
    assert err.value.field == field


def test_server_messages_round_trip():
    msg = wire.AnnouncementCancelled(announcement_id="a", stream=3, reason="operator")
    assert wire.parse_server_message(wire.dump(msg)) == msg


def test_clients_ignore_unknown_fields_from_newer_servers():
    msg = wire.parse_server_message('{"type": "ping", "id": 1, "sent_us": 2, "new": true}')
    assert isinstance(msg, wire.Ping) and msg.id == 1
    welcome = wire.Welcome(
        session_id="s",
        endpoint_id="e",
        zones=["z"],
        format=wire.ServerFormatSpec(codec="opus", sample_rate_hz=48000, frame_ms=20),
        server_time_us=1,
        settings=wire.Settings(
            heartbeat_interval_ms=1, heartbeat_timeout_ms=2, playout_delay_ms=3, max_message_bytes=4
        ),
    ).model_dump()
    welcome["format"]["bitrate"] = 32000
    welcome["extra"] = "x"
    import json as _json

    assert wire.parse_server_message(_json.dumps(welcome)).format.codec == "opus"


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2])
def test_only_integer_one_is_protocol_one(version):
    hello = {
        "type": "hello",
        "endpoint_id": "e",
        "token": "t",
        "zones": ["z"],
        "formats": [{"codec": "opus", "sample_rate_hz": 48000}],
    }
    if version is not None:
        hello["protocol"] = version
    with pytest.raises(wire.MessageError) as err:
        wire.parse_endpoint_message(json.dumps(hello))
    assert err.value.code == "unsupported_protocol"


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_prebuilt_websocket_frame_matches_the_library(size):
    from websockets.frames import Frame, Opcode

    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])
    assert wire.websocket_binary_frame(payload) == expected
