"""Announcement templates: typed variables, sandboxed Jinja2, speech-ready output."""

import datetime as dt
import json
from pathlib import Path

import pytest

from broadcaster.config import load_config
from broadcaster.scheduling.templates import (
    CompiledTemplate,
    TemplateError,
    TemplateRenderer,
    VariableSpec,
    parse_variable_specs,
)

ROOT = Path(__file__).resolve().parents[2]

DELAY_SOURCE = (
    "The {{ time }} service to {{ destination }} is currently delayed by approximately "
    "{{ delay_minutes }} minutes"
)
DELAY_VARIABLES = {
    "destination": "str",
    "delay_minutes": {"type": "int", "default": 18},
    "time": {"type": "time", "default": "12:40"},
}


@pytest.fixture
def renderer():
    return TemplateRenderer()


@pytest.fixture
def delay(renderer):
    specs = parse_variable_specs(DELAY_VARIABLES, template="midnight-train-delay")
    return renderer.compile("midnight-train-delay", DELAY_SOURCE, specs)


def one(renderer, source, variables=None, name="t"):
    return renderer.compile(name, source, parse_variable_specs(variables or {}))


# --- variable specs -------------------------------------------------------------------------


def test_parse_variable_specs_from_the_toml_shape():
    specs = parse_variable_specs(DELAY_VARIABLES)
    assert specs == {
        "destination": VariableSpec("destination", "str"),
        "delay_minutes": VariableSpec("delay_minutes", "int", default=18, required=False),
        "time": VariableSpec("time", "time", default="12:40", required=False),
    }
    assert specs["destination"].required
    assert not specs["delay_minutes"].required  # a default makes it optional


def test_spec_table_options():
    specs = parse_variable_specs(
        {
            "platform": {"type": "str", "choices": ["1", "2", "2b"]},
            "note": {"required": False, "max_length": 40},
            "count": {"default": 3},  # type from the default
            "late": {"default": False},
            "at": {"default": dt.time(6, 40)},  # a TOML local time
        }
    )
    assert specs["platform"].choices == ("1", "2", "2b")
    assert specs["note"] == VariableSpec("note", "str", required=False, max_length=40)
    assert specs["count"].type == "int"
    assert specs["late"].type == "bool"
    assert specs["at"].type == "time"


BAD_SPECS = [
    ({"delay": "integer"}, "delay", "type must be one of str, int, float, bool, time"),
    ({"delay": {"type": "int", "default": "soon"}}, "delay", "default: must be an integer"),
    ({"delay": {"type": "int", "dflt": 3}}, "delay", "unknown key 'dflt'"),
    ({"delay": 3}, "delay", "expected a type name or a table"),
    ({"at": {"type": "time", "default": "25:00"}}, "at", "must be a time as HH:MM"),
    ({"p": {"type": "int", "choices": ["1"]}}, "p", "choices apply to str variables only"),
    ({"p": {"type": "str", "choices": "12"}}, "p", "choices must be a list of strings"),
    ({"p": {"type": "str", "choices": []}}, "p", "choices must be a non-empty list"),
    ({"p": {"choices": ["a"], "default": "b"}}, "p", "default: must be one of 'a'"),
    ({"p": {"max_length": 0}}, "p", "max_length must be between 1 and 100000"),
    ({"p": {"required": "yes"}}, "p", "required must be true or false"),
    ({"2nd": "str"}, "2nd", "a name is a letter"),
    ({"_lang": "str"}, "_lang", "a name is a letter"),
    ({"loop": "str"}, "loop", "reserved"),
    ({"for": "str"}, "for", "reserved"),
]


@pytest.mark.parametrize(("mapping", "variable", "message"), BAD_SPECS)
def test_bad_specs_name_the_variable(mapping, variable, message):
    with pytest.raises(TemplateError, match=message) as info:
        parse_variable_specs(mapping, template="tpl")
    assert info.value.variable == variable
    assert info.value.template == "tpl"
    assert str(info.value).startswith(f"template 'tpl': variable {variable!r}: ")


def test_spec_errors_without_a_template_name_are_value_errors():
    with pytest.raises(ValueError, match=r"^variable 'delay': type must be one of"):
        parse_variable_specs({"delay": "integer"})


# --- compiling ----------------------------------------------------------------------------------


