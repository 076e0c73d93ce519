"""The one registry of templates: the config's (read-only) and the API's (kept in the store).

The trigger path (``POST /v1/triggers/{name}``, ``POST /v1/announcements`` with a
template), the schedule runner and the template routes all look templates up here,
so a template made through the API is used exactly like one from the config.

* Config templates come from ``[[templates]]`` and cannot be changed through the
  API (they would come back at the next start); their name is taken.
* API templates are validated like config templates (the same pydantic model,
  strict, and the sandboxed Jinja parse of the text and its translations) plus the
  rules for untrusted input: chimes only built-in or ``file:NAME`` from
  ``[audio] chime_dir``, zones (or zone groups) that exist. They are written to
  the store before the answer and read back at start; a stored one that no longer
  validates (a zone removed from the config) is logged and left out, and one whose
  name the config now uses is shadowed by the config's.

Mutations are serialised by a lock, so two requests cannot create the same name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from broadcaster.clock import Clock, SystemClock
from broadcaster.config import Config, TemplateConfig, check_request_chime
from broadcaster.scheduling.templates import TemplateError, parse_variable_specs
from broadcaster.store import AsyncStore, TemplateRow

log = logging.getLogger(__name__)

TemplateSource = Literal["config", "api"]

#: Templates the API may hold (the store and every listing stay bounded).
MAX_API_TEMPLATES = 1000


class TemplateProblem(ValueError):
    """A template body that cannot be used: ``field`` names where, ``status`` is 409 or 422."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True, slots=True)
class _Stored:
    template: TemplateConfig
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None


def describe_variables(template: TemplateConfig) -> dict[str, dict[str, Any]]:
    """Each variable as a form needs it: ``{name: {type, default, choices, max_length,
    required}}`` (a time default as "HH:MM")."""
    specs = parse_variable_specs(template.variables, template=template.name)
    out: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        default = spec.default
        if isinstance(default, dt.time):
            default = default.strftime("%H:%M")
        out[name] = {
            "type": spec.type,
            "default": default,
            "choices": list(spec.choices) if spec.choices is not None else None,
            "max_length": spec.max_length if spec.type == "str" else None,
            "required": spec.required,
        }
    return out


def effective_priority(config: Config, template: TemplateConfig) -> int:
    """The priority its announcements get when the request does not say."""
    if template.priority is not None:
        return template.priority
    return config.announcements.default_priority


def _locate(body: dict[str, Any], exc: ValidationError) -> TemplateProblem:
    """Which field of a template body its compile check failed on."""
    name = str(body.get("name"))
    try:
        parse_variable_specs(body.get("variables") or {}, template=name)
    except TemplateError as err:
        return TemplateProblem(
            f"variables.{err.variable}" if err.variable else "variables", str(err)
        )
    draft = TemplateConfig.model_construct(**body)
    parts: list[tuple[str, str | None]] = [("text", None)]
    parts += [(f"translations.{lang}", lang) for lang in body.get("translations") or {}]
    for field, language in parts:
        try:
            draft.compiled(language)
        except TemplateError as err:
            return TemplateProblem(field, str(err))
    message = exc.errors()[0]["msg"].removeprefix("Value error, ")
    return TemplateProblem("text", message)


