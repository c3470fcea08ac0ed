"""Anthropic's Messages API (POST /v1/messages, ``anthropic-version: 2023-06-01``).

The request is translated by ``anthropic_wire``; what cannot be honoured is refused
with a 400 naming the parameter, never dropped, when it would change the answer:

    OpenAI                          Anthropic
    system, developer messages      ``system`` text blocks (``cache_control`` kept)
    user, assistant messages        turns, consecutive ones of a role merged
    image_url (data: / http(s))     ``image`` with a base64 / url source
    assistant tool_calls            ``tool_use`` blocks, arguments parsed into ``input``
    tool messages                   ``tool_result`` blocks, first in a user turn
    a part's or tool's              the block's or tool's ``cache_control`` (a tool
      ``cache_control``             message's marked part marks its ``tool_result``)
    tools / tool_choice             {name, description, input_schema, strict} /
                                    auto, none, required -> any, named -> tool
    parallel_tool_calls: false      tool_choice.disable_parallel_tool_use
    max_tokens, max_completion_...  ``max_tokens`` (always sent: the call's output cap)
    temperature, top_p, top_k       the same (temperature above 1: 400, Anthropic's is 0-1)
    stop                            ``stop_sequences``
    user                            ``metadata.user_id``
    response_format json_schema     ``output_config.format`` (structured outputs; give
                                    the deployment the json_schema capability only for
                                    models that have them)
    response_format json_object     400: Anthropic promises JSON only against a schema
    n > 1, seed                     400: one choice per call, no seeded sampling
    frequency/presence_penalty,     400 unless neutral (0, {}, false, ["text"]): a
    logit_bias, logprobs, audio,    client asking for them would silently get
    modalities, reasoning_effort... something else
    store, metadata, service_tier,  dropped: they concern OpenAI's dashboards, caching,
    prediction, prompt_cache_key,   abuse checks or latency, not the answer (Anthropic
    safety_identifier, a message's  has no names); Bedrock and Gemini drop them too
    name
    anything else                   400 "Unrecognized request argument"

The answer: text blocks joined, ``tool_use`` as tool calls, stop reasons end_turn,
stop_sequence, pause_turn -> stop, max_tokens -> length, tool_use -> tool_calls,
refusal -> content_filter (the stop sequence matched is kept, for /v1/messages);
``prompt_tokens`` counts input, cache reads and cache writes, as OpenAI counts every
prompt token. Streams map ``content_block_*`` events to deltas (a tool call's index is
its place among the ``tool_use`` blocks) and an ``error`` event to the ``UpstreamError``
its type means (``overloaded_error`` -> ``UpstreamOverloaded``). Anthropic has no
embeddings API: the compiler refuses ``kind: embeddings`` on an anthropic provider
(AGW321) and the adapter refuses it too (``Refusals``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from aigw.compiler.graph import Provider

from ..errors import UpstreamError
from ..tokens import TokenCounter
from ..upstream import UpstreamFailure, classify, json_event
from ..upstream_aiohttp import JsonUpstream, open_upstream
from .anthropic_wire import (
    ERROR_STATUS,
    STOP_REASONS,
    matched_stop,
    messages_body,
    parse_message,
    usage,
)
from .base import (
    BlockStream,
    ChatCall,
    ChatDelta,
    ChatResult,
    Refusals,
    ToldSoFar,
)
from .raw import RawTarget, api_root

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter(Refusals):
    """Chat against Anthropic's Messages API, whole or streamed; the rest refused."""

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        self.provider = provider
        self.upstream: JsonUpstream = open_upstream(provider)
        base = (provider.base_url or ANTHROPIC_BASE_URL).rstrip("/")
        # The root is what Anthropic documents; a root given with OpenAI's habit of /v1 works too.
        self._root = base.removesuffix('/v1')
        self._url = f"{self._root}/v1/messages"
        self._headers = {
            **provider.headers,
            "anthropic-version": provider.api_version or ANTHROPIC_VERSION,
        }
        if provider.api_key:
            self._headers["x-api-key"] = provider.api_key

    async def complete(self, call: ChatCall) -> ChatResult:
        document, upstream_id = await self.upstream.post_json_identified(
            self._url, messages_body(call, stream=False), self._headers
        )
        return parse_message(document, call, self.provider, upstream_id)

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        reader = _StreamReader(self.provider, call.told)
        body = messages_body(call, stream=True)
        # Read on to the end after message_stop, so that post_sse closes the response itself.
        noted: list[str] = []  # the provider's id of the call, given on the first delta
        async for name, data in self.upstream.post_sse(self._url, body, self._headers, noted):
            if name == "ping" or reader.stopped:
                continue
            for delta in reader.read(json_event(data, self.provider)):
                if noted:
                    delta = replace(delta, upstream_request_id=noted.pop())
                yield delta
        yield reader.last(call, usage)

    def raw_target(self) -> RawTarget:
        """The pass-through seam (providers/raw.py): ``x-api-key`` and ``anthropic-version``."""
        return RawTarget(api_root(self._root), self._headers)

    async def aclose(self) -> None:
        await self.upstream.aclose()


