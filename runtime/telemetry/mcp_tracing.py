"""MCP messages' spans at /mcp/<server>, following OpenTelemetry's semantic conventions for
the Model Context Protocol (https://opentelemetry.io/docs/specs/semconv/gen-ai/mcp/, in
open-telemetry/semantic-conventions-genai docs/gen-ai/mcp.md; status: development).

    tools/call add           SERVER: the gateway answering one JSON-RPC message;
                             parented by the client's ``params._meta.traceparent``
                             (the convention's carrier, SEP-414), else its HTTP
                             ``traceparent`` header (linked when both are there)
    └── tools/call add       CLIENT: the message sent to the server; its traceparent
                             goes in the message's ``params._meta`` (every transport)
                             and, over HTTP, in the request's header too

Both are named ``{mcp.method.name} {target}``, the target a tool (``gen_ai.tool.name``)
or prompt (``gen_ai.prompt.name``) only where the metrics would label it (a name the
client made up is not a span name: unbounded names swamp a tracing backend); a method
outside MCP's own is ``_OTHER``. A GET (the server's stream) and a DELETE (a session's
end) are not JSON-RPC messages: they are HTTP spans, ``GET /mcp/{server}``, as is a POST
refused before its message was read. A failure sets ``error.type`` to the JSON-RPC
error code the client was answered with (``rpc.response.status_code`` too; a tool's
own ``isError`` is ``tool_error``), with the gateway's error code as ``aigw.error`` and,
for a Cedar denial, the deciding ``aigw.policy_ids``; the CLIENT span's ``error.type`` is
the upstream failure's class (``mcp_server_timeout``, ``mcp_server_failed``, ...).

A request of the server's to the client (roots/list, sampling/createMessage,
elicitation/create, ping), passed on down a stream, is two spans as the conventions have
a server-initiated request: the gateway taking it from the server (SERVER, under the
request's ``params._meta.traceparent``, else the call upstream whose stream carried it)
and asking the client (CLIENT, its child). The client's answer comes in a POST of its
own: it ends the CLIENT span (an error response an error there and on the SERVER span),
and its delivery to the server the SERVER span. ``Asked`` keeps them in between; an
answer to a request the gateway did not pass on (another replica did, or it was long
ago) is an HTTP span, ``POST /mcp/{server}``.

Nothing here runs with tracing off: a message has no ``McpTrace`` (``McpCall.trace`` is
None), and that one lookup is all the proxy does.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..jsonio import dumps, loads
from .mcp import METHODS
from .record import UNKNOWN
from .tracing import NO_SPAN, Span, Tracing

if TYPE_CHECKING:
    from .mcp import McpCall

# Notifications (both ways) and the server's requests of the client, as named in MCP
# 2025-11-25: with METHODS, the method names a span may carry.
NOTIFICATIONS = frozenset({
    "notifications/cancelled", "notifications/initialized", "notifications/message",
    "notifications/progress", "notifications/prompts/list_changed",
    "notifications/resources/list_changed", "notifications/resources/updated",
    "notifications/roots/list_changed", "notifications/tools/list_changed",
    "notifications/elicitation/complete", "notifications/tasks/status",
    "sampling/createMessage", "roots/list", "elicitation/create",
})
OTHER = "_OTHER"  # the conventions' name for a value outside the known ones
# The W3C Trace Context and Baggage keys SEP-414 reserves, unprefixed, in params._meta.
CARRIED = ("traceparent", "tracestate", "baggage")
_SESSION = "mcp-session-id"
_PROTOCOL = "mcp-protocol-version"
_POLICY_IDS = "x-aigw-policy-ids"
_ROUTE = "/mcp/{server}"
# The requests of servers' whose answers are awaited, kept with their spans: past it the
# oldest's are dropped unexported (a client that never answers holds nothing for ever).
_ASKED = 1024
# Where a request of a server's was asked: the server's name, its own session id ("" for
# a server without sessions) and the caller's key; with the request's id (as JSON), a key.
Where = tuple[str, str, str]


def method_name(method: str) -> str:
    """``method`` as ``mcp.method.name``: itself when MCP defines it, else ``_OTHER``.

    >>> method_name("tools/call"), method_name("x/made-up")
    ('tools/call', '_OTHER')
    """
    return method if method in METHODS or method in NOTIFICATIONS else OTHER


@dataclass(slots=True)
class McpTrace:
    """One message's spans: the gateway's answer (``span``) and its call upstream
    (``upstream``, once sent), and what names them."""

    span: Span
    context: Any  # the answer's, which the call upstream is started in
    tracing: Tracing
    method: str  # mcp.method.name, or a GET's or DELETE's HTTP span name
    server: str  # the MCP server's name
    tool: str = ""  # a tools/call's, a prompts/get's prompt: what the client named
    upstream: Span = NO_SPAN
    prompt_answered: bool = False  # a prompts/get the server answered: its name is shown
    answering: bool = False  # a client's response to a server's request: no call of its own
    called: Any = None  # the call upstream's context: what the server asks during it is under it
    transport: str = "tcp"  # the call upstream's network.transport
    asked: Asked | None = None  # where the requests of the server's its stream passes go
    where: Where = ("", "", "")
    shown: str | None = None  # the session id the client knows

    def asks(self, asked: Asked, where: Where, shown: str | None) -> None:
        """The requests of the server's that this message's stream passes on are kept in
        ``asked``, asked ``where``, in the session the client knows as ``shown``."""
        self.asked, self.where, self.shown = asked, where, shown

    def calling(self, transport: str, headers: dict[str, str]) -> None:
        """Start the call upstream's span (``transport``: ``network.transport``, tcp or
        pipe) for a GET or DELETE, its trace context put in ``headers``."""
        name = self.method.split(" ", 1)[0]
        self._start(name, transport, headers).set("http.request.method", name)

    def sending(self, transport: str, message: Mapping[str, Any],
                headers: dict[str, str]) -> Mapping[str, Any]:
        """Start the call upstream's span for ``message``, its trace context put in
        ``headers`` and, for a request or notification, in the message's
        ``params._meta`` (the conventions' carrier, which a stdio server has alone):
        the message to send. A client's response is no call of its own: its server
        is sent the trace context of the request it answers (the SERVER span's)."""
        if self.answering:
            _inject(headers, self.context)
            return message
        _describe(self._start(self.method, transport, headers), message, self.method,
                  self.tool)
        if "method" not in message:
            return message
        params = message.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            return message  # not MCP's: its params are an object
        carrier = {key: headers[key] for key in CARRIED if key in headers}
        meta = params.get("_meta")
        meta = {**meta, **carrier} if isinstance(meta, dict) else carrier
        return {**message, "params": {**params, "_meta": meta}}

    def _start(self, name: str, transport: str, headers: dict[str, str]) -> Span:
        self.upstream, context = self.tracing.start(name, self.context, server=False)
        self.called, self.transport = context, transport
        _inject(headers, context)
        upstream = self.upstream
        upstream.set("network.transport", transport)
        upstream.set("mcp.session.id", headers.get(_SESSION))
        upstream.set("mcp.protocol.version", headers.get(_PROTOCOL))
        upstream.set("aigw.mcp.server", self.server)
        return upstream

    def answered_with(self, headers: Mapping[str, str], shown: Mapping[str, str]) -> None:
        """The server's answer's headers: an initialize learns its session there (the
        server's own id upstream, the sealed one the client is shown on the answer's).
        A client's response has its spans' ids from the request it answers."""
        if self.answering:
            return
        if (session := headers.get(_SESSION)) is not None:
            self.upstream.set("mcp.session.id", session)
            self.span.set("mcp.session.id", shown.get(_SESSION))
        if (version := headers.get(_PROTOCOL)) is not None:
            self.upstream.set("mcp.protocol.version", version)

    def answered(self, answer: Any) -> None:
        """The JSON-RPC response the client is sent: an error's code, a tool's own
        failure (``isError``), a prompt the server has."""
        if not isinstance(answer, dict):
            return
        error = answer.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            text = error.get("message")
            described = text[:500] if isinstance(text, str) else None
            for span in (self.upstream, self.span):
                _rpc_error(span, code if isinstance(code, int) else OTHER, described)
            return
        result = answer.get("result")
        if not isinstance(result, dict):
            return
        if result.get("isError") is True:  # the conventions' tool_error
            for span in (self.upstream, self.span):
                span.error("tool_error")
        elif self.method == "prompts/get":
            self.prompt_answered = True
        if self.method == "initialize" and isinstance(result.get("protocolVersion"), str):
            self.span.set("mcp.protocol.version", result["protocolVersion"])

    def event(self, event: bytes, rpc_id: object) -> None:
        """One SSE event passed on: the response among them is ``answered``, a request
        of the server's is ``asking``."""
        message = _message_of(event)
        if not isinstance(message, dict):
            return
        if "method" in message:
            self.asking(message)
        elif message.get("id") == rpc_id:
            self.answered(message)

    def passed(self, event: bytes) -> None:
        """One event of the server's GET stream passed on: a request of the server's
        among them is ``asking``."""
        message = _message_of(event)
        if isinstance(message, dict) and "method" in message:
            self.asking(message)

    def asking(self, message: Mapping[str, Any]) -> None:
        """``message``, when a request of the server's (not a notification), is passed on
        to the client: its spans begin, kept in ``asked`` for the client's answer."""
        rpc_id, method = message.get("id"), message.get("method")
        if (self.asked is None or not isinstance(rpc_id, str | int)
                or isinstance(rpc_id, bool) or not isinstance(method, str)):
            return
        name = method_name(method)
        parent = _carried(message.get("params"))
        if parent is None:
            parent = self.called if self.called is not None else self.context
        taken, context = self.tracing.start(name, parent, server=True)
        asking, _ = self.tracing.start(name, context, server=False)
        for span, transport, session in ((taken, self.transport, self.where[1] or None),
                                         (asking, "tcp", self.shown)):
            _describe(span, message, name, "")
            span.set("network.transport", transport)
            span.set("mcp.session.id", session)
            span.set("aigw.mcp.server", self.server)
        self.asked.add((*self.where, dumps(rpc_id).decode()), _Asking(taken, context, asking, name))

    def failed(self, rpc_code: int, code: str | None, message: str,
               headers: Mapping[str, str]) -> None:
        """The gateway answered with a JSON-RPC error (``rpc_code``) for its own reason
        (``code``, its error's; ``headers``, its answer's): a failure of the call
        upstream, when one was made (the upstream span: the failure's class)."""
        self.upstream.error(code or OTHER, message[:500])
        _rpc_error(self.span, rpc_code, message[:500])
        self.span.set("aigw.error", code)
        if (policies := headers.get(_POLICY_IDS)) is not None:
            self.span.set("aigw.policy_ids", policies.split(","))

    def end(self, call: McpCall) -> None:
        """End both spans (the call upstream's first), named as the call has it now."""
        span = self.span
        target = call.tool or (self.tool if self.prompt_answered else "")
        if target:
            name = f"{self.method} {target}"
            span.rename(name)
            self.upstream.rename(name)
        span.set("aigw.mcp.server", call.server if call.server != UNKNOWN else None)
        span.set("aigw.key", call.key)
        span.set("aigw.team", call.team)
        span.set("http.response.status_code", call.status)
        self.upstream.end()
        span.end()


def traced_message(tracing: Tracing, call: McpCall, headers: Mapping[str, str],
                   message: Mapping[str, Any], graph: str) -> McpTrace | None:
    """The spans of ``message`` (a request or notification; None for a response, which
    answers the server's request and is no operation of its own), its SERVER span begun
    when ``call`` was."""
    method = message.get("method")
    if not isinstance(method, str):
        return None
    name = method_name(method)
    params = message.get("params")
    parent = ambient = _extract(headers)
    carried = _carried(params)
    if carried is not None:  # else the header's: one is not valid
        parent = carried
    span, context = tracing.start(name, parent, server=True, started_ns=_begun(call))
    if parent is not ambient:
        span.link(ambient)  # the HTTP request's own context, as the conventions link it
    tool = ""
    target = params.get("name") if isinstance(params, dict) else None
    if name in ("tools/call", "prompts/get") and isinstance(target, str):
        tool = target[:200]
    _describe(span, message, name, tool)
    span.set("network.transport", "tcp")
    span.set("mcp.session.id", headers.get(_SESSION))
    span.set("mcp.protocol.version", headers.get(_PROTOCOL))
    span.set("aigw.graph", graph)
    return McpTrace(span, context, tracing, name, call.server, tool)


def traced_answer(tracing: Tracing, call: McpCall, headers: Mapping[str, str],
                  message: Mapping[str, Any], graph: str, asked: Asked,
                  where: Where) -> McpTrace:
    """The spans of ``message``, a client's response to a request of the server's: the
    SERVER span of the request it answers, asked ``where``, its CLIENT span ended now (an
    error response an error on both); else (a request the gateway did not pass on) an
    HTTP span. Neither makes a call upstream of its own."""
    rpc_id = message.get("id")
    found = None
    if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool):
        found = asked.pop((*where, dumps(rpc_id).decode()))
    if found is None:
        trace = traced_http(tracing, call, "POST", headers, graph)
        trace.answering = True
        return trace
    trace = McpTrace(found.taken, found.context, tracing, found.method, call.server,
                     upstream=found.asking, answering=True)
    found.asking.link(_extract(headers))  # the POST that carried the answer
    trace.answered(message)
    found.asking.end()
    trace.upstream = NO_SPAN  # ended: the answer came
    found.taken.set("aigw.graph", graph)
    return trace


def traced_http(tracing: Tracing, call: McpCall, http_method: str,
                headers: Mapping[str, str], graph: str) -> McpTrace:
    """The span of a GET or DELETE of /mcp/<server>, or of a POST refused before its
    message was read: HTTP's, named ``{method} {http.route}``, begun when ``call`` was."""
    name = f"{http_method} {_ROUTE}"
    span, context = tracing.start(name, _extract(headers), server=True,
                                  started_ns=_begun(call))
    span.set("http.request.method", http_method)
    span.set("http.route", _ROUTE)
    span.set("network.transport", "tcp")
    span.set("mcp.session.id", headers.get(_SESSION))
    span.set("aigw.graph", graph)
    return McpTrace(span, context, tracing, name, call.server)


def _describe(span: Span, message: Mapping[str, Any], name: str, tool: str) -> None:
    span.set("mcp.method.name", name)
    rpc_id = message.get("id")
    if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool):
        span.set("jsonrpc.request.id", str(rpc_id))
    if name == "tools/call":
        span.set("gen_ai.operation.name", "execute_tool")
        span.set("gen_ai.tool.name", tool or None)
    elif name == "prompts/get":
        span.set("gen_ai.prompt.name", tool or None)
    if name == "initialize":
        params = message.get("params")
        version = params.get("protocolVersion") if isinstance(params, dict) else None
        if isinstance(version, str):
            span.set("mcp.protocol.version", version[:50])


