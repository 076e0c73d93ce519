"""Gain per zone and per endpoint: attenuation only, what each endpoint is told (pure).

A gain is in dB, from -60 to 0: never a boost, so the decoded audio stays under the
true-peak ceiling the server normalises to ([audio] true_peak_dbtp). The config
gives one per zone and per endpoint (``gain_db``, default 0); an admin may set one
through the API (``PUT /v1/zones/{id}/gain``, ``PUT /v1/endpoints/{id}/gain``), kept
in the store and overriding the config's until it is cleared (``{"gain_db": null}``).

An endpoint plays an announcement at ``endpoint gain + zone gain``, where the zone
gain is the *highest* (least attenuating) gain among the announcement's zones the
endpoint has joined: an endpoint in a quiet zone and a loud one that both take the
announcement plays it as loud as the loud zone wants. The server sends that sum as
``gain_db`` in ``announcement_started`` (decided when the announcement starts for
that endpoint; a change applies from the next announcement); the audio itself is
the same for every endpoint (encoded once per format) and the endpoint applies it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from broadcaster.config import GAIN_MAX_DB, GAIN_MIN_DB, Config

GainKind = Literal["zone", "endpoint"]


class Gains:
    """The gains in force: the config's, overridden by those set through the API."""

    def __init__(self, config: Config) -> None:
        self._config: dict[tuple[GainKind, str], float] = {}
        for z in config.zones:
            self._config[("zone", z.id)] = z.gain_db
        for e in config.endpoints:
            self._config[("endpoint", e.id)] = e.gain_db
        self._set: dict[tuple[GainKind, str], float] = {}

    def known(self, kind: GainKind, id: str) -> bool:
        return (kind, id) in self._config

    def set(self, kind: GainKind, id: str, gain_db: float | None) -> None:
        """Override the config's gain (None: back to the config's). Unknown ids are ignored."""
        if not self.known(kind, id):
            return
        if gain_db is None:
            self._set.pop((kind, id), None)
            return
        if not GAIN_MIN_DB <= gain_db <= GAIN_MAX_DB:
            raise ValueError(f"gain_db must be between {GAIN_MIN_DB:g} and {GAIN_MAX_DB:g} dB")
        self._set[(kind, id)] = float(gain_db)

    def get(self, kind: GainKind, id: str) -> float:
        found = self._set.get((kind, id))
        return found if found is not None else self._config.get((kind, id), 0.0)

    def configured(self, kind: GainKind, id: str) -> float:
        return self._config.get((kind, id), 0.0)

    def source(self, kind: GainKind, id: str) -> Literal["config", "api"]:
        return "api" if (kind, id) in self._set else "config"

    def as_dict(self, kind: GainKind, id: str) -> dict[str, object]:
        """What the API shows of one gain."""
        return {
            "gain_db": self.get(kind, id),
            "gain_db_config": self.configured(kind, id),
            "gain_source": self.source(kind, id),
        }

    def for_endpoint(self, endpoint_id: str, zones: Iterable[str]) -> float:
        """The gain an endpoint applies to an announcement it hears in ``zones``."""
        zone_gains = [self.get("zone", z) for z in zones]
        zone = max(zone_gains) if zone_gains else 0.0
        return round(self.get("endpoint", endpoint_id) + zone, 2)
