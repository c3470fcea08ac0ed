"""Google's Gemini API (generativelanguage v1beta): chat, streaming and embeddings.

Calls ``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` and
``:batchEmbedContents`` with the key in ``x-goog-api-key``. The request side lives in
``gemini_wire``; this module reads Gemini's answers back into OpenAI's shapes.

OpenAI -> Gemini
    system, developer       ``systemInstruction`` parts, in order, wherever they stand
                            (text only: an image there is a BadRequest)
    user / tool / assistant turns ``user`` / ``user`` / ``model``; consecutive turns of
                            one role merged into one (Gemini wants them alternating).
                            No turn at all (system messages alone) is sent as a user
                            turn ".", and a lone ``model`` turn with one before and
                            after it (Gemini refuses a single turn that is the model's)
    content parts           text; image_url and file as ``inlineData`` from a base64
                            ``data:`` URL; input_audio (wav, mp3) as ``inlineData``.
                            An http(s) image URL is a BadRequest: Gemini's ``fileData``
                            takes only Files-API URIs, and the gateway does not fetch.
    assistant tool_calls    ``functionCall`` parts, arguments parsed (must be an object)
    tool messages           ``functionResponse``; the name comes from the assistant
                            tool call with that id; a JSON object result is sent as is,
                            anything else as ``{"result": ...}``. Ids are not sent.
    tools                   ``tools: [{functionDeclarations}]``; parameters lowered to
                            Gemini's Schema: local ``$ref`` inlined (recursion is a
                            BadRequest), ``["t", "null"]`` and an ``anyOf`` null branch
                            become ``nullable``, ``oneOf`` becomes ``anyOf``, a string
                            ``const`` an ``enum``; dropped: ``$schema``, ``$id``,
                            ``$defs``/``definitions``, ``additionalProperties``,
                            ``patternProperties``, ``allOf``, ``not``, ``examples``,
                            ``exclusiveMinimum``/``Maximum``, ``multipleOf``,
                            ``uniqueItems``, ``strict``, non-string enums, formats other
                            than enum/date-time/float/double/int32/int64, empty
                            ``properties`` (and parameters with none).
    tool_choice             auto/required/none -> AUTO/ANY/NONE; a named function ->
                            ANY with ``allowedFunctionNames``; auto on a request of
                            Gemini's ingress in mode VALIDATED -> VALIDATED
                            (``ChatRequest.validated_calls``)
    temperature, top_p, top_k, seed, presence_penalty, frequency_penalty, stop, n
                            ``generationConfig`` temperature, topP, topK, seed,
                            presencePenalty, frequencyPenalty, stopSequences,
                            candidateCount
    max_(completion_)tokens ``maxOutputTokens`` (the planner's cap), only when asked
    response_format         json_object -> responseMimeType application/json;
                            json_schema -> that and ``responseJsonSchema`` (full JSON
                            Schema, not lowered)
    reasoning_effort        ``thinkingConfig.thinkingBudget`` as Google's own OpenAI
                            layer maps it: none 0, minimal/low 1024, medium 8192,
                            high 24576
    user, metadata, store, service_tier, prompt_cache_key, safety_identifier
                            accepted and ignored: they change no answer
    BadRequest naming it    logit_bias, logprobs / top_logprobs (no logprobs in our
                            result shape), parallel_tool_calls false (Gemini cannot
                            forbid parallel calls), modalities other than ["text"],
                            audio, prediction, web_search_options and any other
                            unknown parameter

Gemini -> OpenAI
    text parts joined (``thought`` parts skipped); ``functionCall`` parts become
    tool_calls with ids ``call_<n>``, numbered on from the tool calls already in the
    conversation, so ids are deterministic and unique within it. A call that carries
    a ``thoughtSignature`` (Gemini 3 requires it back) gets id ``call_<n>.<signature>``
    and the signature is restored when the call comes back; such ids are long, and an
    OpenAI deployment in the same fallback chain would refuse them.
    finishReason STOP -> stop (tool_calls when a function was called), MAX_TOKENS ->
    length, SAFETY/RECITATION/BLOCKLIST/PROHIBITED_CONTENT/SPII/IMAGE_SAFETY ->
    content_filter, others -> stop. MALFORMED_FUNCTION_CALL on every candidate (in a
    stream: on any) is a 502, retryable: another attempt may well succeed.
    A prompt refused outright (``promptFeedback.blockReason``, no candidates) raises
    UpstreamContentPolicy: HTTP 400 content_policy_violation naming the reason; a
    streamed one does so before the first byte.
    usage: promptTokenCount (+ toolUsePromptTokenCount), candidatesTokenCount +
    thoughtsTokenCount (thinking is billed as output), cachedContentTokenCount.
    Streams: each event is a GenerateContentResponse; a function call arrives whole,
    so it becomes one tool-call delta with id, name and all its arguments.

Errors: Google's ``{"error": {"code", "message", "status"}}`` is classified by the
shared rules, which also read ``RetryInfo.retryDelay`` in its details as Retry-After; a 400
API_KEY_INVALID is an auth failure, like 401/403.
Embeddings: ``batchEmbedContents`` in batches of 100, ``outputDimensionality`` from
``dimensions``; Gemini reports no token count, so the gateway's count is used. It takes
text only: token-id input is never routed to it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from aigw.compiler.graph import Provider

from ..errors import (
    BadRequest,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamContentPolicy,
    UpstreamError,
    UpstreamServerError,
)
from ..tokens import TokenCounter
from ..upstream import Upstream, UpstreamFailure, classify, json_event, make_client
from .base import (
    ChatCall,
    ChatDelta,
    ChatResult,
    Choice,
    EmbeddingCall,
    EmbeddingResult,
    Refusals,
    ToolCall,
    ToolCallDelta,
    Usage,
    embedding_vector,
    stream_cut,
    unreported_usage,
)
from .gemini_wire import SIGNATURE_MARK, build_request
from .raw import RawTarget, api_root

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
EMBED_BATCH = 100  # batchEmbedContents takes at most 100 requests
FINISH_REASONS = MappingProxyType({
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
    "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter", "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter", "LANGUAGE": "content_filter",
})
# A candidate that ended in a call the model botched (or made with no tools, or too
# many): nothing a client can use, and a retry or another member may well do better.
MALFORMED_REASONS = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL",
                               "TOO_MANY_TOOL_CALLS"})


class GeminiAdapter(Refusals):
    """Chat and embeddings against the Gemini API; the rest refused."""

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        self.provider = provider
        client = make_client(provider)
        self.upstream = Upstream(provider, client)
        self._base = (provider.base_url or GEMINI_BASE_URL).rstrip("/")
        self._headers = {**provider.headers}
        if provider.api_key:
            self._headers["x-goog-api-key"] = provider.api_key

    def url(self, model: str, method: str) -> str:
        return f"{self._base}/{model_path(model)}:{method}"

    async def complete(self, call: ChatCall) -> ChatResult:
        url = self.url(call.deployment.model, "generateContent")
        with _key_refusals():
            document = await self.upstream.post_json(url, build_request(call), self._headers)
        return parse_response(document, call, self.provider)

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        url = self.url(call.deployment.model, "streamGenerateContent") + "?alt=sse"
        first = _first_call_number(call)
        called: dict[int, int] = {}  # candidate index -> function calls so far
        usage: Usage | None = None
        # The candidates the stream began and those that had their finishReason: a stream
        # that stops short of one for each was cut (one's finish is not another's).
        begun: set[int] = set()
        ended: set[int] = set()
        events = self.upstream.post_sse(url, build_request(call), self._headers)
        with _key_refusals():
            async for _event, data in events:
                chunk = json_event(data, self.provider)
                _raise_for_error(chunk, self.provider)
                for delta in _chunk_deltas(chunk, first, called, self.provider):
                    begun.add(delta.index)
                    if delta.finish_reason is not None:
                        ended.add(delta.index)
                    yield delta
                if chunk.get("usageMetadata"):  # cumulative: a cut stream is billed the last
                    usage = call.told.usage = _usage(chunk["usageMetadata"], call)
        if not ended or ended != begun:
            raise stream_cut(self.provider, "its end (no finishReason)")
        yield ChatDelta(usage=usage or unreported_usage(call))

    async def count_tokens(self, call: ChatCall) -> int | None:
        """``countTokens`` of the prompt as it would be sent (contents, system
        instruction, tools): Gemini's own count for the model, which its tokenizer
        makes exact where the gateway's is an estimate."""
        sent = build_request(call)
        prompt: dict[str, Any] = {name: sent[name] for name in
                                  ("contents", "systemInstruction", "tools") if name in sent}
        with _key_refusals():
            document = await self.upstream.post_json(
                self.url(call.deployment.model, "countTokens"),
                self.count_body(call.deployment.model, prompt), self._headers)
        total = document.get("totalTokens")
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise UpstreamServerError(f"provider '{self.provider.name}' answered countTokens "
                                      "without a totalTokens count",
                                      provider=self.provider.name)
        return total

    def count_body(self, model: str, prompt: dict[str, Any]) -> dict[str, Any]:
        """Gemini's API counts a prompt with a system instruction or tools only as a
        whole ``generateContentRequest``, which names its model."""
        return {"generateContentRequest": {"model": model_path(model), **prompt}}

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        texts = [item for item in call.inputs if isinstance(item, str)]
        if len(texts) != len(call.inputs):  # routing sends none (registry.EMBEDS_TOKEN_IDS)
            raise BadRequest(f"Deployment '{call.deployment.name}' takes text, not token ids.",
                             param="input")
        model = model_path(call.deployment.model)
        extra = {} if call.dimensions is None else {"outputDimensionality": call.dimensions}
        batches = [texts[i:i + EMBED_BATCH] for i in range(0, len(texts), EMBED_BATCH)]
        with _key_refusals():
            documents = await asyncio.gather(*(
                self.upstream.post_json(
                    self.url(call.deployment.model, "batchEmbedContents"),
                    {"requests": [{"model": model, "content": {"parts": [{"text": text}]},
                                   **extra} for text in batch]},
                    self._headers,
                )
                for batch in batches
            ))
        vectors = tuple(
            embedding_vector(row.get("values"), self.provider)
            for document in documents for row in document.get("embeddings") or []
        )
        if len(vectors) != len(call.inputs):
            raise UpstreamServerError(
                f"provider '{self.provider.name}' returned {len(vectors)} embeddings "
                f"for {len(call.inputs)} inputs", provider=self.provider.name)
        return EmbeddingResult(call.deployment.model, vectors, call.prompt_tokens)

    def raw_target(self) -> RawTarget:
        """The pass-through seam (providers/raw.py): its key as ``x-goog-api-key``."""
        return RawTarget(api_root(self._base), self._headers)

    async def aclose(self) -> None:
        await self.upstream.aclose()


