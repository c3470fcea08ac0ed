"""Which http step URLs fix their own destination (compiler/egress.py)."""

from __future__ import annotations

import pytest

from aigw.compiler.egress import literal_origin


@pytest.mark.parametrize(("template", "origin"), [
    ("https://tools.example.com/v1/{{ input.id }}", "https://tools.example.com:443"),
    ("https://tools.example.com", "https://tools.example.com:443"),
    ("http://Tools.Example.com:8080?q={{ input.q }}", "http://tools.example.com:8080"),
    ("http://tools.example.com:80/#{{ input.x }}", "http://tools.example.com:80"),
])
def test_a_written_out_origin_is_the_only_destination(template: str, origin: str) -> None:
    assert literal_origin(template) == origin


@pytest.mark.parametrize("template", [
    "{{ input.url }}",  # everything from the caller
    "https://{{ input.host }}/status",  # the host
    "https://tools.example.com{{ input.path }}",  # the host may go on: ".evil.test", "@..."
    "https://tools.example.com:{{ input.port }}/",  # the port
    "https://user@tools.example.com/",  # user info
    "https://tools.example.com\\@evil.test/",  # parsers disagree on a backslash
    "ftp://tools.example.com/",  # not http(s)
    "https://tools.example.com:x/",  # not a port
])
def test_anything_templated_before_the_path_is_not_fixed(template: str) -> None:
    assert literal_origin(template) is None
