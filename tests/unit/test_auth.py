"""Who may do what, failed-attempt limits and browser checks: pure rules, a fake clock."""

from __future__ import annotations

import hmac

import pytest

from broadcaster import auth
from broadcaster.auth import (
    FailureLimiter,
    Principal,
    Role,
    TokenTable,
    allowed_hosts,
    bearer_token,
    host_allowed,
    host_name,
    may_announce,
    may_call,
    may_cancel,
    may_manage_schedule,
    may_silence,
    origin_allowed,
    source_key,
)
from broadcaster.clock import FakeClock
from broadcaster.config import ApiTokenConfig, ConfigError, hash_token, parse_config

EMERGENCY = 224

VIEWER = Principal("v", "viewer")
OPERATOR = Principal("op", "operator")
DISPATCHER = Principal("disp", "dispatcher")
ADMIN = Principal("adm", "admin")
GATE_OPERATOR = Principal("gate-op", "operator", frozenset({"gate"}))
GATE_DISPATCHER = Principal("gate-disp", "dispatcher", frozenset({"gate"}))


# --- roles --------------------------------------------------------------------------------


def test_roles_are_ordered():
    assert Role.VIEWER < Role.OPERATOR < Role.DISPATCHER < Role.ADMIN
    assert [r.label for r in Role] == ["viewer", "operator", "dispatcher", "admin"]
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Role.parse("root")


@pytest.mark.parametrize(
    ("principal", "needs", "allowed"),
    [
        (VIEWER, Role.VIEWER, True),
        (VIEWER, Role.OPERATOR, False),
        (OPERATOR, Role.OPERATOR, True),
        (OPERATOR, Role.DISPATCHER, False),
        (DISPATCHER, Role.DISPATCHER, True),
        (DISPATCHER, Role.ADMIN, False),
        (ADMIN, Role.ADMIN, True),
        (ADMIN, Role.VIEWER, True),
    ],
)
def test_route_role_matrix(principal, needs, allowed):
    refusal = may_call(principal, needs, "POST /v1/x")
    assert (refusal is None) is allowed
    if refusal is not None:
        assert refusal.status == 403 and refusal.code == "forbidden"
        assert refusal.message == (
            f"role {principal.role} may not POST /v1/x (needs {needs.label} or above)"
        )


@pytest.mark.parametrize(
    ("principal", "priority", "allowed"),
    [
        (VIEWER, 100, False),
        (OPERATOR, 0, True),
        (OPERATOR, 223, True),
        (OPERATOR, 224, False),
        (OPERATOR, 255, False),
        (DISPATCHER, 224, True),
        (DISPATCHER, 255, True),
        (ADMIN, 240, True),
    ],
)
def test_announce_priority_band(principal, priority, allowed):
    refusal = may_announce(
        principal, priority=priority, zones=["hall"], emergency_priority=EMERGENCY
    )
    assert (refusal is None) is allowed


def test_operator_refused_the_emergency_band_names_role_priority_and_field():
    refusal = may_announce(OPERATOR, priority=240, zones=["hall"], emergency_priority=EMERGENCY)
    assert refusal is not None
    assert refusal.as_dict() == {
        "error": "forbidden",
        "message": "role operator may not announce at priority 240 "
        "(emergency band 224-255 needs dispatcher)",
        "fields": [
            {
                "field": "priority",
                "message": "role operator may not announce at priority 240 "
                "(emergency band 224-255 needs dispatcher)",
            }
        ],
    }


def test_the_band_follows_the_configured_emergency_priority():
    assert may_announce(OPERATOR, priority=200, zones=[], emergency_priority=200) is not None
    assert may_announce(OPERATOR, priority=199, zones=[], emergency_priority=200) is None


def test_zone_limited_tokens_act_only_in_their_zones():
    assert (
        may_announce(GATE_OPERATOR, priority=100, zones=["gate"], emergency_priority=EMERGENCY)
        is None
    )
    refusal = may_announce(
        GATE_OPERATOR, priority=100, zones=["gate", "hall"], emergency_priority=EMERGENCY
    )
    assert refusal is not None and refusal.fields[0][0] == "zones"
    assert "token gate-op may not announce in zone(s) hall (limited to gate)" in refusal.message
    # a zone-limited dispatcher has the band but not the other zones
    assert (
        may_announce(GATE_DISPATCHER, priority=255, zones=["gate"], emergency_priority=EMERGENCY)
        is None
    )
    assert (
        may_announce(GATE_DISPATCHER, priority=255, zones=["hall"], emergency_priority=EMERGENCY)
        is not None
    )
    assert OPERATOR.outside(["a", "b"]) == []  # no limit: every zone


