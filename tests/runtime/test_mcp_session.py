"""Session ids sealed to a key's secret: they open under that key and server only, unchanged."""

from __future__ import annotations

from aigw.runtime.mcp_session import open_sealed, seal, session_secret


def key(name: str) -> bytes:
    return session_secret(f"sk-{name}")


def test_an_id_opens_only_under_its_key_and_server() -> None:
    alice, bob = key("alice"), key("bob")
    server_id = "3f0c2a9e-5b1d-4c7e-9a42-0d8f6b1e7c35"
    shown = seal(server_id, alice, "tools")
    assert shown is not None and server_id not in shown
    assert shown == seal(server_id, alice, "tools")  # the same each time the server says it
    assert all(0x21 <= ord(char) <= 0x7E for char in shown)
    assert open_sealed(shown, alice, "tools") == server_id
    assert open_sealed(shown, bob, "tools") is None
    assert open_sealed(shown, alice, "other") is None
    assert open_sealed(server_id, alice, "tools") is None
    flipped = shown[:-3] + ("A" if shown[-3] != "A" else "B") + shown[-2:]
    assert open_sealed(flipped, alice, "tools") is None
    assert open_sealed("aigw1.!!", alice, "tools") is None


def test_an_id_no_server_should_send_is_not_sealed() -> None:
    assert seal("", key("alice"), "tools") is None
    assert seal("has space", key("alice"), "tools") is None
    assert seal("x" * 513, key("alice"), "tools") is None
    long_id = "x" * 512
    assert open_sealed(seal(long_id, key("alice"), "tools") or "", key("alice"), "tools") == long_id
