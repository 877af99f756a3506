"""agents/template.py: `render`, sandboxed Jinja2 per channel part."""

import pytest

from agents.template import RenderError, RenderLimit, render
from tests.unit import records


def template(*parts: dict, **overrides: object) -> dict:
    return records.template(**({"parts": list(parts) or [records.part("email")], "version": 3} | overrides))


def test_renders_subject_text_and_html() -> None:
    [email] = render(template(), ["email"], {"name": "Alice"})
    assert email == {"channel": "email", "subject": "Hello Alice", "text": "Hi Alice",
                     "html": "<p>Hi Alice</p>", "data": {}}


def test_renders_only_the_channels_asked_for_in_their_order() -> None:
    parts = (records.part("email"), records.part("sms", subject=None, html=None, text="SMS {{ name }}"),
             records.part("push", subject="{{ name }}", text="push", html=None))
    contents = render(template(*parts), ["sms", "email"], {"name": "Bo"})
    assert [c["channel"] for c in contents] == ["sms", "email"]
    assert contents[0] == {"channel": "sms", "subject": None, "text": "SMS Bo", "html": None, "data": {}}


def test_missing_parts_stay_none() -> None:
    [email] = render(template(records.part("email", subject=None, html=None)), ["email"], {"name": "A"})
    assert email["subject"] is None and email["html"] is None
    assert email["text"] == "Hi A"


def test_html_is_autoescaped_text_and_subject_are_not() -> None:
    value = "<script>alert('x')</script> & co"
    [email] = render(template(), ["email"], {"name": value})
    assert email["html"] == "<p>Hi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co</p>"
    assert "<script>" not in email["html"]
    assert email["text"] == f"Hi {value}"
    assert email["subject"] == f"Hello {value}"


def test_template_markup_in_html_source_is_kept() -> None:
    [email] = render(template(records.part("email", html="<b>{{ name }}</b><br>")), ["email"], {"name": "A&B"})
    assert email["html"] == "<b>A&amp;B</b><br>"


def test_variables_are_data_not_template_code() -> None:
    [email] = render(template(), ["email"], {"name": "{{ 7 * 7 }}"})
    assert email["text"] == "Hi {{ 7 * 7 }}"


def test_jinja_logic_works() -> None:
    part = records.part("email", text="{% if vip == 'yes' %}Dear {{ name|upper }}{% else %}Hi{% endif %}")
    [email] = render(template(part), ["email"], {"name": "al", "vip": "yes"})
    assert email["text"] == "Dear AL"


def test_undefined_variable_raises_naming_channel_template_and_variable() -> None:
    part = records.part("sms", subject=None, html=None, text="Code {{ code }}")
    with pytest.raises(RenderError) as raised:
        render(template(part, template_id="otp"), ["sms"], {"name": "A"})
    message = str(raised.value)
    assert message.startswith("sms part of 'otp' v3")
    assert "code" in message and "UndefinedError" in message


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ name.__class__ }}",
    "{{ (name|attr('__class__')) }}",
    "{{ self.__init__.__globals__ }}",
])
@pytest.mark.parametrize("field", ["text", "html"])
def test_sandbox_escapes_raise_render_error(source: str, field: str) -> None:
    part = records.part("email", **{field: source})
    with pytest.raises(RenderError) as raised:
        render(template(part), ["email"], {"name": "A"})
    assert "email part of 'welcome' v3" in str(raised.value)
    assert "Error" in str(raised.value)


def test_immutable_sandbox_refuses_mutation() -> None:
    part = records.part("email", text="{% set items = [1] %}{{ items.append(2) }}{{ items }}")
    with pytest.raises(RenderError, match="SecurityError"):
        render(template(part), ["email"], {"name": "A"})


def test_syntax_error_raises_render_error() -> None:
    with pytest.raises(RenderError, match="TemplateSyntaxError"):
        render(template(records.part("email", text="{% if %}")), ["email"], {"name": "A"})


def test_arithmetic_error_raises_render_error() -> None:
    with pytest.raises(RenderError, match="ZeroDivisionError"):
        render(template(records.part("email", text="{{ 1 / 0 }}")), ["email"], {"name": "A"})


def test_huge_range_raises_render_limit() -> None:
    with pytest.raises(RenderLimit, match=r"range\(\): 1,000,000,000 items, over 10,000 \(template_max_range\)"):
        render(template(records.part("email", text="{% for i in range(10**9) %}{% endfor %}")), ["email"], {"name": "A"})


def test_recursive_macro_raises_render_error() -> None:
    part = records.part("email", text="{% macro loop() %}{{ loop() }}{% endmacro %}{{ loop() }}")
    with pytest.raises(RenderError):
        render(template(part), ["email"], {"name": "A"})
