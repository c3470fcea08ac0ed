"""Amazon Bedrock's Converse API: POST /model/{modelId}/converse and /converse-stream.

Needs the ``bedrock`` extra (botocore), for SigV4 signing (``bedrock_auth``) and for
the AWS event-stream frames of ConverseStream; the registry imports this module only
when a bedrock provider is configured. The endpoint is
``https://bedrock-runtime.{region}.amazonaws.com`` (``base_url`` replaces it). The
deployment's ``model`` is a model id, an inference profile id or an ARN; it is sent
percent-encoded (``/`` as ``%2F``) except for ``:``, which aiohttp would decode before
sending anyway: the path signed must be the path sent. Requests are signed with
credentials from the standard AWS chain; a provider with an ``api_key`` sends it as a
Bedrock API key (``Authorization: Bearer``) instead.

The request is translated by ``bedrock_wire``:

    OpenAI                          Converse
    system, developer messages      ``system`` text blocks
    user, assistant messages        turns of content blocks, consecutive ones merged
    text part with cache_control    text block then a ``cachePoint`` block (images and
                                    tool results: no cache point)
    tool with cache_control         ``toolSpec`` then a ``cachePoint`` in the tools
    image_url (base64 data: URL)    ``image`` {format, source.bytes}; an http(s) URL is
                                    a 400 (Converse fetches no URLs)
    assistant tool_calls            ``toolUse`` {toolUseId, name, input}
    tool messages                   ``toolResult`` blocks, first in a user turn
    tools                           ``toolConfig.tools[].toolSpec`` (inputSchema.json;
                                    ``strict`` is not sent: Converse has none)
    tool_choice                     auto -> auto, required -> any, named -> tool; none
                                    sends no tools (a 400 when the conversation already
                                    holds tool calls: Converse then needs the tools and
                                    cannot forbid them)
    max_tokens / max_completion_... ``inferenceConfig.maxTokens``: the call's cap, sent
                                    when the client or the deployment set one
    temperature, top_p, stop        ``inferenceConfig`` temperature, topP, stopSequences;
                                    for a Claude model with stop sequences also
                                    ``additionalModelResponseFieldPaths`` (Claude's
                                    ``/delta/stop_sequence`` and ``/stop_sequence``), so
                                    the answer names the one that ended it (the
                                    /v1/messages ``stop_sequence``)
    top_k                           ``additionalModelRequestFields.top_k`` for a Claude
                                    model id; another model's is a 400 (left out when
                                    it came from /v1/messages: Anthropic's hint)
    response_format json_schema     ``outputConfig.textFormat`` (structured output: type
                                    json_schema, ``structure.jsonSchema`` {schema as a
                                    JSON string, name, description}); json_object is a
                                    400 (Converse promises JSON only against a schema)
    n > 1, seed, parallel_tool_calls: false, logprobs, penalties...
                                    400 naming the parameter (never silently dropped)
    user, store, metadata, ...      dropped: they change no answer

The answer: text blocks joined, ``toolUse`` as tool calls; stopReason end_turn and
stop_sequence -> stop, max_tokens -> length, tool_use -> tool_calls,
content_filtered and guardrail_intervened -> content_filter. ``prompt_tokens`` is
inputTokens + cacheReadInputTokens + cacheWriteInputTokens (cached_tokens the reads).
Streams map contentBlockStart (toolUse) and contentBlockDelta (text, toolUse.input)
to deltas, messageStop to the finish reason (and the matched stop sequence, from its
``additionalModelResponseFields``), and the trailing metadata to the usage.

Errors, by the ``x-amzn-errortype`` header or a stream's ``:exception-type``:
ThrottlingException and ServiceQuotaExceededException -> rate limited;
ValidationException saying the input is too long -> context length, otherwise a
bad request; AccessDeniedException, UnrecognizedClientException and signature
failures -> auth; ModelTimeoutException -> timeout; ServiceUnavailableException,
ModelNotReadyException -> overloaded; InternalServerException, ModelErrorException
and ModelStreamErrorException -> server error (all these last retryable). Messages
are scrubbed of the access key id, secret and session token. Bedrock has
embeddings only through InvokeModel: the compiler refuses ``kind: embeddings`` here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import httpx
from botocore.eventstream import EventStreamBuffer, ParserError

from aigw.compiler.graph import Provider

from ..error_pages import described
from ..errors import UpstreamError, UpstreamServerError
from ..tokens import TokenCounter
from ..upstream import (
    Upstream,
    UpstreamFailure,
    classify,
    json_event,
    make_client,
    retry_after,
    scrub,
)
from .base import (
    BlockStream,
    ChatCall,
    ChatDelta,
    ChatResult,
    Refusals,
)
from .bedrock_auth import AwsCredentials, SigV4
from .bedrock_wire import converse_body, finish_reason, matched_stop, parse_converse, usage

# The HTTP status each Bedrock error type stands for, so the shared rules classify it
# (ModelErrorException is really a 424, ServiceQuotaExceededException a 400).
ERROR_STATUS: Mapping[str, int] = MappingProxyType({
    "validationexception": 400,
    "unrecognizedclientexception": 401,
    "accessdeniedexception": 403,
    "invalidsignatureexception": 403,
    "expiredtokenexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "throttlingexception": 429,
    "servicequotaexceededexception": 429,
    "internalserverexception": 500,
    "modelerrorexception": 502,
    "modelstreamerrorexception": 502,
    "serviceunavailableexception": 503,
    "modelnotreadyexception": 503,
})
_TOO_LONG = ("too long", "context limit", "context window", "too many input tokens")


class BedrockAdapter(Refusals):
    """Chat against Bedrock's Converse API, whole or streamed; the rest refused."""

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        self.provider = provider
        self.credentials = AwsCredentials(provider.name)
        region = provider.region or "us-east-1"  # the compiler requires a region
        client = make_client(provider)
        if provider.api_key:
            self._headers = {**provider.headers, "authorization": f"Bearer {provider.api_key}"}
        else:
            self._headers = {**provider.headers}
            client.auth = SigV4(self.credentials, region)
        self.upstream = _BedrockUpstream(provider, client, self.credentials)
        default = f"https://bedrock-runtime.{region}.amazonaws.com"
        self._base = (provider.base_url or default).rstrip("/")

    def url(self, model: str, operation: str) -> str:
        return f"{self._base}/model/{quote(model, safe=':')}/{operation}"

    async def complete(self, call: ChatCall) -> ChatResult:
        url = self.url(call.deployment.model, "converse")
        document = await self.upstream.converse(url, converse_body(call), self._headers)
        return parse_converse(document, call, self.provider)

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        url = self.url(call.deployment.model, "converse-stream")
        reader = _StreamReader(self.provider)
        events = self.upstream.converse_stream(url, converse_body(call), self._headers)
        async for kind, event in events:
            for delta in reader.read(kind, event):
                yield delta
        yield reader.last(call, usage)

    async def aclose(self) -> None:
        await self.upstream.aclose()


