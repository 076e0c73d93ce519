"""Announcement templates: Jinja2 in a sandbox, typed variables, speech-ready output.

A template is a string (a ``[[templates]]`` ``text``, a schedule's text, an API
request's) with ``{{ variable }}`` holes. Every variable a template uses must be
declared with a :class:`VariableSpec`; values are checked against their specs before
rendering, and every printed expression goes through
:func:`broadcaster.speech.textprep.prepare_value`, so ``{{ time }}`` with "12:40"
speaks as "twelve forty" and ``{{ delay_minutes }}`` with 18 as "eighteen". The
literal words of the template are left exactly as their author wrote them here; the
spoken form of the whole rendered text (its own "platform 4" too) is made later, in
one place for every text (:func:`broadcaster.announcements.prepare_spoken`).
Rendered with ``display=True`` the values are printed as written instead ("12:40",
"18"; the ``spell``/``digits``/``words`` filters print their value): the text a
record and a caption show.

Values are strict: an ``int`` variable takes a real integer, not the string "18".
Values arrive as JSON or TOML, which carry real numbers, so a string in a number
slot means the caller sent the wrong field or pre-formatted text; accepting it would
also force us to decide what " 18", "018", "1e3" or "18.0" mean. Rejecting it gives
the caller an error naming the variable instead of a wrong announcement.

Pure: no I/O, no clock, no randomness (Jinja's ``random`` filter and ``lipsum``
global are removed).
"""

from __future__ import annotations

import datetime as dt
import keyword
import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, cast, get_args

import jinja2
from jinja2 import StrictUndefined, meta, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from broadcaster.model import LANGUAGES
from broadcaster.speech import textprep

__all__ = [
    "CompiledTemplate",
    "TemplateError",
    "TemplateRenderer",
    "VariableKind",
    "VariableSpec",
    "parse_variable_specs",
]

VariableKind = Literal["str", "int", "float", "bool", "time"]
_KINDS: Final[tuple[str, ...]] = get_args(VariableKind)
_SPEC_KEYS: Final = frozenset({"type", "default", "required", "choices", "max_length"})
_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Names Jinja gives a meaning of its own.
_RESERVED: Final = frozenset(
    {"true", "false", "none", "loop", "self", "super", "caller", "varargs", "kwargs"}
)
_TIME_RE: Final = re.compile(r"(\d{1,2}):(\d{2})")
#: The render context carries the language under a name no template may declare.
_LANGUAGE_KEY: Final = "_broadcaster_language"
#: ...and whether it renders for display (values as written) instead of speech.
_DISPLAY_KEY: Final = "_broadcaster_display"
#: Longest string or list the ``*`` operator may build inside a template.
_MAX_REPEAT: Final = 10_000


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message is meant for people.

    ``template`` names the template (None when there is none yet, e.g. specs parsed
    on their own) and ``variable`` the variable at fault, if one is.
    """

    def __init__(self, template: str | None, problem: str, *, variable: str | None = None):
        self.template = template
        self.variable = variable
        self.problem = problem
        super().__init__(f"template {template!r}: {problem}" if template is not None else problem)

    def in_template(self, template: str) -> TemplateError:
        """The same problem, named as belonging to ``template``."""
        return TemplateError(template, self.problem, variable=self.variable)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number_hint(value: object) -> str:
    """A hint for a number sent as text ("18"): numbers must arrive as numbers."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*", value):
        return " (a number in quotes: send the number itself, not text)"
    return ""


def _parse_time(value: str) -> dt.time | None:
    match = _TIME_RE.fullmatch(value.strip())
    if match is None:
        return None
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        return None
    return dt.time(hour, minute)


