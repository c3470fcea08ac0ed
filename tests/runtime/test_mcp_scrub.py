"""What an MCP server's failure says to the caller: never a credential from its config."""

from __future__ import annotations

import httpx

from aigw.compiler.graph import McpServer
from aigw.runtime.mcp_events import unreachable


def test_a_token_in_the_servers_url_is_cut_out_as_its_client_quotes_it() -> None:
    # httpx drops a default port and lower-cases the host: an error that quotes the URL
    # it could not reach does not quote it as the config wrote it.
    token = "mcp-query-token-5e2a"
    server = McpServer("docs", f"http://Docs.internal:80/mcp?token={token}", 5.0, None,
                       None, {})
    quoted = str(httpx.URL(server.url))
    assert quoted != server.url
    failed = unreachable(server, httpx.ConnectError(f"Cannot connect to {quoted}"))
    assert token not in str(failed)
    assert "MCP server 'docs' is unreachable" in str(failed)