def _rpc_error(span: Span, code: int | str, message: str | None) -> None:
    """The conventions' error: ``error.type`` and ``rpc.response.status_code`` the JSON-RPC
    error's code, the status described by its message."""
    span.error(str(code), message)
    span.set("rpc.response.status_code", str(code))


def _begun(call: McpCall) -> int:
    """When ``call`` began, in epoch nanoseconds (it keeps a perf_counter reading)."""
    return time.time_ns() - int((time.perf_counter() - call.started) * 1e9)


def _extract(carrier: Mapping[str, str]) -> Any:
    from opentelemetry.propagate import extract

    return extract(dict(carrier))


def _has_span(context: Any) -> bool:
    from opentelemetry import trace

    return bool(trace.get_current_span(context).get_span_context().is_valid)


def _inject(carrier: dict[str, str], context: Any) -> None:
    from opentelemetry.propagate import inject

    inject(carrier, context=context)


@dataclass(slots=True)
class _Asking:
    """A request of a server's passed on to its client: the gateway taking it (``taken``,
    SERVER; ``context``, its) and asking the client (``asking``, CLIENT), ``method``'s."""

    taken: Span
    context: Any
    asking: Span
    method: str


class Asked:
    """The requests servers asked their clients that the gateway passed on, by where they
    were asked and their id, until the client's answer comes (``traced_answer``): the
    newest ``_ASKED``, an older one's spans dropped unexported (its answer never came, or
    went to another replica)."""

    def __init__(self) -> None:
        self._asked: OrderedDict[tuple[str, ...], _Asking] = OrderedDict()

    def add(self, key: tuple[str, ...], asking: _Asking) -> None:
        if (replaced := self._asked.pop(key, None)) is not None:  # its id used again
            _dropped(replaced)
        self._asked[key] = asking
        while len(self._asked) > _ASKED:
            _dropped(self._asked.popitem(last=False)[1])

    def pop(self, key: tuple[str, ...]) -> _Asking | None:
        return self._asked.pop(key, None)


def _dropped(asking: _Asking) -> None:
    asking.taken.discard()
    asking.asking.discard()


def _message_of(event: bytes) -> Any:
    """The JSON-RPC message an SSE event carries, None for an event without one."""
    data = [line[5:].removeprefix(" ") for line in event.decode("utf-8", "replace")
            .splitlines() if line.startswith("data:")]
    if not data:
        return None
    try:
        return loads("\n".join(data))
    except ValueError:
        return None


def _carried(params: Any) -> Any:
    """The trace context a message's ``params._meta`` carries (SEP-414), None when it
    carries none that is valid."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("traceparent"), str):
        return None
    carried = _extract({key: value for key in CARRIED
                        if isinstance(value := meta.get(key), str)})
    return carried if _has_span(carried) else None