class _StreamReader(BlockStream):
    """Anthropic's stream events in, chat deltas out; keeps the running usage counts."""

    end = "message_stop"

    def __init__(self, provider: Provider, told: ToldSoFar) -> None:
        super().__init__(provider)
        self.told = told

    def read(self, event: Mapping[str, Any]) -> list[ChatDelta]:
        kind = event.get("type")
        if kind == "message_start":
            self._count((event.get("message") or {}).get("usage"))
        elif kind == "content_block_start":
            return self._block_start(int(event.get("index", 0)), event.get("content_block") or {})
        elif kind == "content_block_delta":
            return self._block_delta(int(event.get("index", 0)), event.get("delta") or {})
        elif kind == "content_block_stop":
            return self._tools.stop(int(event.get("index", 0)))
        elif kind == "message_delta":
            self._count(event.get("usage"))
            delta = event.get("delta") or {}
            stop_reason = delta.get("stop_reason")
            if stop_reason:
                return [ChatDelta(finish_reason=STOP_REASONS.get(stop_reason, "stop"),
                                  stop_sequence=matched_stop(stop_reason,
                                                             delta.get("stop_sequence")))]
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            raise stream_error(event, self.provider)
        return []  # ping, and event types added after this adapter was written

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[ChatDelta]:
        if block.get("type") == "tool_use":
            return self._tools.start(index, str(block.get("id", "")), str(block.get("name", "")))
        if block.get("type") == "text" and block.get("text"):
            return [ChatDelta(content=str(block["text"]))]
        return []  # thinking and server-tool blocks are not part of an OpenAI answer

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> list[ChatDelta]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [ChatDelta(content=str(delta["text"]))]
        if delta.get("type") == "input_json_delta":
            return self._tools.fragment(index, str(delta.get("partial_json") or ""))
        return []

    def _count(self, counts: object) -> None:
        """Counts in ``message_delta`` are cumulative, so the largest of each wins (as a
        pass-through reads them, passthrough_usage.py): Anthropic-compatible servers
        (sglang, some relays) send it ``input_tokens: 0``, which the latest value let
        stand, billing the prompt nothing."""
        if isinstance(counts, dict):
            for name, value in counts.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    self.counts[name] = max(value, self.counts.get(name, value))
            # What a cut stream is billed (message_start's input and cache counts).
            self.told.usage = usage(self.counts)


def stream_error(event: Mapping[str, Any], provider: Provider) -> UpstreamError:
    """An ``error`` event, classified as the HTTP error of the same type would be."""
    error = event.get("error")
    error = error if isinstance(error, dict) else {}
    kind = str(error.get("type") or "api_error")
    message = str(error.get("message") or kind)
    failure = UpstreamFailure(ERROR_STATUS.get(kind, 500), message, kind, None)
    return classify(failure, provider)