def test_syntax_error_names_the_template_and_line(renderer):
    with pytest.raises(TemplateError, match=r"^template 'bad': syntax error on line 2: ") as info:
        renderer.compile("bad", "Hello.\n{{ destination }\n", parse_variable_specs({}))
    assert info.value.template == "bad"


def test_unknown_filter_is_a_syntax_error(renderer):
    with pytest.raises(TemplateError, match="syntax error on line 1: No filter named 'random'"):
        one(renderer, "{{ [1, 2] | random }}")


def test_undeclared_variable_is_named(renderer):
    with pytest.raises(TemplateError) as info:
        renderer.compile("tpl", "Train to {{ destination }} from {{ platform }}", {})
    assert info.value.variable == "destination"
    assert str(info.value) == (
        "template 'tpl': variables 'destination', 'platform' are used but not declared "
        "(declared: none)"
    )


def test_locally_set_names_and_globals_need_no_declaration(renderer):
    tpl = one(renderer, "{% set n = 2 %}{% for i in range(n) %}{{ loop.index }} {% endfor %}")
    assert tpl.render({}) == "one two"
    assert tpl.used == frozenset()


def test_compiled_templates_are_cached(renderer):
    specs = parse_variable_specs(DELAY_VARIABLES)
    first = renderer.compile("a", DELAY_SOURCE, specs)
    assert renderer.compile("a", DELAY_SOURCE, dict(specs)) is first
    assert renderer.compile("a", DELAY_SOURCE + ".", specs) is not first
    assert renderer.compile("b", DELAY_SOURCE, specs) is not first
    assert isinstance(first, CompiledTemplate)
    assert first.used == {"destination", "delay_minutes", "time"}


def test_specs_must_be_named_as_their_key(renderer):
    with pytest.raises(TemplateError, match="its spec is named 'b'") as info:
        renderer.compile("t", "{{ a }}", {"a": VariableSpec("b", "str")})
    assert info.value.variable == "a"


# --- rendering: the seed's words -------------------------------------------------------------------


def test_seed_delay_sentence(delay):
    text = delay.render({"destination": "Greenhaven"})
    assert text == (
        "The twelve forty service to Greenhaven is currently delayed by approximately "
        "eighteen minutes"
    )
    seeds = json.loads((ROOT / "tests" / "unit" / "seed_requests.json").read_text())
    seed_text = next(s for s in seeds if s["name"] == "midnight-train-delay")["speech"]["text"]
    assert text in seed_text  # exactly the seed's words


def test_values_override_defaults(delay):
    text = delay.render({"destination": "Hill Square", "delay_minutes": 5, "time": "08:05"})
    assert text == (
        "The eight oh five service to Hill Square is currently delayed by approximately "
        "five minutes"
    )
    text = delay.render({"destination": "Hill Square", "time": dt.time(13, 0)})
    assert "The thirteen hundred service" in text


@pytest.mark.parametrize(
    ("source", "variables", "values", "spoken"),
    [
        ("issued at {{ at }}", {"at": "str"}, {"at": "6:40 a.m."}, "issued at six forty a.m."),
        ("channel {{ channel }}", {"channel": "int"}, {"channel": 16}, "channel sixteen"),
        ("platform {{ p }}", {"p": "str"}, {"p": "2"}, "platform two"),
        ("Platform {{ p }}", {"p": "str"}, {"p": "2b"}, "Platform two B"),
        ("train {{ t }}", {"t": "str"}, {"t": "IC 2735"}, "train I C two seven three five"),
        ("flight {{ f }}", {"f": "str"}, {"f": "BA 117"}, "flight B A one one seven"),
        ("{{ n }} km", {"n": "float"}, {"n": 2.5}, "two point five km"),
        ("{{ n }}", {"n": "float"}, {"n": 3}, "three"),
        ("late: {{ late }}", {"late": "bool"}, {"late": True}, "late: yes"),
        ("{% if late %}Delayed.{% endif %}", {"late": "bool"}, {"late": False}, None),
        ("in {{ y }}", {"y": "int"}, {"y": 2026}, "in twenty twenty-six"),
    ],
)
def test_printed_values_are_prepared_for_speech(renderer, source, variables, values, spoken):
    tpl = one(renderer, source, variables)
    if spoken is None:
        with pytest.raises(TemplateError, match="renders to empty text"):
            tpl.render(values)
    else:
        assert tpl.render(values) == spoken


