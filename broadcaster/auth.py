"""Who may do what: API tokens, roles, zone limits, failed-attempt limits (no I/O).

The HTTP middleware (``api/routes.py``) and the endpoint server
(``streaming/server.py``) are thin adapters over these rules:

* :class:`TokenTable` turns a bearer token into a :class:`Principal` (token id,
  role, zones) by the SHA-256 of the token, confirmed in constant time.
* Roles are ordered ``viewer < operator < dispatcher < admin``; the ``may_*``
  functions answer "may this principal do X" with ``None`` (yes) or a
  :class:`Refusal` that names what was refused and why.
* :class:`FailureLimiter` counts failed authentications per source address in
  a token bucket on the caller's clock, with a bounded table of addresses.
* :func:`host_allowed` / :func:`origin_allowed`: browser safety (DNS rebinding,
  cross-site pages).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


class Role(enum.IntEnum):
    """Ordered: each role may do everything the ones below it may."""

    VIEWER = 1
    OPERATOR = 2
    DISPATCHER = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {name!r}; one of {', '.join(r.label for r in cls)}"
            ) from None


ROLE_NAMES: tuple[str, ...] = tuple(r.label for r in Role)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a token's id, its role and the zones it is limited to."""

    id: str
    role: str
    #: None: every zone.
    zones: frozenset[str] | None = None

    @property
    def level(self) -> Role:
        return Role.parse(self.role)

    def at_least(self, role: Role) -> bool:
        return self.level >= role

    def outside(self, zones: Iterable[str]) -> list[str]:
        """The zones among ``zones`` this principal may not act in, in order."""
        if self.zones is None:
            return []
        return [z for z in dict.fromkeys(zones) if z not in self.zones]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused: the HTTP status, an error code and a message naming it."""

    status: int
    code: str
    message: str
    fields: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"error": self.code, "message": self.message}
        if self.fields:
            out["fields"] = [{"field": f, "message": m} for f, m in self.fields]
        return out


# --- tokens -------------------------------------------------------------------------------


def token_digest(token: str) -> bytes:
    """SHA-256 of the token (tokens are random 256-bit values: a fast hash is right)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenSpec(Protocol):
    """What a configured API token provides (``config.ApiTokenConfig``)."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def token_hash(self) -> str: ...
    @property
    def zones(self) -> list[str] | None: ...


class TokenTable:
    """Bearer token → principal. Looked up by the token's hash, confirmed in constant time."""

    def __init__(self, tokens: Iterable[TokenSpec]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        for t in tokens:
            digest = bytes.fromhex(t.token_hash.removeprefix("sha256:"))
            zones = frozenset(t.zones) if t.zones is not None else None
            principal = Principal(id=t.id, role=Role.parse(t.role).label, zones=zones)
            self._by_digest[digest] = (digest, principal)

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None.

        The table is keyed by the token's SHA-256, so the lookup's timing depends
        only on a hash the caller cannot steer toward a stored one (finding a token
        for a digest is a preimage); the match is then confirmed with a
        constant-time comparison. No token is ever compared byte by byte.
        """
        digest = token_digest(token)
        found = self._by_digest.get(digest)
        if found is None:
            return None
        stored, principal = found
        return principal if hmac.compare_digest(stored, digest) else None


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or malformed)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


# --- decisions ----------------------------------------------------------------------------


def may_call(principal: Principal, needs: Role, what: str) -> Refusal | None:
    """The route-level check: ``what`` is e.g. "POST /v1/announcements"."""
    if principal.at_least(needs):
        return None
    return Refusal(
        403, "forbidden", f"role {principal.role} may not {what} (needs {needs.label} or above)"
    )


def _zone_refusal(principal: Principal, zones: Iterable[str], verb: str) -> Refusal | None:
    outside = principal.outside(zones)
    if not outside:
        return None
    allowed = ", ".join(sorted(principal.zones or ()))
    message = (
        f"token {principal.id} may not {verb} in zone(s) {', '.join(outside)} "
        f"(limited to {allowed or 'no zones'})"
    )
    return Refusal(403, "forbidden", message, (("zones", message),))


def may_announce(
    principal: Principal,
    *,
    priority: int,
    zones: Collection[str],
    emergency_priority: int,
    verb: str = "announce",
) -> Refusal | None:
    """An announcement (a schedule with ``verb="schedule"``) at its effective priority, zones."""
    if not principal.at_least(Role.OPERATOR):
        return Refusal(
            403, "forbidden", f"role {principal.role} may not {verb} (needs operator or above)"
        )
    if priority >= emergency_priority and not principal.at_least(Role.DISPATCHER):
        message = (
            f"role {principal.role} may not {verb} at priority {priority} "
            f"(emergency band {emergency_priority}-255 needs dispatcher)"
        )
        return Refusal(403, "forbidden", message, (("priority", message),))
    return _zone_refusal(principal, zones, verb)


def may_cancel(
    principal: Principal, *, announcement_id: str, created_by: str | None, zones: Collection[str]
) -> Refusal | None:
    """Operators cancel their own announcements; dispatchers and admins any (in their zones)."""
    if not principal.at_least(Role.OPERATOR):
        return Refusal(
            403, "forbidden", f"role {principal.role} may not cancel (needs operator or above)"
        )
    if not principal.at_least(Role.DISPATCHER) and created_by != principal.id:
        by = f"created by {created_by}" if created_by else "not created through the API"
        return Refusal(
            403,
            "forbidden",
            f"role operator may cancel only its own announcements; {announcement_id} was {by} "
            "(cancelling others' needs dispatcher)",
        )
    return _zone_refusal(principal, zones, "cancel")


def may_silence(principal: Principal, zones: str | Collection[str]) -> Refusal | None:
    """Silence a zone (or each zone of a group): dispatcher and above, in its zones."""
    if not principal.at_least(Role.DISPATCHER):
        return Refusal(
            403,
            "forbidden",
            f"role {principal.role} may not silence a zone (needs dispatcher or above)",
        )
    return _zone_refusal(principal, [zones] if isinstance(zones, str) else zones, "silence")


def may_set_gain(principal: Principal, what: str, zones: Collection[str]) -> Refusal | None:
    """Set a zone's or an endpoint's gain: admin, within the token's zones."""
    if not principal.at_least(Role.ADMIN):
        return Refusal(403, "forbidden", f"role {principal.role} may not set gains (needs admin)")
    return _zone_refusal(principal, zones, f"set the gain of {what}, which plays")


def may_change_template(
    principal: Principal,
    *,
    name: str,
    priority: int,
    zones: Collection[str],
    emergency_priority: int,
    verb: str,
) -> Refusal | None:
    """Create, edit or delete a template made through the API, at its effective priority.

    Operators may for templates below the emergency band, dispatchers for any; admins
    (above them) therefore for any. A token limited to zones only for templates whose
    zones (groups expanded) are all among its own.
    """
    if not principal.at_least(Role.OPERATOR):
        return Refusal(
            403,
            "forbidden",
            f"role {principal.role} may not {verb} templates (needs operator or above)",
        )
    if priority >= emergency_priority and not principal.at_least(Role.DISPATCHER):
        message = (
            f"role {principal.role} may not {verb} template {name}, whose priority {priority} "
            f"is in the emergency band ({emergency_priority}-255 needs dispatcher)"
        )
        return Refusal(403, "forbidden", message, (("priority", message),))
    return _zone_refusal(principal, zones, f"{verb} template {name}, which plays")


def may_manage_schedule(
    principal: Principal, schedule_id: str, zones: Collection[str]
) -> Refusal | None:
    """Pause, resume or delete a schedule: operator and above, within the token's zones."""
    if not principal.at_least(Role.OPERATOR):
        return Refusal(
            403,
            "forbidden",
            f"role {principal.role} may not change schedules (needs operator or above)",
        )
    return _zone_refusal(principal, zones, f"change schedule {schedule_id}, which plays")


# --- failed attempts ----------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def source_key(address: str | None) -> str:
    """What failed attempts are counted by: the IPv4 address, or the IPv6 /64 network.

    (One IPv6 host usually holds a whole /64; counting single addresses would let
    it take a fresh one for every guess.) Cached (bounded): parsing costs ~3 µs.
    """
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_us: int


@dataclass(slots=True)
class FailureLimiter:
    """Failed authentications per source, as a token bucket on the caller's clock.

    Each source may fail ``burst`` times in a row; after that one more attempt is
    allowed every ``refill_us``. While its bucket is empty the source is refused
    *before* its token is looked at (so the right token from that source waits
    too; other sources are unaffected). Successes cost nothing.

    Memory is bounded: at most ``max_sources`` are tracked. A source whose bucket
    has refilled is equivalent to an untracked one and is dropped first; beyond
    that the source that failed least recently is forgotten (it starts again
    with a full bucket). An attacker with more than ``max_sources`` addresses
    can thus keep guessing at ``max_sources * burst`` per refill period at most.
    """

    burst: int
    refill_us: int
    max_sources: int = 10_000
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.burst < 1 or self.refill_us <= 0 or self.max_sources < 1:
            raise ValueError("burst, refill_us and max_sources must be positive")

    @property
    def tracked(self) -> int:
        """How many sources are in the table now."""
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now_us: int) -> float:
        elapsed = max(0, now_us - bucket.updated_us)
        return min(float(self.burst), bucket.tokens + elapsed / self.refill_us)

    def retry_after_us(self, source: str, now_us: int) -> int:
        """0 when ``source`` may try now; else how long until it may."""
        bucket = self._buckets.get(source)
        if bucket is None:
            return 0
        level = self._level(bucket, now_us)
        if level >= 1.0:
            return 0
        return max(1, int((1.0 - level) * self.refill_us))

    def failure(self, source: str, now_us: int) -> int:
        """Record a failed attempt; returns :meth:`retry_after_us` after it."""
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now_us)
        bucket.tokens = max(0.0, self._level(bucket, now_us) - 1.0)
        bucket.updated_us = now_us
        self._buckets[source] = bucket  # most recently failed last
        self._evict(now_us)
        return self.retry_after_us(source, now_us)

    def _evict(self, now_us: int) -> None:
        if len(self._buckets) <= self.max_sources:
            return
        for key in [k for k, b in self._buckets.items() if self._level(b, now_us) >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)