class _StreamReader(BlockStream):
    """ConverseStream events in, chat deltas out; keeps the usage of the metadata event."""

    end = "messageStop"

    def read(self, kind: str, event: Mapping[str, Any]) -> list[ChatDelta]:
        block = int(event.get("contentBlockIndex") or 0)
        if kind == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                return self._tools.start(block, str(use.get("toolUseId", "")),
                                         str(use.get("name", "")))
        elif kind == "contentBlockDelta":
            delta = event.get("delta") or {}
            if isinstance(delta.get("text"), str) and delta["text"]:
                return [ChatDelta(content=delta["text"])]
            fragment = (delta.get("toolUse") or {}).get("input")
            return self._tools.fragment(block, fragment if isinstance(fragment, str) else "")
        elif kind == "contentBlockStop":
            return self._tools.stop(block)
        elif kind == "messageStop":
            self.stopped = True
            reason = str(event.get("stopReason") or "end_turn")
            return [ChatDelta(finish_reason=finish_reason(reason, self.provider.name),
                              stop_sequence=matched_stop(
                                  reason, event.get("additionalModelResponseFields")))]
        elif kind == "metadata" and isinstance(event.get("usage"), dict):
            self.counts = dict(event["usage"])
        return []  # messageStart, reasoning and events added later