def test_literal_text_is_left_as_written(renderer):
    tpl = one(renderer, "Platform 2 at 12:40, approx. {{ n }} min", {"n": "int"})
    assert tpl.render({"n": 18}) == "Platform 2 at 12:40, approx. eighteen min"


@pytest.mark.parametrize(
    "name",
    [
        "museum-audio-guide",
        "midnight-train-delay",
        "seaside-emergency-bulletin",
        "orbital-docking-briefing",
    ],
)
def test_the_demo_templates_render_the_seed_texts_with_their_defaults(renderer, name):
    template = load_config(ROOT / "configs" / "demo.toml").template(name)
    assert template is not None and "{{" in template.text  # they do have variables
    specs = parse_variable_specs(template.variables, template=name)
    tpl = renderer.compile(name, template.text, specs)
    seeds = json.loads((ROOT / "tests" / "unit" / "seed_requests.json").read_text())
    seed_text = next(s for s in seeds if s["name"] == name)["speech"]["text"]
    assert tpl.render({}, language=template.language or "English") == seed_text


@pytest.mark.parametrize(
    ("language", "spoken"),
    [
        ("English", "Departure twelve forty platform two"),
        ("German", "Departure zwölf Uhr vierzig platform zwei"),
        ("French", "Departure douze heures quarante platform deux"),
        ("Chinese", "Departure 12:40 platform 2"),
    ],
)
def test_render_language(renderer, language, spoken):
    tpl = one(renderer, "Departure {{ t }} platform {{ p }}", {"t": "time", "p": "int"})
    assert tpl.render({"t": "12:40", "p": 2}, language=language) == spoken


def test_unknown_language_is_a_template_error(delay):
    with pytest.raises(TemplateError, match="unknown language 'Elvish'"):
        delay.render({"destination": "X"}, language="Elvish")


# --- filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "values", "spoken"),
    [
        ("train {{ t | spell }}", {"t": "ic2735"}, "train I C two seven three five"),
        ("call {{ t | digits }}", {"t": "0800 123"}, "call zero eight zero zero one two three"),
        ("train {{ n | digits }}", {"n": 2735}, "train two seven three five"),
        ("{{ n | words }} people", {"n": 2026}, "two thousand and twenty-six people"),
        ("to {{ t | upper }}", {"t": "Greenhaven"}, "to GREENHAVEN"),
        ("to {{ t | title }}", {"t": "hill square"}, "to Hill Square"),
    ],
)
def test_filters(renderer, source, values, spoken):
    variables = {k: "int" if isinstance(v, int) else "str" for k, v in values.items()}
    assert one(renderer, source, variables).render(values) == spoken


def test_filters_speak_the_render_language(renderer):
    tpl = one(renderer, "{{ t | spell }}", {"t": "str"})
    assert tpl.render({"t": "A12"}, language="German") == "A eins zwei"


def test_words_filter_refuses_text(renderer):
    tpl = one(renderer, "{{ t | words }}", {"t": "str"})
    with pytest.raises(TemplateError, match="rendering failed: ValueError: 'soon' is not a number"):
        tpl.render({"t": "soon"})


# --- value errors --------------------------------------------------------------------------------


def test_missing_required_variable(delay):
    with pytest.raises(TemplateError) as info:
        delay.render({})
    assert info.value.variable == "destination"
    assert str(info.value) == (
        "template 'midnight-train-delay': variable 'destination' is required but no value was given"
    )


def test_null_counts_as_missing(delay):
    with pytest.raises(TemplateError, match="'destination' is required"):
        delay.render({"destination": None})


def test_wrong_kind_names_the_variable(delay):
    with pytest.raises(TemplateError) as info:
        delay.render({"destination": "X", "delay_minutes": "soon"})
    assert info.value.variable == "delay_minutes"
    assert str(info.value) == (
        "template 'midnight-train-delay': variable 'delay_minutes' must be an integer, got 'soon'"
    )


def test_unknown_value_name(delay):
    with pytest.raises(TemplateError) as info:
        delay.render({"destination": "X", "platfrom": 2})
    assert info.value.variable == "platfrom"
    assert str(info.value) == (
        "template 'midnight-train-delay': unknown variable 'platfrom' "
        "(declared: delay_minutes, destination, time)"
    )


