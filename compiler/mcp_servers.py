"""Part of stage 3, link: the MCP servers apps reach through the gateway (``mcp_servers:``).

An entry is a server at ``url`` (speaking streamable HTTP, or with ``transport: sse`` the
older HTTP+SSE transport) or a stdio one (``command``): exactly one of url and command
(AGW350), and no field that its kind does not read (AGW352). Its ``url``, ``headers`` and ``env``
get their ${ENV} references resolved (an unset one, or a header that is not ASCII text,
disables that server and says why, as for a provider), and the rules that keep its
credentials out of git and its allow-list meaningful are checked: a credential header
or env value written as a literal (AGW333, AGW353), a tool named twice (AGW334), an
allow-list that allows nothing (AGW335). A url that is not http(s) with a host is a
schema error (AGW205); a command that is not on PATH a warning (AGW351: it may be
installed where aigw serves, not where it is checked).
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import codes
from .diagnostics import DiagnosticSink, shown_url
from .source import Resolve
from .spec import McpServerSpec

if TYPE_CHECKING:
    from .link import Entry

# Header names that carry a credential: their value must come from the environment.
CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|password|cookie|session", re.IGNORECASE)


# The fields only some kinds of server read, and which: "url" (streamable HTTP), "sse"
# (url with transport: sse) and "command" (stdio). The gateway holds the sessions of the
# last two, so only they are told how long to keep one and how many.
_READ_BY: Mapping[str, tuple[str, ...]] = {
    "headers": ("url", "sse"), "transport": ("url", "sse"), "env": ("command",),
    "cwd": ("command",), "idle_timeout_s": ("command", "sse"),
    "max_sessions": ("command", "sse"),
}
_READERS = {("url", "sse"): "a url", ("command",): "a stdio (command)",
            ("command", "sse"): "a stdio (command) or an sse (transport: sse)"}
_WHY_NOT = {"headers": " (a stdio server's credentials go in env:)",
            "transport": " (a stdio server speaks on its stdin and stdout)",
            "idle_timeout_s": " (a streamable HTTP server ends its sessions itself)",
            "max_sessions": " (a streamable HTTP server limits its sessions itself)"}


@dataclass(frozen=True, slots=True)
class LinkedMcpServer:
    entry: Entry[McpServerSpec]
    url: str  # "" for a stdio server
    headers: Mapping[str, str]
    env: Mapping[str, str]
    disabled_reason: str | None


def link_mcp_servers(
    entries: Mapping[str, Entry[McpServerSpec]],
    resolve: Resolve,
    secret_looking: Callable[[str], bool],
    sink: DiagnosticSink,
) -> dict[str, LinkedMcpServer]:
    """Name -> the server with its url and headers resolved; problems go to ``sink``."""
    return {name: _link(entry, resolve, secret_looking, sink) for name, entry in entries.items()}


def _link(
    entry: Entry[McpServerSpec],
    resolve: Resolve,
    secret_looking: Callable[[str], bool],
    sink: DiagnosticSink,
) -> LinkedMcpServer:
    spec = entry.spec
    unset: list[str] = []
    _check_transport(entry, sink)
    check_literal_headers(f"MCP server '{entry.name}'", entry, spec.headers, secret_looking,
                          codes.MCP_LITERAL_SECRET, sink)
    _check_literal_env(entry, secret_looking, sink)
    url = resolve(spec.url, entry.value("url"), unset) if spec.url is not None else ""
    headers = {header: resolve(value, entry.value("headers", header), unset)
               for header, value in spec.headers.items()}
    env = {name: resolve(value, entry.value("env", name), unset)
           for name, value in spec.env.items()}
    parsed = urllib.parse.urlsplit(url)
    if url and (parsed.scheme not in ("http", "https") or not parsed.hostname):
        sink.add(codes.SCHEMA_VALUE,
                 f"MCP server '{entry.name}' has url {shown_url(url)!r}, which is not an "
                 "http(s) URL with a host", entry.value("url"),
                 "write the server's SSE endpoint, e.g. https://mcp.example.com/sse"
                 if spec.transport == "sse" else
                 "write the server's streamable HTTP endpoint, e.g. https://mcp.example.com/mcp")
    _check_tools(entry, sink)
    reason = (f"environment variable {', '.join(unset)} is not set" if unset
              else not_ascii(headers.items()))
    return LinkedMcpServer(entry, url, headers, env, reason)


def _check_transport(entry: Entry[McpServerSpec], sink: DiagnosticSink) -> None:
    """Exactly one of url and command, no field of the other kind, and a command that
    can be found (a warning: PATH where aigw serves may differ)."""
    spec, name = entry.spec, entry.name
    if (spec.url is None) == (spec.command is None):
        both = spec.url is not None
        found = "both url and command" if both else "neither url nor command"
        sink.add(codes.MCP_TRANSPORT, f"MCP server '{name}' has {found}",
                 entry.key("command") if both else entry.key(),
                 "write url: for a server that speaks streamable HTTP (and transport: sse for "
                 "one that speaks the older HTTP+SSE), or command: [program, args...] for one "
                 "the gateway starts and speaks to on stdin and stdout")
        return
    kind = "command" if spec.command is not None else spec.transport.replace(
        "streamable_http", "url")
    for field in sorted(spec.model_fields_set & _READ_BY.keys()):
        if kind not in _READ_BY[field]:
            sink.add(codes.MCP_OTHER_TRANSPORT,
                     f"MCP server '{name}' sets {field}, which only "
                     f"{_READERS[_READ_BY[field]]} server reads", entry.key(field),
                     f"remove {field}:" + _WHY_NOT.get(field, ""))
    program = spec.command[0] if spec.command else None
    if program is not None and not _runnable(program):
        sink.add(codes.MCP_COMMAND_NOT_FOUND,
                 f"MCP server '{name}' runs '{program}', which is not "
                 + ("an executable file" if os.sep in program else "on PATH here"),
                 entry.value("command", 0),
                 "install it where aigw serves (or write its full path); until then each "
                 "initialize of this server is a 502")


def _runnable(program: str) -> bool:
    if os.sep in program:  # a path: relative ones are the cwd's, known only when run
        return not os.path.isabs(program) or os.access(program, os.X_OK)
    return shutil.which(program) is not None


def _check_literal_env(entry: Entry[McpServerSpec], secret_looking: Callable[[str], bool],
                       sink: DiagnosticSink) -> None:
    """As for headers: a credential in env written as a literal would be in git."""
    for name, value in entry.spec.env.items():
        if "${" not in value and (CREDENTIAL_HEADER.search(name) or secret_looking(value)):
            sink.add(codes.MCP_LITERAL_ENV_SECRET,
                     f"MCP server '{entry.name}' sets env {name} to a literal value",
                     entry.value("env", name),
                     f"keep credentials out of git: write {name}: ${{SOME_ENV_VAR}} and set "
                     "it where aigw runs")


def not_ascii(headers: Iterable[tuple[str, str]], key: str | None = None) -> str | None:
    """Why these headers (and ``key``, an api_key) cannot be sent, naming each one that is
    not ASCII text but never its value (it may carry a credential); None when all can.

    httpx refuses them on every call (a UnicodeEncodeError), aiohttp sends them as UTF-8
    that no server takes for the credential meant; so what sends them is disabled, as
    for an unset ${ENV}. ``not_ascii([("x-token", "sésame")])`` is
    ``"header x-token is not ASCII text"``.
    """
    odd = ["api_key"] if key is not None and not key.isascii() else []
    odd += [f"header {name}" for name, value in headers if not (name + value).isascii()]
    return f"{', '.join(odd)} {'is' if len(odd) == 1 else 'are'} not ASCII text" if odd else None


def check_literal_headers(
    owner: str, entry: Entry[Any], headers: Mapping[str, str],
    secret_looking: Callable[[str], bool], code: codes.Code, sink: DiagnosticSink,
) -> None:
    """A header that carries a credential (by its name, or a value that looks like one)
    written as a literal, not from ${ENV}, is ``code`` on its value: it would be in git."""
    for header, value in headers.items():
        if "${" not in value and (CREDENTIAL_HEADER.search(header) or secret_looking(value)):
            sink.add(code, f"{owner} sends header {header} with a literal value",
                     entry.value("headers", header),
                     f"keep credentials out of git: write {header}: ${{SOME_ENV_VAR}} (or "
                     "'Bearer ${SOME_ENV_VAR}') and set it where aigw runs")


def _check_tools(entry: Entry[McpServerSpec], sink: DiagnosticSink) -> None:
    tools = entry.spec.tools
    if tools is None:
        return
    if not tools:
        sink.add(codes.MCP_NO_TOOLS,
                 f"MCP server '{entry.name}' has an empty tools list: no tool can be listed "
                 "or called", entry.value("tools"),
                 "name the tools apps may call, or remove tools: to allow every one")
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if tool in seen:
            sink.add(codes.MCP_TOOL_TWICE,
                     f"MCP server '{entry.name}' lists tool '{tool}' twice",
                     entry.value("tools", index), "list each tool once")
        seen.add(tool)