# --- browser safety -----------------------------------------------------------------------

_WILDCARDS = {"", "0.0.0.0", "::", "*"}


def host_name(host_header: str | None) -> str | None:
    """The name in a Host header without its port, lower-case (None when malformed)."""
    if host_header is None:
        return None
    host = host_header.strip().lower()
    if not host:
        return None
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return host[1:end]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name.rstrip(".")
    if ":" in host:  # a bare IPv6 address is not a valid Host
        return None
    return host.rstrip(".")


def allowed_hosts(public_hosts: Iterable[str], *listen_hosts: str) -> frozenset[str]:
    """The names a request may be addressed to: the configured ones and the listen addresses."""
    names = {h.strip().lower().strip("[]").rstrip(".") for h in public_hosts}
    names.update(h.lower().strip("[]") for h in listen_hosts if h not in _WILDCARDS)
    return frozenset(n for n in names if n)


def host_allowed(host_header: str | None, allowed: Collection[str]) -> bool:
    name = host_name(host_header)
    return name is not None and name in allowed


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class OriginPolicy:
    """Browser origins whose pages may call the API and open the endpoint WebSocket.

    The configured ``[auth] allowed_origins`` plus the service's own pages (the
    console and the kiosk), whose origin is only known once the HTTP port is
    bound (:meth:`add_own_pages`). Shared by the API and the WebSocket server.
    """

    def __init__(self, configured: Iterable[str] = ()) -> None:
        self._origins: set[str] = {normalize_origin(o) for o in configured}

    def add_own_pages(self, scheme: str, hosts: Iterable[str], port: int) -> None:
        """Allow pages served by this service at ``scheme://host:port`` for every host name."""
        default = {"http": 80, "https": 443}.get(scheme)
        for host in hosts:
            name = f"[{host}]" if ":" in host else host
            self._origins.add(normalize_origin(f"{scheme}://{name}:{port}"))
            if port == default:
                self._origins.add(normalize_origin(f"{scheme}://{name}"))

    def __contains__(self, origin: object) -> bool:
        return origin in self._origins

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._origins))

    def __len__(self) -> int:
        return len(self._origins)


def origin_allowed(origin: str | None, allowed: Collection[str]) -> bool:
    """No Origin header: not a browser page, fine. Otherwise it must be listed."""
    if origin is None:
        return True
    return normalize_origin(origin) in allowed