class TemplateLibrary:
    """Templates by name: the config's, then the API's."""

    def __init__(
        self, config: Config, store: AsyncStore | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self._store = store
        self._clock = clock
        self._config = {t.name: t for t in config.templates}
        self._api: dict[str, _Stored] = {}
        self._lock = asyncio.Lock()
        self.max_templates = MAX_API_TEMPLATES

    # --- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> TemplateConfig | None:
        found = self._config.get(name)
        if found is not None:
            return found
        stored = self._api.get(name)
        return stored.template if stored is not None else None

    def source(self, name: str) -> TemplateSource | None:
        if name in self._config:
            return "config"
        return "api" if name in self._api else None

    def names(self) -> list[str]:
        return sorted({*self._config, *self._api})

    def describe(self, name: str) -> dict[str, Any]:
        """The template as the API shows it (KeyError if there is none)."""
        template = self.get(name)
        if template is None:
            raise KeyError(name)
        data = template.model_dump(mode="json", exclude={"variables"})
        stored = self._api.get(name) if name not in self._config else None
        data.update(
            source=self.source(name),
            variables=describe_variables(template),
            effective_priority=effective_priority(self.config, template),
            emergency=effective_priority(self.config, template)
            >= self.config.announcements.emergency_priority,
            zones_expanded=self.config.expand_zones(template.zones),
            created_at=stored.created_at.isoformat() if stored else None,
            created_by=stored.created_by if stored else None,
            updated_at=stored.updated_at.isoformat() if stored else None,
            updated_by=stored.updated_by if stored else None,
        )
        return data

    def list(self) -> list[dict[str, Any]]:
        return [self.describe(name) for name in self.names()]

    # --- validation -------------------------------------------------------------------------

    def parse(self, body: dict[str, Any]) -> TemplateConfig:
        """An API template from a JSON body (TemplateProblem or ValidationError)."""
        try:
            template = TemplateConfig.model_validate(body, strict=True)
        except ValidationError as exc:
            if any(e["loc"] for e in exc.errors()):
                raise
            # The template's own check (its variables and the template parse) failed:
            # found again, part by part, to name the field.
            raise _locate(body, exc) from None
        for field in ("chime_before", "chime_after"):
            try:
                check_request_chime(getattr(template, field))
            except ValueError as exc:
                raise TemplateProblem(field, str(exc)) from None
        unknown = self.config.unknown_zones(template.zones)
        if unknown:
            raise TemplateProblem(
                "zones", f"unknown zone(s): {', '.join(unknown)} (neither a zone nor a zone group)"
            )
        limit = self.config.announcements.max_text_chars
        for field, text in (("text", template.text), *template.translations.items()):
            if len(text) > limit:
                where = field if field == "text" else f"translations.{field}"
                raise TemplateProblem(
                    where, f"{len(text)} characters; at most {limit} (announcements.max_text_chars)"
                )
        return template

    def config_conflict(self, name: str) -> TemplateProblem | None:
        """409 for a name the config defines (the API cannot change it)."""
        if name not in self._config:
            return None
        return TemplateProblem(
            "name",
            f"template {name!r} is defined in the config ({self.config.source}) and cannot be "
            "changed through the API; change it there, or make one with another name",
            409,
        )

    # --- changing ---------------------------------------------------------------------------

    async def load(self) -> None:
        """The API's templates from the store (at start)."""
        if self._store is None:
            return
        for row in await self._store.list_templates():
            if row.name in self._config:
                log.warning(
                    "template %s from the API is shadowed by the config's template of that name",
                    row.name,
                )
                continue
            try:
                template = self.parse(row.data)
            except (ValidationError, TemplateProblem, TemplateError) as exc:
                log.error("template %s from the store is no longer valid: %s", row.name, exc)
                continue
            self._api[row.name] = _Stored(
                template, row.created_at, row.updated_at, row.created_by, row.updated_by
            )
        log.info(
            "templates: %d from the config, %d from the API", len(self._config), len(self._api)
        )

    def _now(self) -> datetime:
        if self._clock is None:
            self._clock = SystemClock()
        return self._clock.wall()

    async def save(self, template: TemplateConfig, *, by: str | None, create: bool) -> None:
        """Create (``create``: 409 if the name exists) or replace an API template."""
        async with self._lock:
            conflict = self.config_conflict(template.name)
            if conflict is not None:
                raise conflict
            old = self._api.get(template.name)
            if create and old is not None:
                raise TemplateProblem(
                    "name", f"template {template.name!r} exists already (edit it with PUT)", 409
                )
            if not create and old is None:
                raise KeyError(template.name)
            if create and len(self._api) >= self.max_templates:
                raise TemplateProblem(
                    "name",
                    f"there are {len(self._api)} templates made through the API already, the "
                    "most kept; delete one first",
                    409,
                )
            now = self._now()
            stored = _Stored(
                template,
                created_at=old.created_at if old else now,
                updated_at=now,
                created_by=old.created_by if old else by,
                updated_by=by,
            )
            if self._store is not None:
                await self._store.upsert_template(
                    TemplateRow(
                        name=template.name,
                        data=template.model_dump(mode="json"),
                        created_at=stored.created_at,
                        updated_at=now,
                        created_by=stored.created_by,
                        updated_by=by,
                    )
                )
            self._api[template.name] = stored

    async def delete(self, name: str) -> bool:
        """False if there is no API template of that name (409 for a config one)."""
        async with self._lock:
            conflict = self.config_conflict(name)
            if conflict is not None:
                raise conflict
            if name not in self._api:
                return False
            if self._store is not None:
                await self._store.delete_template(name)
            del self._api[name]
            return True