@dataclass(frozen=True)
class VariableSpec:
    """One declared template variable.

    A ``default`` makes the variable optional (``required`` is then False). An
    optional variable without a default renders as nothing when no value is given,
    and is false in ``{% if %}``. ``choices`` and ``max_length`` apply to ``str``.
    """

    name: str
    type: VariableKind
    default: object | None = None
    required: bool = True
    choices: tuple[str, ...] | None = None
    max_length: int = 200

    def __post_init__(self) -> None:
        def fail(problem: str) -> TemplateError:
            return TemplateError(None, f"variable {self.name!r}: {problem}", variable=self.name)

        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise fail("a name is a letter followed by letters, digits or '_'")
        if keyword.iskeyword(self.name) or self.name.lower() in _RESERVED:
            raise fail("this name is reserved by the template language")
        if self.type not in _KINDS:
            raise fail(f"type must be one of {', '.join(_KINDS)}, got {_show(self.type)}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            raise fail(f"max_length must be an integer, got {_show(self.max_length)}")
        if not 1 <= self.max_length <= 100_000:
            raise fail("max_length must be between 1 and 100000")
        if self.choices is not None:
            if self.type != "str":
                raise fail("choices apply to str variables only")
            choices = tuple(self.choices)
            if not choices or not all(isinstance(c, str) for c in choices):
                raise fail("choices must be a non-empty list of strings")
            if len(set(choices)) != len(choices):
                raise fail("choices are listed twice")
            object.__setattr__(self, "choices", choices)
        if not isinstance(self.required, bool):
            raise fail(f"required must be true or false, got {_show(self.required)}")
        if self.default is not None:
            object.__setattr__(self, "required", False)
            try:
                self.validate(self.default)
            except ValueError as exc:
                raise fail(f"default: {exc}") from None

    def validate(self, value: object) -> object:
        """The value a template sees for ``value``, or ValueError saying what is wrong.

        The message names the kind of value expected, not the variable (the caller
        adds that).
        """
        kind = self.type
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"must be text, got {_show(value)}")
            if len(value) > self.max_length:
                raise ValueError(
                    f"is {len(value)} characters long; at most {self.max_length} are allowed"
                )
            if self.choices is not None and value not in self.choices:
                raise ValueError(
                    f"must be one of {', '.join(map(repr, self.choices))}, got {_show(value)}"
                )
            return value
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                hint = _number_hint(value)
                raise ValueError(f"must be an integer, got {_show(value)}{hint}")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                hint = _number_hint(value)
                raise ValueError(f"must be a number, got {_show(value)}{hint}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"must be a finite number, got {_show(value)}")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {_show(value)}")
            return value
        # time
        if isinstance(value, dt.time):
            return value.replace(second=0, microsecond=0, tzinfo=None)
        parsed = _parse_time(value) if isinstance(value, str) else None
        if parsed is None:
            raise ValueError(f"must be a time as HH:MM (24-hour), got {_show(value)}")
        return parsed


def parse_variable_specs(
    mapping: Mapping[str, object], *, template: str | None = None
) -> dict[str, VariableSpec]:
    """Variable specs from their TOML shape.

    Each entry is a type name (``destination = "str"``) or a table with ``type``
    and any of ``default``, ``required``, ``choices``, ``max_length``
    (``delay_minutes = { type = "int", default = 18 }``). A table without ``type``
    takes it from its default's kind, else ``str``. Errors are TemplateErrors that
    name the variable (and ``template`` when given).
    """
    specs: dict[str, VariableSpec] = {}
    try:
        if not isinstance(mapping, Mapping):
            raise TemplateError(None, f"variables must be a table, got {_show(mapping)}")
        for name, entry in mapping.items():
            specs[name] = _parse_one(name, entry)
    except TemplateError as exc:
        raise (exc.in_template(template) if template is not None else exc) from None
    return specs


def _parse_one(name: object, entry: object) -> VariableSpec:
    if not isinstance(name, str):
        raise TemplateError(None, f"variable names must be text, got {_show(name)}")
    if isinstance(entry, VariableSpec):
        if entry.name != name:
            raise TemplateError(
                None, f"variable {name!r}: its spec is named {entry.name!r}", variable=name
            )
        return entry
    if isinstance(entry, str):
        return VariableSpec(name=name, type=cast(VariableKind, entry))
    if not isinstance(entry, Mapping):
        raise TemplateError(
            None,
            f"variable {name!r}: expected a type name or a table, got {_show(entry)}",
            variable=name,
        )
    unknown = sorted(str(k) for k in entry if k not in _SPEC_KEYS)
    if unknown:
        raise TemplateError(
            None,
            f"variable {name!r}: unknown key {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(_SPEC_KEYS))})",
            variable=name,
        )
    default = entry.get("default")
    kind = entry.get("type", _kind_of(default))
    choices = entry.get("choices")
    if choices is not None and (isinstance(choices, str) or not isinstance(choices, list | tuple)):
        raise TemplateError(
            None, f"variable {name!r}: choices must be a list of strings", variable=name
        )
    kwargs: dict[str, Any] = {"name": name, "type": kind, "default": default}
    if choices is not None:
        kwargs["choices"] = tuple(choices)
    if "required" in entry:
        kwargs["required"] = entry["required"]
    if "max_length" in entry:
        kwargs["max_length"] = entry["max_length"]
    return VariableSpec(**kwargs)