def model_path(model: str) -> str:
    """``gemini-2.5-flash`` -> ``models/gemini-2.5-flash``; ``tunedModels/x`` stays as is."""
    return model if "/" in model else f"models/{model}"


def parse_response(document: Mapping[str, Any], call: ChatCall, provider: Provider) -> ChatResult:
    _raise_if_blocked(document, provider)
    first = _first_call_number(call)
    choices = []
    malformed: list[str] = []
    for position, candidate in enumerate(document.get("candidates") or []):
        texts, calls = _read_parts(candidate, first)
        reason = str(candidate.get("finishReason") or "STOP")
        if reason in MALFORMED_REASONS:
            malformed.append(reason)
        choices.append(Choice(
            index=int(candidate.get("index", position)),
            content="".join(texts) if texts else None,
            finish_reason=_finish(reason, bool(calls)),
            tool_calls=tuple(calls),
        ))
    if not choices:
        raise UpstreamServerError(
            f"provider '{provider.name}' answered with no candidates", provider=provider.name)
    if len(malformed) == len(choices):
        raise _malformed(provider, malformed[0])
    usage = document.get("usageMetadata")
    return ChatResult(
        model=str(document.get("modelVersion") or call.deployment.model),
        choices=tuple(choices),
        usage=_usage(usage, call) if usage else unreported_usage(call),
    )