WRONG_VALUES = [
    # numbers in quotes are refused: JSON and TOML carry real numbers
    ("int", "18", "must be an integer, got '18' (a number in quotes"),
    ("int", True, "must be an integer, got True"),
    ("int", 18.0, "must be an integer, got 18.0"),
    ("float", "2.5", "must be a number, got '2.5' (a number in quotes"),
    ("float", float("inf"), "must be a finite number"),
    ("bool", "true", "must be true or false"),
    ("bool", 1, "must be true or false"),
    ("time", "24:00", "must be a time as HH:MM"),
    ("time", "12:4", "must be a time as HH:MM"),
    ("time", "noon", "must be a time as HH:MM"),
    ("time", 1240, "must be a time as HH:MM"),
    ("str", 18, "must be text, got 18"),
]


@pytest.mark.parametrize(("kind", "value", "message"), WRONG_VALUES)
def test_values_are_checked_against_their_kind(renderer, kind, value, message):
    tpl = one(renderer, "{{ v }}", {"v": kind})
    with pytest.raises(TemplateError, match=message.replace("(", r"\(")) as info:
        tpl.render({"v": value})
    assert info.value.variable == "v"
    assert str(info.value).startswith("template 't': variable 'v' ")


def test_choices_and_max_length(renderer):
    tpl = one(
        renderer,
        "{{ p }} {{ note }}",
        {"p": {"type": "str", "choices": ["1", "2"]}, "note": {"max_length": 10}},
    )
    assert tpl.render({"p": "2", "note": "short"}) == "two short"
    with pytest.raises(TemplateError, match="variable 'p' must be one of '1', '2', got '3'"):
        tpl.render({"p": "3", "note": "x"})
    with pytest.raises(TemplateError, match="'note' is 11 characters long; at most 10"):
        tpl.render({"p": "1", "note": "x" * 11})


def test_optional_variable_without_default_renders_as_nothing(renderer):
    tpl = one(
        renderer,
        "The train to {{ d }} {{ note }}. {% if note %}Note!{% endif %}",
        {"d": "str", "note": {"required": False}},
    )
    assert tpl.render({"d": "Greenhaven"}) == "The train to Greenhaven."
    assert tpl.render({"d": "Greenhaven", "note": "is late"}) == (
        "The train to Greenhaven is late. Note!"
    )


def test_whitespace_is_normalised(renderer):
    tpl = one(renderer, "  Attention,\n\n  passengers   {{ d }}  .\n", {"d": "str"})
    assert tpl.render({"d": "now"}) == "Attention, passengers now."


# --- the sandbox ----------------------------------------------------------------------------------

UNSAFE = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ d.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ 'x' * 1000000 }}",
    "{{ 10 ** 100000 }}",
]


@pytest.mark.parametrize("source", UNSAFE)
def test_sandbox_refuses_escapes(renderer, source):
    tpl = one(renderer, source, {"d": {"required": False}})
    with pytest.raises(TemplateError, match=r"^template 't': refused an unsafe operation"):
        tpl.render({"d": "x"})


def test_immutable_values(renderer):
    tpl = one(renderer, "{% set l = [1] %}{{ l.append(2) }}")
    with pytest.raises(TemplateError, match="refused an unsafe operation"):
        tpl.render({})


def test_runtime_errors_become_template_errors(renderer):
    tpl = one(renderer, "{{ n / 0 }}", {"n": "int"})
    with pytest.raises(TemplateError, match="rendering failed: ZeroDivisionError"):
        tpl.render({"n": 1})
    tpl = one(renderer, "{{ d.nothing }}", {"d": "str"})
    with pytest.raises(TemplateError, match="rendering failed: 'str object' has no attribute"):
        tpl.render({"d": "x"})
    tpl = one(renderer, "{% for i in range(10000000) %}{% endfor %}")
    with pytest.raises(TemplateError, match="rendering failed: OverflowError"):
        tpl.render({})


def test_output_is_bounded():
    renderer = TemplateRenderer(max_output_chars=1000)
    tpl = one(renderer, "{% for i in range(5000) %}word {% endfor %}")
    with pytest.raises(TemplateError, match="renders to more than 1000 characters"):
        tpl.render({})