def test_schedules_use_the_same_band_and_zone_rules_with_their_own_verb():
    refusal = may_announce(
        OPERATOR, priority=250, zones=["hall"], emergency_priority=EMERGENCY, verb="schedule"
    )
    assert refusal is not None and "may not schedule at priority 250" in refusal.message
    assert may_manage_schedule(VIEWER, "s1", ["hall"]) is not None
    assert may_manage_schedule(OPERATOR, "s1", ["hall"]) is None
    refusal = may_manage_schedule(GATE_OPERATOR, "s1", ["hall"])
    assert refusal is not None and "change schedule s1" in refusal.message


def test_cancel_own_for_operators_any_for_dispatchers():
    own = {"announcement_id": "a1", "created_by": "op", "zones": ["hall"]}
    other = {"announcement_id": "a1", "created_by": "someone", "zones": ["hall"]}
    scheduled = {"announcement_id": "a1", "created_by": None, "zones": ["hall"]}
    assert may_cancel(OPERATOR, **own) is None
    refusal = may_cancel(OPERATOR, **other)
    assert refusal is not None
    assert refusal.message == (
        "role operator may cancel only its own announcements; a1 was created by someone "
        "(cancelling others' needs dispatcher)"
    )
    assert may_cancel(OPERATOR, **scheduled) is not None
    assert may_cancel(VIEWER, **own) is not None
    assert may_cancel(DISPATCHER, **other) is None
    assert may_cancel(DISPATCHER, **scheduled) is None
    assert may_cancel(ADMIN, **other) is None
    assert may_cancel(GATE_DISPATCHER, **other) is not None  # not its zone


def test_silence_needs_dispatcher_in_its_zones():
    assert may_silence(OPERATOR, "hall") is not None
    assert may_silence(DISPATCHER, "hall") is None
    assert may_silence(ADMIN, "hall") is None
    assert may_silence(GATE_DISPATCHER, "gate") is None
    assert may_silence(GATE_DISPATCHER, "hall") is not None


# --- tokens -------------------------------------------------------------------------------


def _tokens() -> TokenTable:
    return TokenTable(
        [
            ApiTokenConfig(id="desk", role="operator", token_hash=hash_token("right-token")),
            ApiTokenConfig(
                id="gate", role="dispatcher", token_hash=hash_token("gate-token"), zones=["gate"]
            ),
        ]
    )


def test_token_table_finds_the_principal_by_the_tokens_hash():
    table = _tokens()
    assert len(table) == 2
    assert table.authenticate("right-token") == Principal("desk", "operator", None)
    assert table.authenticate("gate-token") == Principal("gate", "dispatcher", frozenset({"gate"}))
    assert table.authenticate("right-tokeN") is None
    assert table.authenticate("") is None
    assert table.authenticate("\ud800") is None  # a lone surrogate is hashed, not a crash
    # the stored form is the config's "sha256:<hex>" of the token
    assert auth.token_digest("right-token").hex() == hash_token("right-token")[7:]


def test_token_match_is_confirmed_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    table = _tokens()
    assert table.authenticate("right-token") is not None
    assert calls == [(auth.token_digest("right-token"), auth.token_digest("right-token"))]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_header_parsing(header, token):
    assert bearer_token(header) == token


def test_config_checks_api_tokens():
    base = {"zones": [{"id": "hall"}]}
    good = {"id": "t1", "role": "operator", "token_hash": hash_token("x")}
    cfg = parse_config({**base, "api_tokens": [good]})
    assert cfg.api_tokens[0].zones is None
    with pytest.raises(ConfigError, match=r"api_tokens\[0\] \(id 't1'\)\.role"):
        parse_config({**base, "api_tokens": [{**good, "role": "root"}]})
    with pytest.raises(ConfigError, match=r"token_hash: must be 'sha256:'"):
        parse_config({**base, "api_tokens": [{**good, "token_hash": "x"}]})
    with pytest.raises(ConfigError, match="api_tokens ids listed twice: t1"):
        parse_config({**base, "api_tokens": [good, {**good, "token_hash": hash_token("y")}]})
    with pytest.raises(ConfigError, match="same token_hash"):
        parse_config({**base, "api_tokens": [good, {**good, "id": "t2"}]})
    with pytest.raises(ConfigError, match=r"api_tokens\[0\] \(t1\): zones \['moon'\]"):
        parse_config({**base, "api_tokens": [{**good, "zones": ["moon"]}]})
    with pytest.raises(ConfigError, match=r"auth\.allowed_origins: .*scheme://host"):
        parse_config({**base, "auth": {"allowed_origins": ["pa.example"]}})


# --- failed attempts ----------------------------------------------------------------------