def _chunk_deltas(
    chunk: Mapping[str, Any], first: int, called: dict[int, int], provider: Provider
) -> list[ChatDelta]:
    _raise_if_blocked(chunk, provider)
    deltas = []
    for position, candidate in enumerate(chunk.get("candidates") or []):
        index = int(candidate.get("index", position))
        texts, calls = _read_parts(candidate, first + called.get(index, 0))
        if texts:
            deltas.append(ChatDelta(index, content="".join(texts)))
        for call in calls:
            number = called.get(index, 0)
            called[index] = number + 1
            deltas.append(ChatDelta(index, tool_calls=(
                ToolCallDelta(number, call.id, call.name, call.arguments),)))
        reason = candidate.get("finishReason")
        if reason in MALFORMED_REASONS:
            raise _malformed(provider, str(reason))
        if reason:
            deltas.append(ChatDelta(index, finish_reason=_finish(str(reason),
                                                                 called.get(index, 0) > 0)))
    return deltas


def _read_parts(candidate: Mapping[str, Any], first: int) -> tuple[list[str], list[ToolCall]]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            continue
        if isinstance(part.get("text"), str) and part["text"]:
            texts.append(part["text"])
        function = part.get("functionCall")
        if isinstance(function, dict):
            call_id = f"call_{first + len(calls)}"
            if part.get("thoughtSignature"):
                call_id += SIGNATURE_MARK + str(part["thoughtSignature"])
            arguments = json.dumps(function.get("args") or {}, separators=(",", ":"))
            calls.append(ToolCall(call_id, str(function.get("name", "")), arguments))
    return texts, calls


