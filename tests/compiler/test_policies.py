"""Stage 4, policies: Cedar files cut into positioned policies, @id and @priority checked."""

from __future__ import annotations

from aigw.compiler.diagnostics import DiagnosticSink
from aigw.compiler.load import PolicyFile
from aigw.compiler.policies import compile_policies, split_policies
from aigw.compiler.source import Position


def _split(text: str) -> list[tuple[int, int, str]]:
    return [(p.position.line, p.position.column, p.text)
            for p in split_policies(PolicyFile("p.cedar", text))]


def test_split_at_top_level_semicolons_with_positions() -> None:
    text = (
        "// header comment\n"
        "permit (principal, action, resource);\n"
        "\n"
        "  forbid (principal, action, resource);  permit (principal, action, resource);\n"
    )
    assert _split(text) == [
        (2, 1, "permit (principal, action, resource);"),
        (4, 3, "forbid (principal, action, resource);"),
        (4, 42, "permit (principal, action, resource);"),
    ]


def test_semicolons_in_strings_and_comments_do_not_split() -> None:
    text = (
        '@id("a;b")\n'
        "permit (principal, action, resource) // not the end; really\n"
        'when { context.note == "x; \\"y;\\" z" };\n'
        "// a comment; with; semicolons\n"
        '@id("c")\n'
        "forbid (principal, action, resource);\n"
    )
    chunks = _split(text)
    assert [(line, column) for line, column, _ in chunks] == [(1, 1), (5, 1)]
    assert chunks[0][2].endswith('z" };')
    assert len(chunks) == 2


def test_text_after_the_last_semicolon_is_a_policy_of_its_own() -> None:
    # A missing final ';' must still reach cedarpy, which then reports it.
    text = "permit (principal, action, resource);\nforbid (principal, action, resource)\n"
    assert _split(text) == [
        (1, 1, "permit (principal, action, resource);"),
        (2, 1, "forbid (principal, action, resource)\n"),
    ]


def test_compiled_policies_keep_id_priority_and_line() -> None:
    text = (
        '@id("invoke")\npermit (principal, action == Action::"invoke", resource);\n\n'
        '@id("prefer-local")\n@priority("50")\n'
        'permit (principal, action == Action::"route", resource in Provider::"local");\n'
    )
    sink = DiagnosticSink()
    policies = compile_policies([PolicyFile("policies/p.cedar", text)], sink)
    assert not sink.sorted()
    assert [(p.id, p.priority, p.file, p.line) for p in policies] == [
        ("invoke", 0, "policies/p.cedar", 1),
        ("prefer-local", 50, "policies/p.cedar", 4),
    ]


def test_syntax_error_points_at_the_named_token() -> None:
    text = (
        '@id("a")\npermit (principal, action, resource);\n\n'
        '@id("b")\nallow (principal, action, resource);\n'
    )
    sink = DiagnosticSink()
    assert [p.id for p in compile_policies([PolicyFile("p.cedar", text)], sink)] == ["a"]
    (item,) = sink.sorted()
    assert (item.code.id, item.position) == ("AGW401", Position("p.cedar", 5, 1, 5))


def test_duplicate_id_across_files_points_at_both() -> None:
    first = PolicyFile("policies/a.cedar", '@id("x")\npermit (principal, action, resource);\n')
    second = PolicyFile("policies/b.cedar",
                        '@id("y")\npermit (principal, action, resource);\n'
                        '@priority("1") @id("x")\nforbid (principal, action, resource);\n')
    sink = DiagnosticSink()
    policies = compile_policies([first, second], sink)
    assert [p.id for p in policies] == ["x", "y"]
    (item,) = sink.sorted()
    assert item.code.id == "AGW403"
    assert item.position == Position("policies/b.cedar", 3, 16, 3)
    assert item.hint == "first used at policies/a.cedar:1:1"
