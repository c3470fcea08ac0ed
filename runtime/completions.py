"""POST /v1/completions: OpenAI's legacy completions API in front of the serving core.

    (app: authenticate, read body) -> parse and lower (completions_wire) -> exchange.open
              -> complete | stream -> a ``text_completion`` | its chunks, ``data: [DONE]``

One design for every route, so that a group may mix providers:

- OpenAI-format deployments (``registry.COMPLETES_TEXT``: openai, openai_compatible,
  which is vLLM, Ollama, DeepSeek, xAI..., vllm, azure_openai) get the request on their
  own ``/completions``, the prompt raw (providers/openai_text.py): only there do a raw
  prompt without a chat template, ``suffix`` (fill in the middle), ``echo``, a count of
  ``logprobs`` and ``best_of`` mean what the client meant. An upstream that serves chat
  only (OpenAI's gpt-4o) refuses it, as OpenAI's own API does.
- Chat-only providers (anthropic, gemini, bedrock, vertex, echo) get the prompt as one
  user message. A request with ``suffix``, ``echo``, ``logprobs`` or ``best_of`` > 1
  is not sent to them: with none left to serve it, a 400 names the parameter.
- A prompt of token ids goes as it came to the OpenAI-format deployments, and to echo
  (``registry.COMPLETES_TOKEN_IDS``), which answers the ids written out; the chat-only
  ones are skipped for it (with none left, a 400 names ``prompt``). It counts one token
  an id; the exact cache keys on the ids, the semantic one is not asked, and a route
  with input guardrails refuses it (400 naming ``prompt``): they read text.

Everything between is chat's own pipeline (``Exchange``): key auth, Cedar, limits and
budgets, the response cache, routing and fallbacks, guardrails, billing, the ledger,
metrics and traces; the access log's ``endpoint`` is ``completions``. Errors are
OpenAI's error objects with chat's statuses, naming this API's parameters (``prompt``
where the core says ``messages``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from starlette.responses import Response

from aigw.compiler.graph import ApiKey

from . import jsonio
from .chat import Served
from .completions_wire import parse, to_chat_request
from .errors import GatewayError, params_renamed
from .exchange import Exchange
from .jsonio import JSONBody
from .providers.base import ChatDelta, ChatResult
from .sse import DONE, encoded_events, error_event, settled_stream, usage_body

__all__ = ["TextChunkEncoder", "completion_id", "create_completion", "text_completion_body"]

# The chat parameters the serving core's errors name, as a completions request names them.
_PARAMS: Mapping[str, str] = MappingProxyType({
    "messages": "prompt", "messages.0.content": "prompt", "max_completion_tokens": "max_tokens"})


async def create_completion(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    """POST /v1/completions for ``key`` (authenticated), the body read."""
    return await params_renamed(_PARAMS, _create(exchange, key, body))


async def _create(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    live, record = exchange.live, exchange.record
    request = to_chat_request(parse(body))
    await exchange.open(key, request)
    if not request.stream:
        served, answer = await exchange.complete_as(text_completion_body)
        return JSONBody(answer, headers=exchange.answer_headers(served))
    served, deltas = await exchange.stream()
    encoder = TextChunkEncoder(served, request.include_usage)
    headers = exchange.answer_headers(served)
    return await settled_stream(encoded_events(encoder, deltas, live, record), headers)


def completion_id(served: Served) -> str:
    """``cmpl-`` and the hex of the gateway's request id, so logs and answers correlate."""
    return "cmpl-" + served.request_id.removeprefix("chatcmpl-")


def text_completion_body(served: Served, result: ChatResult) -> dict[str, object]:
    """A ``text_completion`` object; ``model`` is the model that answered, as chat's is."""
    return {
        "id": completion_id(served),
        "object": "text_completion",
        "created": served.created,
        "model": result.model,
        "choices": [
            {"text": choice.content or "", "index": choice.index, "logprobs": choice.logprobs,
             "finish_reason": choice.finish_reason}
            for choice in result.choices
        ],
        "usage": usage_body(result.usage),
        "system_fingerprint": None,
    }


class TextChunkEncoder:
    """Adapter deltas as ``text_completion`` chunks, as OpenAI streams them: each a choice's
    text (and its logprobs), the finish reason in the chunk that ends the choice; with
    ``include_usage`` every chunk carries ``"usage": null`` and a last chunk with no
    choices the usage; then ``data: [DONE]``. A failure after the status line is an
    error object in the stream, as chat's is."""

    def __init__(self, served: Served, include_usage: bool) -> None:
        self._head = {"id": completion_id(served), "object": "text_completion",
                      "created": served.created, "model": served.deployment.model,
                      "system_fingerprint": None}
        self._include_usage = include_usage

    def start(self) -> bytes:
        return b""

    def encode(self, delta: ChatDelta) -> bytes:
        if delta.usage is not None:
            return self._chunk([], usage_body(delta.usage)) if self._include_usage else b""
        if not (delta.content or delta.finish_reason or delta.logprobs is not None):
            return b""
        return self._chunk([{"text": delta.content or "", "index": delta.index,
                             "logprobs": delta.logprobs, "finish_reason": delta.finish_reason}])

    def finish(self) -> bytes:
        return DONE

    def failed(self, error: GatewayError) -> bytes:
        return error_event(error.body())

    def _chunk(self, choices: list[dict[str, object]],
               usage: dict[str, object] | None = None) -> bytes:
        chunk: dict[str, object] = {**self._head, "choices": choices}
        if self._include_usage:
            chunk["usage"] = usage
        return b"data: " + jsonio.dumps(chunk) + b"\n\n"