def test_limiter_allows_a_burst_then_one_attempt_per_refill():
    clock = FakeClock()
    lim = FailureLimiter(burst=3, refill_us=6_000_000)
    now = clock.monotonic_us()
    assert lim.retry_after_us("10.0.0.1", now) == 0
    assert lim.failure("10.0.0.1", now) == 0
    assert lim.failure("10.0.0.1", now) == 0
    assert lim.failure("10.0.0.1", now) == 6_000_000  # bucket empty: wait one refill
    assert lim.retry_after_us("10.0.0.1", now + 1_500_000) == 4_500_000
    # another source is not affected
    assert lim.retry_after_us("10.0.0.2", now) == 0
    # after one refill period one more attempt, and only one
    later = now + 6_000_000
    assert lim.retry_after_us("10.0.0.1", later) == 0
    assert lim.failure("10.0.0.1", later) == 6_000_000
    # a long pause refills the whole burst (never more)
    much_later = later + 3600 * 1_000_000
    for _ in range(2):
        assert lim.failure("10.0.0.1", much_later) == 0
    assert lim.failure("10.0.0.1", much_later) > 0


async def test_limiter_runs_on_the_injected_clock():
    clock = FakeClock()
    lim = FailureLimiter(burst=1, refill_us=1_000_000)
    lim.failure("a", clock.monotonic_us())
    assert lim.retry_after_us("a", clock.monotonic_us()) == 1_000_000
    await clock.advance_us(999_999)
    assert lim.retry_after_us("a", clock.monotonic_us()) == 1
    await clock.advance_us(1)
    assert lim.retry_after_us("a", clock.monotonic_us()) == 0


def test_limiter_memory_is_bounded_refilled_first_then_least_recent():
    lim = FailureLimiter(burst=2, refill_us=1_000_000, max_sources=3)
    t = 0
    lim.failure("old-refilled", t)
    lim.failure("a", t + 1_500_000)
    lim.failure("a", t + 1_500_000)
    lim.failure("b", t + 1_600_000)
    lim.failure("b", t + 1_600_000)
    # "old-refilled" has refilled by now: it goes first, the limited ones stay
    lim.failure("c", t + 1_700_000)
    assert lim.tracked == 3
    assert lim.retry_after_us("a", t + 1_700_000) > 0
    assert lim.retry_after_us("b", t + 1_700_000) > 0
    # nothing refilled: the least recently failing one ("a") is forgotten
    lim.failure("d", t + 1_800_000)
    assert lim.tracked == 3
    assert lim.retry_after_us("a", t + 1_800_000) == 0
    assert lim.retry_after_us("b", t + 1_800_000) > 0
    with pytest.raises(ValueError):
        FailureLimiter(burst=0, refill_us=1)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_source_key(address, key):
    assert source_key(address) == key


# --- browser safety -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("pa.example.:443", "pa.example"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("::1", None),
        ("[::1]x", None),
        ("", None),
        (None, None),
    ],
)
def test_host_name(header, name):
    assert host_name(header) == name


def test_allowed_hosts_add_specific_listen_addresses_not_wildcards():
    hosts = allowed_hosts(["localhost", "PA.example"], "10.1.2.3", "0.0.0.0", "::")
    assert hosts == frozenset({"localhost", "pa.example", "10.1.2.3"})
    assert host_allowed("pa.example:8080", hosts)
    assert host_allowed("10.1.2.3:8080", hosts)
    assert not host_allowed("attacker.example", hosts)
    assert not host_allowed(None, hosts)


def test_origin_allow_list():
    allowed = {"https://console.example"}
    assert origin_allowed(None, allowed)  # not a browser
    assert origin_allowed("https://console.example", allowed)
    assert origin_allowed("HTTPS://Console.example/", allowed)
    assert not origin_allowed("https://evil.example", allowed)
    assert not origin_allowed("null", allowed)
    assert not origin_allowed("https://console.example", set())


def test_defaults_are_the_documented_ones():
    """README: 10 failures in a row, then one per 6 s; hosts localhost, 127.0.0.1, ::1
    plus the listen address; no browser origin allowed."""
    from broadcaster.api.access import Access, limiter_from_config

    cfg = parse_config({"server": {"http_host": "10.0.0.5"}})
    lim = limiter_from_config(cfg)
    assert (lim.burst, lim.refill_us, lim.max_sources) == (10, 6_000_000, 10_000)
    access = Access.from_config(cfg, clock=FakeClock(), store=None)
    assert access.hosts == frozenset({"localhost", "127.0.0.1", "::1", "10.0.0.5"})
    assert list(access.origins) == []
    assert cfg.auth.audit_queue_limit == 1000
    wildcard = parse_config({"server": {"http_host": "0.0.0.0"}})
    hosts = Access.from_config(wildcard, clock=FakeClock(), store=None).hosts
    assert hosts == frozenset({"localhost", "127.0.0.1", "::1"})
