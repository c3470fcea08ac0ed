"""OpenAI's chat, embeddings and audio API, and every server that speaks it; and the
Cohere/Jina shaped ``/rerank`` that OpenAI-compatible servers (vLLM, Jina, Infinity) serve
beside it. Images and moderations (``/images/generations``, ``/moderations``) are read
and written by providers/openai_media.py.

A /v1/completions request (``ChatRequest.text_completion``) goes to the upstream's own
legacy ``/completions``, its prompt raw (providers/openai_text.py).

``openai``, ``openai_compatible`` (vLLM, Ollama's /v1, DeepSeek, xAI, Groq, Together,
another gateway) and ``vllm`` are a pass-through: the client's request goes upstream
with only the model id changed (and usage asked for on streams, so every answer can
be billed). A request lowered from /v1/messages is sent without the Anthropic hints it
kept (``ChatRequest.anthropic_hints``). ``azure_openai`` differs only in its URL,
``api-version`` and ``api-key``.

An answer with fewer choices than the request's ``n`` is an upstream error: some
compatible servers (Ollama's /v1) ignore ``n`` and answer one, which the client could
not tell from a full answer; as an error, a group's next member can serve it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlencode

import aiohttp

from aigw.compiler.graph import Provider

from ..errors import BadRequest, UpstreamError, UpstreamServerError
from ..tokens import TokenCounter
from ..upstream import MAX_MESSAGE, classify, failure_from_response, json_event, scrub
from ..upstream_aiohttp import AudioUpstream, open_upstream
from .audio import (
    SpeechCall,
    SpeechResult,
    TranscriptionCall,
    TranscriptionResult,
    transcript_usage,
)
from .base import (
    ChatCall,
    ChatDelta,
    ChatResult,
    Choice,
    EmbeddingCall,
    EmbeddingResult,
    ImageCall,
    ImageResult,
    ModerationCall,
    ModerationResult,
    RerankCall,
    RerankResult,
    ToolCall,
    Usage,
    embedding_vector,
    parse_ranking,
    reported_count,
    stream_cut,
    unreported_usage,
)
from .events import EventStream, image_estimate, opened
from .image_edits import ImageEditCall
from .openai_calls import StreamedCalls, arguments_text, made_call_id
from .openai_media import (
    edit_answer,
    image_body,
    moderation_body,
    parse_images,
    parse_moderation,
)
from .openai_text import text_body, text_choices, text_deltas
from .raw import RawTarget, api_root
from .realtime import RealtimeCall

OPENAI_BASE_URL = "https://api.openai.com/v1"
AZURE_API_VERSION = "2024-10-21"
# The api-version Azure OpenAI serves /openai/realtime at (the GA one above has none).
AZURE_REALTIME_API_VERSION = "2024-10-01-preview"


class OpenAIAdapter:
    """Chat completions and embeddings against an OpenAI-compatible ``/v1``."""

    names_model_in_url = False  # Azure's URLs name the deployment, and its bodies do not

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        self.provider = provider
        self.upstream: AudioUpstream = open_upstream(provider)
        self._base = (provider.base_url or OPENAI_BASE_URL).rstrip("/")
        self._headers = {**provider.headers}
        if provider.api_key:
            self._headers["authorization"] = f"Bearer {provider.api_key}"

    def url(self, call_model: str, operation: str) -> str:
        return f"{self._base}/{operation}"

    def body(self, call: ChatCall, stream: bool) -> dict[str, Any]:
        if call.request.text_completion:
            return text_body(call, stream)
        body = call.request.model_dump(exclude_none=True)
        body["model"] = call.deployment.model
        body["stream"] = stream
        deployment = call.deployment
        if call.request.output_limit is None and \
                deployment.max_output_tokens < deployment.context_window:
            # The request was held (budgets, tpm) at the deployment's max_output_tokens:
            # the upstream is held to it too, or it could write, and cost, more.
            body[self.cap_field()] = call.max_output_tokens
        elif "max_completion_tokens" in body and self.cap_field() == "max_tokens":
            # A server that knows max_tokens only (Ollama, vLLM's older releases, Azure
            # before 2024-09-01) ignores max_completion_tokens: the cap the request was
            # held at is sent in the field it reads.
            body.pop("max_completion_tokens")
            body["max_tokens"] = call.request.output_limit
        if stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        else:
            body.pop("stream_options", None)
        if call.request.anthropic_hints:
            _drop_anthropic_hints(body)
        return body

    def cap_field(self) -> str:
        """OpenAI's own API takes max_completion_tokens (its reasoning models refuse
        max_tokens); OpenAI-compatible servers know max_tokens."""
        return "max_completion_tokens" if self.provider.type == "openai" else "max_tokens"

    async def complete(self, call: ChatCall) -> ChatResult:
        url = self.url(call.deployment.model, _operation(call))
        document, upstream_id = await self.upstream.post_json_identified(
            url, self.body(call, False), self._headers)
        return parse_completion(document, call, self.provider, upstream_id)

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        url = self.url(call.deployment.model, _operation(call))
        calls = StreamedCalls()  # ids, names and indices given as OpenAI gives them
        parse = text_deltas if call.request.text_completion \
            else functools.partial(parse_chunk, calls=calls)
        usage: Usage | None = None
        done = False  # [DONE] came: the end, whatever the choices said
        answered: set[int] = set()  # the choices the stream spoke for, held to n at its end
        finished: set[int] = set()  # those that had their finish_reason
        noted: list[str] = []  # the provider's id of the call, given on the first delta
        async for _event, data in self.upstream.post_sse(url, self.body(call, True),
                                                         self._headers, noted):
            # A chunk (a JSON object) is told from the end by its first character, with no
            # strip() call for each of a stream's chunks.
            if data[:1] != "{" and data.strip() == "[DONE]":
                done = True
                break
            chunk = json_event(data, self.provider)
            if "error" in chunk:  # an error after the stream's 200
                raise stream_error(chunk, data, self.provider)
            for delta in parse(chunk):
                if delta.finish_reason is not None:
                    finished.add(delta.index)
                answered.add(delta.index)
                if noted:
                    delta = replace(delta, upstream_request_id=noted.pop())
                yield delta
            if chunk.get("usage"):  # some servers send it on every chunk: a cut is billed it
                usage = call.told.usage = _usage(chunk["usage"])
        # The connection closed cleanly mid-answer: before any finish, or (n > 1) before
        # one of the choices it had begun had its own (one choice's finish ended it).
        if not done and (not finished or finished != answered):
            raise stream_cut(self.provider, "its end (no finish_reason, no [DONE])")
        if call.request.n > 1 and len(answered) < call.request.n:  # told only at the end
            raise _fewer_choices(len(answered), call, self.provider)
        yield ChatDelta(usage=usage or unreported_usage(call))

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        body: dict[str, Any] = {
            "model": call.deployment.model,
            # Token ids go as they came: a list of ints per input.
            "input": [item if isinstance(item, str) else list(item) for item in call.inputs],
            "encoding_format": "float",
        }
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        if call.user is not None:
            body["user"] = call.user
        document = await self.upstream.post_json(
            self.url(call.deployment.model, "embeddings"), body, self._headers
        )
        rows = document.get("data")
        if not isinstance(rows, list) or len(rows) != len(call.inputs):
            raise UpstreamServerError(
                f"provider '{self.provider.name}' returned "
                f"{len(rows) if isinstance(rows, list) else 'no'} embeddings for "
                f"{len(call.inputs)} inputs", provider=self.provider.name)
        # A row without an index (some compatible servers) stands where it came.
        indices = [row.get("index", position) if isinstance(row, dict) else position
                   for position, row in enumerate(rows)]
        if len(set(indices)) != len(indices):  # which input's vector is which, then?
            raise UpstreamServerError(
                f"provider '{self.provider.name}' returned two embeddings with the same "
                f"index ({sorted(indices)})", provider=self.provider.name)
        rows = [row for _, row in sorted(zip(indices, rows, strict=True),
                                         key=lambda pair: pair[0])]
        usage = document.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens", call.prompt_tokens)
        if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int | float) \
                or not 0 <= prompt_tokens < float("inf"):
            # Settled and billed as it is: a negative count would refund the budget.
            raise UpstreamServerError(
                f"provider '{self.provider.name}' reported usage that is not a count of "
                f"tokens ({prompt_tokens!r})", provider=self.provider.name)
        return EmbeddingResult(
            model=str(document.get("model") or call.deployment.model),
            vectors=tuple(embedding_vector(row.get("embedding"), self.provider) for row in rows),
            prompt_tokens=int(prompt_tokens),
        )

    async def rerank(self, call: RerankCall) -> RerankResult:
        """``{base_url}/rerank`` (vLLM's and Jina's ``/v1/rerank``): the documents as text,
        the ranking read from ``results``; tokens from ``usage`` (vLLM's total_tokens),
        search units from Cohere's ``meta`` where a server sends them."""
        body: dict[str, Any] = {"model": call.deployment.model, "query": call.query,
                                "documents": list(call.documents)}
        if call.top_n is not None:
            body["top_n"] = call.top_n
        document = await self.upstream.post_json(
            self.url(call.deployment.model, "rerank"), body, self._headers)
        usage = document.get("usage") or {}
        tokens = reported_count(usage.get("total_tokens", usage.get("prompt_tokens")),
                                self.provider, "tokens")
        units = reported_count(
            ((document.get("meta") or {}).get("billed_units") or {}).get("search_units"),
            self.provider, "search units")
        return RerankResult(
            model=str(document.get("model") or call.deployment.model),
            ranking=parse_ranking(document, call, self.provider),
            prompt_tokens=call.prompt_tokens if tokens is None else tokens,
            search_units=call.search_units if units is None else units,
        )

    async def generate_images(self, call: ImageCall) -> ImageResult:
        document = await self.upstream.post_json(
            self.url(call.deployment.model, "images/generations"),
            image_body(call, self.names_model_in_url), self._headers)
        return parse_images(document, call, self.provider)

    async def generate_image_events(self, call: ImageCall) -> EventStream:
        """``/images/generations`` with ``stream: true``: the events passed on as they
        come."""
        events = self.upstream.post_sse(
            self.url(call.deployment.model, "images/generations"),
            image_body(call, self.names_model_in_url), self._headers)
        return await opened(events, image_estimate(call), "image_generation.completed",
                            self.provider)

    async def edit_images(self, call: ImageEditCall) -> ImageResult:
        """``{base_url}/images/edits``: the client's form sent on (its images and mask as
        they came), the model the deployment's where the URL does not name it."""
        answer = await self.upstream.post_form(
            self.url(call.deployment.model, "images/edits"), self._edit_fields(call),
            call.files, self._headers)
        return parse_images(edit_answer(answer.body, self.provider), call.drawing,
                            self.provider)

    async def edit_image_events(self, call: ImageEditCall) -> EventStream:
        """``/images/edits`` with ``stream=true`` (in ``call.fields``): the events passed
        on as they come."""
        events = self.upstream.post_form_sse(
            self.url(call.deployment.model, "images/edits"), self._edit_fields(call),
            call.files, self._headers)
        return await opened(events, image_estimate(call.drawing), "image_edit.completed",
                            self.provider)

    def _edit_fields(self, call: ImageEditCall) -> tuple[tuple[str, str], ...]:
        if self.names_model_in_url:
            return call.fields
        return (("model", call.deployment.model), *call.fields)

    async def moderate(self, call: ModerationCall) -> ModerationResult:
        document = await self.upstream.post_json(
            self.url(call.deployment.model, "moderations"), moderation_body(call), self._headers)
        return parse_moderation(document, call, self.provider)

    async def transcribe(self, call: TranscriptionCall) -> TranscriptionResult:
        """``{base_url}/audio/transcriptions`` or ``/audio/translations``: the client's
        form sent on, the model the deployment's; the answer passed through."""
        answer = await self.upstream.post_form(
            self.url(call.deployment.model, f"audio/{call.operation}"),
            (("model", call.deployment.model), *call.fields), (call.upload,), self._headers)
        return TranscriptionResult(answer.body, answer.content_type,
                                   transcript_usage(answer.body, call, self.provider))

    async def speak(self, call: SpeechCall) -> SpeechResult:
        """``{base_url}/audio/speech``: the audio's bytes passed on as they come."""
        audio = await self.upstream.post_streamed(
            self.url(call.deployment.model, "audio/speech"),
            {**call.body, "model": call.deployment.model}, self._headers)
        return SpeechResult(audio, call.usage)

    async def transcribe_events(self, call: TranscriptionCall) -> EventStream:
        """``/audio/transcriptions`` with ``stream=true`` (in ``call.fields``): the
        events passed on as they come. Not sent to whisper, which OpenAI says ignores
        ``stream``: its whole answer, billed, would be no events to pass on (a 502, and
        the audio sent again to each retry)."""
        if call.deployment.model.startswith("whisper"):
            raise BadRequest(f"'{call.deployment.model}' does not stream transcripts: leave "
                             "'stream' out, or ask a gpt-4o transcribe model.", param="stream")
        events = self.upstream.post_form_sse(
            self.url(call.deployment.model, f"audio/{call.operation}"),
            (("model", call.deployment.model), *call.fields), (call.upload,), self._headers)
        return await opened(events, call.estimate, "transcript.text.done", self.provider)

    async def speak_events(self, call: SpeechCall) -> EventStream:
        """``/audio/speech`` with ``stream_format: "sse"``: the events passed on as they
        come."""
        events = self.upstream.post_sse(
            self.url(call.deployment.model, "audio/speech"),
            {**call.body, "model": call.deployment.model}, self._headers)
        return await opened(events, call.usage, "speech.audio.done", self.provider)

    async def realtime(self, call: RealtimeCall) -> aiohttp.ClientWebSocketResponse:
        headers = {**self._headers, "openai-beta": "realtime=v1"} if call.beta else self._headers
        return await self.upstream.ws_connect(
            self.realtime_url(call.deployment.model, call.query), headers)

    def realtime_url(self, model: str, query: tuple[tuple[str, str], ...] = ()) -> str:
        """OpenAI's ``wss://api.openai.com/v1/realtime?model=`` and ``query``; an http
        base is ws. A transcription session (``intent=transcription``) names no model:
        OpenAI's guide ("Realtime transcription") has its URL omit it, as one with a model
        opens a conversation session, which refuses the transcription session.update."""
        named = () if ("intent", "transcription") in query else (("model", model),)
        return f"{_websocket(self._base)}/realtime?{urlencode((*named, *query))}"

    def raw_target(self) -> RawTarget:
        """The pass-through seam (providers/raw.py): the server's root and its key as
        ``Authorization: Bearer`` (Azure's as ``api-key``)."""
        return RawTarget(api_root(self._base), self._headers)

    async def aclose(self) -> None:
        await self.upstream.aclose()


class AzureOpenAIAdapter(OpenAIAdapter):
    """Azure OpenAI: deployment-style URLs, ``api-version`` and the ``api-key`` header.

    The deployment's ``model`` is the Azure deployment name.
    """

    names_model_in_url = True

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        super().__init__(provider, counter)
        self._headers = {**provider.headers, "api-key": provider.api_key or ""}
        self._version = provider.api_version or AZURE_API_VERSION

    def url(self, call_model: str, operation: str) -> str:
        return (
            f"{self._base}/openai/deployments/{call_model}/{operation}"
            f"?api-version={self._version}"
        )

    def body(self, call: ChatCall, stream: bool) -> dict[str, Any]:
        body = super().body(call, stream)
        body.pop("model", None)  # the URL names the deployment
        return body

    def realtime_url(self, model: str, query: tuple[tuple[str, str], ...] = ()) -> str:
        """Azure's ``/openai/realtime``, which the GA version (AZURE_API_VERSION) does
        not serve: the provider's api_version where it names one, else the preview's;
        ``query`` after them (Azure takes OpenAI's ``intent``)."""
        version = self.provider.api_version or AZURE_REALTIME_API_VERSION
        encoded = urlencode((("api-version", version), ("deployment", model), *query))
        return f"{_websocket(self._base)}/openai/realtime?{encoded}"

    def cap_field(self) -> str:
        """Azure takes max_completion_tokens from API version 2024-09-01-preview on;
        older versions know max_tokens only."""
        return "max_completion_tokens" if self._version >= "2024-09-01" else "max_tokens"


def _websocket(base: str) -> str:
    """``base`` with its scheme as a WebSocket's: https is wss, http ws."""
    scheme, sep, rest = base.partition("://")
    return {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme) + sep + rest


def _operation(call: ChatCall) -> str:
    """A /v1/completions request goes to the upstream's own legacy endpoint, its prompt
    raw (providers/openai_text.py); every other to chat completions."""
    return "completions" if call.request.text_completion else "chat/completions"


def _drop_anthropic_hints(body: dict[str, Any]) -> None:
    """Leave out what /v1/messages kept for Anthropic-family upstreams (cache_control
    marks, top_k): OpenAI's API refuses top_k, and some compatible servers refuse
    cache_control. Content it kept as text parts for the marks' sake is the text it
    would have been unmarked (a system prompt's blocks joined with a blank line), so
    the upstream gets what it got before. ``body`` is the adapter's own copy."""
    body.pop("top_k", None)
    for message in body["messages"]:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            part.pop("cache_control", None)
        if all(part.keys() == {"type", "text"} and part["type"] == "text" for part in content):
            if message["role"] == "system":
                message["content"] = "\n\n".join(part["text"] for part in content)
            elif message["role"] != "user" or len(content) == 1:
                message["content"] = "".join(part["text"] for part in content)
    for tool in body.get("tools") or ():
        tool.pop("cache_control", None)


def parse_completion(document: Mapping[str, Any], call: ChatCall, provider: Provider,
                     upstream_request_id: str | None = None) -> ChatResult:
    choices = (text_choices(document) if call.request.text_completion
               else _chat_choices(document))
    if not choices:
        raise UpstreamServerError(
            f"provider '{provider.name}' answered with no choices", provider=provider.name
        )
    if call.request.n > 1 and len({c.index for c in choices}) < call.request.n:
        raise _fewer_choices(len({c.index for c in choices}), call, provider)
    usage = document.get("usage")
    return ChatResult(
        model=str(document.get("model") or call.deployment.model),
        choices=tuple(choices),
        usage=_usage(usage) if usage else unreported_usage(call),
        upstream_request_id=upstream_request_id,
    )


def _chat_choices(document: Mapping[str, Any]) -> list[Choice]:
    choices = []
    for position, choice in enumerate(document.get("choices") or []):
        message = choice.get("message") or {}
        choices.append(
            Choice(
                index=int(choice.get("index", position)),
                content=message.get("content"),
                finish_reason=str(choice.get("finish_reason") or "stop"),
                tool_calls=tuple(
                    ToolCall(str(c.get("id") or made_call_id()),
                             str(c["function"].get("name", "")),
                             arguments_text(c["function"].get("arguments")))
                    for c in message.get("tool_calls") or []
                    if isinstance(c.get("function"), dict)
                ),
                refusal=message.get("refusal"),
                logprobs=choice.get("logprobs"),
                extra=_unread(message),
            )
        )
    return choices


def _fewer_choices(answered: int, call: ChatCall, provider: Provider) -> UpstreamServerError:
    return UpstreamServerError(
        f"provider '{provider.name}' answered {answered} choice(s) where the request asked "
        f"for n={call.request.n}: it does not honour 'n' (Ollama's /v1 ignores it); ask for "
        "n=1 there, or route n>1 to a provider that honours it",
        provider=provider.name, param="n")


def parse_chunk(chunk: Mapping[str, Any], calls: StreamedCalls) -> list[ChatDelta]:
    """The deltas of one chunk that say something (a bare role delta says nothing), its
    tool-call pieces numbered by ``calls``, the stream's. Every chunk of a stream comes
    through here: no generator for the tool calls of a delta that has none (most), no
    second list for those that say something."""
    deltas = []
    for position, choice in enumerate(chunk.get("choices") or []):
        delta = choice.get("delta") or {}
        pieces = delta.get("tool_calls")
        index = int(choice.get("index", position))
        parsed = ChatDelta(
            index=index,
            content=delta.get("content") or None,
            tool_calls=tuple([calls.piece(index, piece) for piece in pieces])
            if pieces else (),
            # "" on every chunk (sglang, Ollama's /v1 before 0.1.40) is no finish: passed
            # on, it ended each chunk for the client, and a stream cut short went unseen.
            finish_reason=choice.get("finish_reason") or None,
            refusal=delta.get("refusal"),
            logprobs=choice.get("logprobs"),
            extra=_unread(delta),
        )
        if (parsed.content or parsed.tool_calls or parsed.finish_reason or parsed.refusal
                or parsed.logprobs is not None or parsed.extra):
            deltas.append(parsed)
    return deltas


# What the gateway reads of a message or a delta; the rest passes through (_unread).
_READ = frozenset({"role", "content", "refusal", "tool_calls"})


def _unread(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fields of ``message`` the gateway does not read (audio, annotations,
    function_call...), to be sent on to the client as they came; None if there are none."""
    if message.keys() <= _READ:  # most answers and chunks: nothing to copy
        return None
    # Empty ones ("annotations": [] in every OpenAI answer) say nothing: left out, they
    # keep such answers cacheable.
    unread = {name: value for name, value in message.items()
              if name not in _READ and value is not None and value != [] and value != {}}
    return unread or None


def _usage(usage: Mapping[str, Any]) -> Usage:
    # Absent where a server sends none (vLLM, most compatible ones): not asked then.
    details = usage.get("prompt_tokens_details")
    output = usage.get("completion_tokens_details")
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    # xAI (and other compatible servers) count reasoning tokens in total_tokens only, not
    # in completion_tokens; they are output, billed as such. For OpenAI's own figures
    # total_tokens is prompt + completion, so this changes nothing there.
    completion = max(completion, int(usage.get("total_tokens") or 0) - prompt)
    # Audio (gpt-4o-audio-preview's input_audio parts and spoken answers) is counted in
    # prompt_tokens and completion_tokens and, of them, in the details' audio_tokens.
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=int(details.get("cached_tokens") or 0) if details else 0,
        reasoning_tokens=int(output.get("reasoning_tokens") or 0) if output else 0,
        audio_input_tokens=int(details.get("audio_tokens") or 0) if details else 0,
        audio_output_tokens=int(output.get("audio_tokens") or 0) if output else 0,
    )


# The status an error event's ``type`` stands for: OpenAI's types, and the exception
# names vLLM and SGLang write there. One not known is the server's failure (a 500).
_ERROR_STATUS: Mapping[str, int] = MappingProxyType({
    "invalid_request_error": 400, "badrequesterror": 400, "authentication_error": 401,
    "permission_error": 403, "not_found_error": 404, "notfounderror": 404,
    "rate_limit_error": 429, "rate_limit_exceeded": 429, "requests": 429, "tokens": 429,
    "insufficient_quota": 429, "server_error": 500, "overloaded_error": 503,
})


def stream_error(chunk: Mapping[str, Any], data: str, provider: Provider) -> UpstreamError:
    """An error event in a stream, classified as the HTTP error it stands for would be:
    the status its numeric ``code`` names (vLLM's), else its ``type``'s. An error as a
    stream's first event is the upstream's refusal of the request, sent after a 200 (an
    OpenAI-compatible server's validation, vLLM's): a refusal of the request is the
    client's 400, not retried or failed over as the server's own failure would be."""
    error = chunk.get("error")
    status = 500
    if isinstance(error, dict):
        code, kind = error.get("code"), error.get("type")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            status = code
        elif isinstance(kind, str):
            status = _ERROR_STATUS.get(kind.lower(), 500)
        elif isinstance(code, str):
            status = _ERROR_STATUS.get(code.lower(), 500)
    failure = failure_from_response(status, data.encode(), {})
    if status == 500:  # the server's own failure, as an unknown type is taken to be
        return UpstreamServerError(f"provider '{provider.name}' failed mid-stream: "
                                   f"{scrub(failure.message, provider)[:MAX_MESSAGE]}",
                                   provider=provider.name)
    return classify(failure, provider)
