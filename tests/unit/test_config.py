from pathlib import Path

import pytest

from broadcaster.config import ConfigError, hash_token, load_config, new_token, parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.toml", "example.toml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.zones and cfg.endpoints


def test_example_lists_every_option_with_its_default():
    """example.toml must document every key, and show its default value."""
    import tomllib

    from pydantic import BaseModel

    from broadcaster.config import Config

    data = tomllib.loads((ROOT / "configs" / "example.toml").read_text())
    # Keys left commented out on purpose: secrets and optional pass-through URLs.
    commented = {
        "speech.runware.api_key",
        "speech.runware.webhook_url",
        "speech.runware.upload_endpoint",
        "speech.runware.ttl_s",
        "server.tls",  # off by default: a commented [server.tls] table shows its keys
        "audio.chime_dir",
    }

    def check(model: BaseModel, table: dict, path: str) -> None:
        for key in type(model).model_fields:
            value = getattr(model, key)
            where = f"{path}.{key}"
            if where in commented:
                assert key not in table and value is None, where
                continue
            assert key in table, f"{where} is missing from example.toml"
            if isinstance(value, BaseModel):
                check(value, table[key], where)
            else:
                assert table[key] == value, where
        assert set(table) <= set(type(model).model_fields), path

    defaults = Config()
    for section in ("server", "speech", "streaming", "announcements", "logging", "limits"):
        check(getattr(defaults, section), data[section], section)


def test_demo_tokens_match():
    cfg = load_config(ROOT / "configs" / "demo.toml")
    assert cfg.endpoint("speaker-p1").token_matches("demo-speaker-1-token")
    assert not cfg.endpoint("speaker-p1").token_matches("demo-speaker-2-token")


def err(data):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "site.toml")
    return str(e.value)


def test_errors_name_file_key_and_problem():
    msg = err({"streaming": {"playout_delay_ms": 10}})
    assert msg.startswith("site.toml: streaming.playout_delay_ms:")
    assert "greater than or equal to 50" in msg


def test_unknown_key_is_refused():
    assert "site.toml: server.htp_port: unknown key" in err({"server": {"htp_port": 1}})


def test_list_items_are_named_by_id():
    msg = err(
        {"zones": [{"id": "a"}], "endpoints": [{"id": "e1", "token_hash": "x", "zones": ["a"]}]}
    )
    assert "endpoints[0] (id 'e1').token_hash" in msg and "broadcaster token" in msg


def test_endpoint_zone_must_exist():
    h = hash_token("t")
    msg = err(
        {"zones": [{"id": "a"}], "endpoints": [{"id": "e1", "token_hash": h, "zones": ["b"]}]}
    )
    assert "zones ['b'] are not defined" in msg


def test_bad_format_and_voice():
    assert "unknown codec 'mp3'" in err({"streaming": {"formats": ["mp3/44100"]}})
    assert "not offered at 44100" in err({"streaming": {"formats": ["opus/44100"]}})
    assert "unknown voice 'bob'" in err({"speech": {"default_voice": "bob"}})


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load_config(bad)


def test_tokens():
    t = new_token()
    assert len(t) >= 40 and hash_token(t).startswith("sha256:") and len(hash_token(t)) == 71


def test_example_shows_every_template_and_schedule_key():
    import tomllib

    from broadcaster.config import ScheduleConfig, TemplateConfig

    data = tomllib.loads((ROOT / "configs" / "example.toml").read_text())
    text = (ROOT / "configs" / "example.toml").read_text()
    for table, model in (("templates", TemplateConfig), ("schedules", ScheduleConfig)):
        shown = set(data[table][0])
        for key in model.model_fields:
            # the alternatives of a key may be shown commented out
            assert key in shown or f"# {key} =" in text, f"{table}.{key} is not in example.toml"


def test_an_empty_file_is_refused_naming_zones(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.toml: zones: the file is empty"):
        load_config(empty)
    only_server = tmp_path / "server.toml"
    only_server.write_text("[server]\nhttp_port = 9000\n")
    with pytest.raises(ConfigError, match=r"server\.toml: zones: no \[\[zones\]\] defined"):
        load_config(only_server)


def test_the_websocket_port_must_differ_from_the_http_port():
    with pytest.raises(
        ConfigError, match=r"site\.toml: server: ws_port: 9000 is also the http_port"
    ):
        parse_config({"server": {"http_port": 9000, "ws_port": 9000}}, "site.toml")
    # port 0 means "any free port": twice is fine
    assert parse_config({"server": {"http_port": 0, "ws_port": 0}}).server.ws_port == 0


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("audio", "chime_max_kb", 0),
        ("audio", "chime_max_s", 0),
        ("logging", "format", "xml"),
    ],
)
def test_input_limits_are_checked(section, key, value):
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        parse_config({section: {key: value}}, "site.toml")


def test_the_demo_runs_a_station_not_the_seed_fiction():
    cfg = load_config(ROOT / "configs" / "demo.toml")
    fiction = {"museum-audio-guide", "orbital-docking-briefing", "seaside-emergency-bulletin"}
    assert fiction <= {t.name for t in cfg.templates}  # kept as templates
    scheduled = {s.template for s in cfg.schedules}
    assert not scheduled & fiction
    assert {"platform-safety", "no-smoking", "departure"} <= scheduled
    departure = next(s for s in cfg.schedules if s.template == "departure")
    assert departure.variables  # a departure from a template with variables
    no_smoking = next(s for s in cfg.schedules if s.template == "no-smoking")
    assert (no_smoking.zones or cfg.template("no-smoking").zones) == ["concourse"]
    emergency = [t for t in cfg.templates if (t.priority or 0) >= 224]
    assert emergency and all(t.chime_before == "alert" and t.repeats >= 1 for t in emergency)