def _kind_of(default: object) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, dt.time):
        return "time"
    return "str"


# --- the Jinja environment ----------------------------------------------------------------


def _language(context: Context) -> str:
    language = context.get(_LANGUAGE_KEY, "English")
    return language if isinstance(language, str) else "English"


def _display(context: Context) -> bool:
    return context.get(_DISPLAY_KEY) is True


def _as_written(value: object, language: str) -> str:
    """A value as a caption shows it: "08:05", "2.5" ("2,5" where the decimal sign is
    a comma), "2b"; yes/no in the language (a truth value has no written form)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return textprep.prepare_value(value, language)
    if isinstance(value, dt.time):
        return f"{value.hour:02d}:{value.minute:02d}"
    if isinstance(value, float | Decimal):
        return textprep.written_number(value, language)
    return str(value)


@pass_context
def _finalize(context: Context, value: object) -> str:
    if _display(context):
        return _as_written(value, _language(context))
    return textprep.prepare_value(value, _language(context))


@pass_context
def _spell_filter(context: Context, value: object) -> str:
    if _display(context):
        return str(value)
    return textprep.spell(str(value), _language(context))


@pass_context
def _digits_filter(context: Context, value: object) -> str:
    if _display(context):
        return str(value)
    return textprep.digits(str(value), _language(context))


@pass_context
def _words_filter(context: Context, value: object) -> str:
    if _display(context):
        textprep.number_words(value, _language(context))  # refused alike: not a number
        return _as_written(value, _language(context))
    return textprep.number_words(value, _language(context))


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, also refusing ``*`` and ``**`` that would build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > _MAX_REPEAT:
                    raise SecurityError("repetition result too long")
        return super().call_binop(context, operator, left, right)


def _environment() -> _Environment:
    env = _Environment(
        undefined=StrictUndefined,
        autoescape=False,
        finalize=_finalize,
        keep_trailing_newline=False,
    )
    env.filters.pop("random", None)
    env.globals.pop("lipsum", None)
    env.filters["spell"] = _spell_filter
    env.filters["digits"] = _digits_filter
    env.filters["words"] = _words_filter
    return env


class CompiledTemplate:
    """A checked template, ready to render; made by :meth:`TemplateRenderer.compile`."""

    __slots__ = ("_max_output_chars", "_template", "name", "source", "used", "variables")

    def __init__(
        self,
        name: str,
        source: str,
        variables: Mapping[str, VariableSpec],
        used: frozenset[str],
        template: jinja2.Template,
        max_output_chars: int,
    ) -> None:
        self.name = name
        self.source = source
        self.variables: Mapping[str, VariableSpec] = MappingProxyType(dict(variables))
        #: The declared variables the template actually refers to.
        self.used = used
        self._template = template
        self._max_output_chars = max_output_chars

    def __repr__(self) -> str:
        return f"CompiledTemplate(name={self.name!r}, variables={sorted(self.variables)})"

    def _error(self, problem: str, variable: str | None = None) -> TemplateError:
        return TemplateError(self.name, problem, variable=variable)

    def values_for(self, values: Mapping[str, object]) -> dict[str, object]:
        """Check ``values`` against the specs; the values the template will see."""
        unknown = sorted(str(k) for k in values if k not in self.variables)
        if unknown:
            declared = ", ".join(sorted(self.variables)) or "none"
            noun = "variable" if len(unknown) == 1 else "variables"
            raise self._error(
                f"unknown {noun} {', '.join(map(repr, unknown))} (declared: {declared})",
                unknown[0],
            )
        context: dict[str, object] = {}
        for name, spec in self.variables.items():
            raw = values.get(name)
            if raw is None:
                if spec.default is not None:
                    raw = spec.default
                elif spec.required:
                    raise self._error(f"variable {name!r} is required but no value was given", name)
                else:
                    context[name] = None
                    continue
            try:
                context[name] = spec.validate(raw)
            except ValueError as exc:
                raise self._error(f"variable {name!r} {exc}", name) from None
        return context

    def render(
        self, values: Mapping[str, object], *, language: str = "English", display: bool = False
    ) -> str:
        """The announcement text for ``values`` in ``language``.

        For speech (the default) every printed value is read out in words; with
        ``display`` values are printed as written ("08:05"), for captions and records.

        Raises TemplateError naming the template (and the variable, when one is at
        fault) for unknown, missing or ill-typed values, a refused operation, or a
        text that comes out empty or too long.
        """
        if language not in LANGUAGES:
            raise self._error(
                f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}"
            )
        context = self.values_for(values)
        context[_LANGUAGE_KEY] = language
        context[_DISPLAY_KEY] = display
        chunks: list[str] = []
        size = 0
        try:
            stream: Iterator[str] = self._template.generate(context)
            for chunk in stream:
                size += len(chunk)
                if size > self._max_output_chars:
                    raise self._error(f"renders to more than {self._max_output_chars} characters")
                chunks.append(chunk)
        except TemplateError:
            raise
        except SecurityError as exc:
            raise self._error(f"refused an unsafe operation: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise self._error(f"rendering failed: {exc}") from None
        except Exception as exc:  # a template is code; whatever it raises is its error
            raise self._error(f"rendering failed: {type(exc).__name__}: {exc}") from None
        text = _normalise_space("".join(chunks))
        if not text:
            raise self._error("renders to empty text")
        return text


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])(?=\s|$)")


def _normalise_space(text: str) -> str:
    """One space between words, none at the ends or before punctuation."""
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


class TemplateRenderer:
    """Compiles and caches templates (from strings; there is no loader)."""

    def __init__(self, *, cache_size: int = 256, max_output_chars: int = 100_000) -> None:
        self._env = _environment()
        self._cache: OrderedDict[tuple[object, ...], CompiledTemplate] = OrderedDict()
        self._cache_size = cache_size
        self._max_output_chars = max_output_chars

    def compile(
        self, name: str, source: str, variables: Mapping[str, VariableSpec]
    ) -> CompiledTemplate:
        """Parse ``source`` and check that every variable it uses is declared.

        Raises TemplateError for a syntax error (with its line) or an undeclared
        variable (naming it). The same name, source and specs give the cached result.
        """
        for key, spec in variables.items():
            if not isinstance(spec, VariableSpec):
                raise TemplateError(
                    name,
                    f"variable {key!r}: expected a VariableSpec, got {_show(spec)}",
                    variable=key,
                )
            if spec.name != key:
                raise TemplateError(
                    name, f"variable {key!r}: its spec is named {spec.name!r}", variable=key
                )
        cache_key = (name, source, tuple(sorted(variables.items())))
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached

        try:
            ast = self._env.parse(source)
            template = self._env.from_string(ast)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(name, f"syntax error on line {exc.lineno}: {exc.message}") from None
        used = meta.find_undeclared_variables(ast) - set(self._env.globals)
        undeclared = sorted(used - set(variables))
        if undeclared:
            noun = "variable" if len(undeclared) == 1 else "variables"
            verb = "is" if len(undeclared) == 1 else "are"
            declared = ", ".join(sorted(variables)) or "none"
            raise TemplateError(
                name,
                f"{noun} {', '.join(map(repr, undeclared))} {verb} used but not declared "
                f"(declared: {declared})",
                variable=undeclared[0],
            )
        compiled = CompiledTemplate(
            name, source, variables, frozenset(used), template, self._max_output_chars
        )
        self._cache[cache_key] = compiled
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return compiled