class _BedrockUpstream(Upstream):
    """Bedrock's error shape (the type in ``x-amzn-errortype``) and its binary event stream."""

    def __init__(
        self, provider: Provider, client: httpx.AsyncClient, credentials: AwsCredentials
    ) -> None:
        super().__init__(provider, client)
        self.credentials = credentials

    async def converse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        response = await self._send(url, body, headers, stream=False)
        try:
            content = await self._read(response)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        try:
            document = json.loads(content)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise UpstreamServerError(
                f"provider '{self.provider.name}' answered with something that is not a JSON "
                "object", provider=self.provider.name)
        return document

    async def converse_stream(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """POST and yield each event as ``(event type, payload)``; an exception frame
        raises the error it names. The status is checked before the first event."""
        response = await self._send(url, body, headers, stream=True)
        frames = EventStreamBuffer()
        try:
            async for chunk in response.aiter_bytes():
                frames.add_data(chunk)
                for frame in frames:
                    yield self._event(frame.headers, frame.payload)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        except ParserError as exc:
            raise UpstreamServerError(
                f"provider '{self.provider.name}' sent a malformed event-stream frame "
                f"({type(exc).__name__})", provider=self.provider.name) from None
        finally:
            await response.aclose()

    async def _send(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str], stream: bool
    ) -> httpx.Response:
        accept = "application/vnd.amazon.eventstream" if stream else "application/json"
        request = self.client.build_request(
            "POST", url, content=json.dumps(body).encode(),
            headers={**headers, "content-type": "application/json", "accept": accept},
        )
        try:
            # Always streamed: the body is read here, bounded by max_response_mb.
            response = await self.client.send(request, stream=True)
            if response.status_code < 400:
                return response
            content = await self._read(response)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        raise self._failure(response.status_code, content, response.headers)

    def _event(self, headers: Mapping[str, Any], payload: bytes) -> tuple[str, dict[str, Any]]:
        kind = str(headers.get(":message-type", "event"))
        if kind == "exception":
            error_type = str(headers.get(":exception-type", ""))
            raise self._error(500, error_type, _message(payload), None)
        if kind == "error":
            raise self._error(500, str(headers.get(":error-code", "")),
                              str(headers.get(":error-message", "")), None)
        document = json_event(payload, self.provider) if payload else {}
        return str(headers.get(":event-type", "")), document

    def _failure(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamError:
        """``x-amzn-errortype: ThrottlingException:http://internal.amazon.com/...`` and
        ``{"message": "..."}``; some gateways put the type in the body's ``__type``."""
        error_type = headers.get("x-amzn-errortype", "")
        try:
            document = json.loads(body)
        except ValueError:  # a proxy's page, said by its title (error_pages)
            document = None
            page = described(status, body, headers.get("content-type"))
        else:
            page = None
        if not isinstance(document, dict):
            document = {}
        error_type = error_type or str(document.get("__type") or document.get("code") or "")
        message = str(document.get("message") or document.get("Message") or page
                      or body.decode("utf-8", "replace"))  # cut by classify, once scrubbed
        return self._error(status, error_type, message, retry_after(headers))

    def _error(
        self, status: int, error_type: str, message: str, wait: float | None
    ) -> UpstreamError:
        kind = error_type.split(":")[0].rsplit("#", 1)[-1].lower()
        for secret in self.credentials.secrets():
            message = message.replace(secret, "***")
        message = scrub(message, self.provider)
        status = ERROR_STATUS.get(kind, status)
        if kind == "validationexception" and any(p in message.lower() for p in _TOO_LONG):
            status = 413  # classified as a context-length failure
        return classify(UpstreamFailure(status, message, kind, wait), self.provider)


def _message(payload: bytes) -> str:
    try:
        document = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")  # cut by classify, once scrubbed
    return str(document.get("message") or document) if isinstance(document, dict) else ""