def _first_call_number(call: ChatCall) -> int:
    """The number of the next ``call_<n>``: tool calls already in the conversation."""
    return sum(len(m.tool_calls or []) for m in call.request.messages if m.role == "assistant")


def _finish(reason: str, called: bool) -> str:
    finish = FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if called and finish == "stop" else finish


def _usage(usage: Mapping[str, Any], call: ChatCall) -> Usage:
    prompt = int(usage.get("promptTokenCount") or 0) + int(
        usage.get("toolUsePromptTokenCount") or 0)
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    completion = int(usage.get("candidatesTokenCount") or 0) + thoughts
    # Audio (inlineData of an audio type) is counted in the totals and, by modality, in
    # the details: the prompt's not read from the cache, and the answer's.
    audio_in = max(0, _modality(usage, "promptTokensDetails", "AUDIO")
                   - _modality(usage, "cacheTokensDetails", "AUDIO"))
    return Usage(prompt or call.prompt_tokens, completion,
                 cached_tokens=int(usage.get("cachedContentTokenCount") or 0),
                 reasoning_tokens=thoughts, audio_input_tokens=audio_in,
                 audio_output_tokens=_modality(usage, "candidatesTokensDetails", "AUDIO"))


def _modality(usage: Mapping[str, Any], details: str, modality: str) -> int:
    """The tokens of ``modality`` in ``usage[details]``, a list of ``{modality,
    tokenCount}`` (Gemini's ModalityTokenCount); 0 where it names none."""
    listed = usage.get(details)
    return sum(int(item.get("tokenCount") or 0) for item in listed
               if isinstance(item, dict) and item.get("modality") == modality) \
        if isinstance(listed, list) else 0


def _raise_if_blocked(document: Mapping[str, Any], provider: Provider) -> None:
    reason = (document.get("promptFeedback") or {}).get("blockReason")
    if reason and not document.get("candidates"):
        raise UpstreamContentPolicy(
            f"provider '{provider.name}' refused the prompt (blockReason {reason})",
            provider=provider.name, upstream_status=200)


def _raise_for_error(chunk: Mapping[str, Any], provider: Provider) -> None:
    """An error sent as an event, after the stream began: classified like a status."""
    error = chunk.get("error")
    if isinstance(error, dict):
        code = error.get("code")  # an HTTP status; anything else reads as a server error
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        raise classify(UpstreamFailure(status, str(error.get("message", "")),
                                       str(error.get("status", "")).lower(), None), provider)


def _malformed(provider: Provider, reason: str) -> UpstreamError:
    return UpstreamServerError(
        f"provider '{provider.name}' produced a malformed function call "
        f"(finishReason {reason})", provider=provider.name)


@contextmanager
def _key_refusals() -> Iterator[None]:
    """Gemini answers a wrong key with 400 INVALID_ARGUMENT "API key not valid": an auth
    failure, like 401 and 403, not the client's bad request."""
    try:
        yield
    except UpstreamBadRequest as exc:
        text = exc.message.lower()
        if "api key not valid" in text or "api key expired" in text:
            raise UpstreamAuthError(
                f"provider '{exc.provider}' refused the gateway's credentials "
                "(HTTP 400, API key not valid)",
                provider=exc.provider, upstream_status=exc.upstream_status,
            ) from exc
        raise
