"""A fake of OpenAI's API (and Azure OpenAI's URLs): chat completions, streaming, embeddings,
and the legacy completions (``/v1/completions``: a raw prompt or token ids (read written
out), ``suffix``, ``echo``, a count of ``logprobs``, ``best_of``; the answer cut at
``max_tokens`` words, 16 when left out, as OpenAI's default is); and the rerank endpoint
OpenAI-compatible servers serve beside them (vLLM's and Jina's ``/v1/rerank``: results best
first, each with its document, and ``usage.total_tokens``); the audio endpoints
(openai_audio.py). Images (``/v1/images/generations``, Azure's too): a DALL-E model answers
URLs, or base64 when asked, with a ``revised_prompt``; a gpt-image model always base64, with
its ``usage`` in tokens and the size it drew; streamed (``stream: true``, gpt-image only,
one image), its ``partial_images`` as ``event: image_generation.partial_image`` events, then
``image_generation.completed`` with the usage; edits (``/v1/images/edits``, multipart:
openai_image_edits.py) the same images, ``image_edit.*`` events. Moderations
(``/v1/moderations``): a result an input, flagged for violence where it says "attack".

Requests are validated as strictly as the real API validates them: unknown
parameters, bad roles, tool messages without ``tool_call_id``, a wrong key, all get
OpenAI's error objects with OpenAI's statuses. Streams follow the documented chunk
shapes byte for byte (``data: {...}\\n\\n`` ... ``data: [DONE]\\n\\n``).

It answers ``n`` choices, as OpenAI does; with ``ignores_n`` set it answers one
whatever ``n`` asks, as Ollama's /v1 does. ``line_ending`` ends a stream's lines with
CRLF or a CR alone, which SSE allows as well as LF (servers behind some proxies send them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .brain import Action, Reply, Script, decide, json_answer, words
from .cohere_fake import ranked
from .openai_audio import AudioFake
from .openai_image_edits import ImageEditFake
from .openai_spoken import (
    input_audio_tokens,
    output_audio_tokens,
    speaks,
    spoken_deltas,
    spoken_message,
)
from .request_ids import RequestIds

CHAT_PARAMETERS = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "n", "temperature", "top_p", "stop", "seed", "user", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "frequency_penalty", "presence_penalty",
    "logit_bias", "logprobs", "top_logprobs", "metadata", "store", "reasoning_effort",
    "service_tier", "modalities", "prediction", "audio", "web_search_options",
    "prompt_cache_key", "safety_identifier",
}
# POST /v1/completions (the legacy API), as OpenAI's API reference lists its parameters.
COMPLETION_PARAMETERS = {
    "model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty",
    "best_of", "logit_bias", "user", "seed",
}
EMBEDDING_PARAMETERS = {"model", "input", "encoding_format", "dimensions", "user"}
# vLLM's /v1/rerank (the Jina shape): a Cohere-only field such as max_tokens_per_doc is refused.
RERANK_PARAMETERS = {"model", "query", "documents", "top_n", "return_documents"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# POST /v1/images/generations, as OpenAI's API reference lists its parameters.
IMAGE_PARAMETERS = {
    "model", "prompt", "n", "size", "quality", "style", "response_format", "background",
    "output_format", "output_compression", "moderation", "user", "stream", "partial_images",
}
MODERATION_PARAMETERS = {"model", "input"}


def _error(status: int, message: str, kind: str, code: str | None = None,
           param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _invalid(message: str, param: str | None = None) -> JSONResponse:
    return _error(400, message, "invalid_request_error", None, param)


def _unrecognized(body: Any, parameters: Collection[str]) -> JSONResponse | None:
    """OpenAI's refusal of a body that is not an object, or names a parameter its
    endpoint does not take (the first such, as OpenAI names it)."""
    if not isinstance(body, dict):
        return _invalid("We could not parse the JSON body of your request.")
    for name in body:
        if name not in parameters:
            return _invalid(f"Unrecognized request argument supplied: {name}")
    return None


def _validate_chat(body: dict[str, Any]) -> JSONResponse | None:
    """OpenAI's refusals of a chat request whose parameters are all chat's."""
    if not isinstance(body.get("model"), str):
        return _invalid("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid("[] is too short - 'messages'", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return _invalid(f"Invalid value for 'messages[{index}].role'.",
                            f"messages[{index}].role")
        if message["role"] == "tool" and not message.get("tool_call_id"):
            return _invalid(f"Missing parameter 'tool_call_id' in messages[{index}].",
                            f"messages[{index}].tool_call_id")
        for call in message.get("tool_calls") or []:
            if call.get("type") != "function" or "id" not in call or "function" not in call:
                return _invalid(f"Invalid 'messages[{index}].tool_calls'.")
    for tool in body.get("tools") or []:
        if tool.get("type") != "function" or "name" not in (tool.get("function") or {}):
            return _invalid("Invalid 'tools': each needs type 'function' and a function name.",
                            "tools")
    return _validate_response_format(body.get("response_format"), messages)


def _validate_response_format(value: Any, messages: list[Any]) -> JSONResponse | None:
    """OpenAI's refusals of a ``response_format``, worded as it words them."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        return _invalid(f"Invalid value: '{kind}'. Supported values are: 'json_object', "
                        "'json_schema', and 'text'.", "response_format.type")
    if kind == "json_object" and "json" not in json.dumps(
            [message.get("content") for message in messages]).lower():
        return _invalid("'messages' must contain the word 'json' in some form, to use "
                        "'response_format' of type 'json_object'.", "messages")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return _invalid("Missing required parameter: 'response_format.json_schema.name'.",
                            "response_format.json_schema.name")
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return ""


def reply_for(body: dict[str, Any], fake: str = "fake-openai") -> Reply:
    """The brain's answer; a ``seed`` picks its phrasing, and a ``response_format`` of
    json_object or json_schema makes a text answer JSON (of the schema's shape)."""
    messages = body["messages"]
    last = messages[-1]
    users = [m for m in messages if m.get("role") == "user"]
    tool_names = [t["function"]["name"] for t in body.get("tools") or []]
    result = _text(last.get("content")) if last.get("role") == "tool" else None
    seed = body.get("seed")
    reply = decide(fake, _text(users[-1].get("content")) if users else "", tool_names, result,
                   body.get("tool_choice") != "none", seed if isinstance(seed, int) else None)
    response_format = body.get("response_format") or {}
    if reply.tool_name or response_format.get("type") not in ("json_object", "json_schema"):
        return reply
    schema = (response_format.get("json_schema") or {}).get("schema")
    answer = {"answer": reply.text} if schema is None else json_answer(schema, reply.text or "")
    return Reply(text=json.dumps(answer))


def _call_id(messages: list[Any]) -> str:
    """``call_fake_<n>``, n one more than the tool calls the conversation holds: ids are
    unique within a conversation, as OpenAI's are (an agent's history tells calls apart
    by them), and a conversation's first call is ``call_fake_1``."""
    earlier = sum(len(m.get("tool_calls") or ()) for m in messages
                  if isinstance(m, dict) and m.get("role") == "assistant")
    return f"call_fake_{earlier + 1}"


class OpenAIFake(AudioFake, ImageEditFake):
    """The fake's state: its key, its script, and what it has seen."""

    def __init__(self, api_key: str = "sk-fake-openai-key-0123456789", *,
                 azure_api_version: str = "2024-10-21", name: str = "fake-openai",
                 journal: list[str] | None = None, ignores_n: bool = False) -> None:
        self.api_key = api_key
        self.ignores_n = ignores_n  # answer one choice whatever n asks (Ollama's /v1)
        self.name = name
        self.journal = journal  # shared by several fakes: the order they were called in
        self.azure_api_version = azure_api_version
        self.script = Script()
        # Prompt tokens OpenAI's automatic prompt caching read, reported in every chat
        # answer's usage.prompt_tokens_details.cached_tokens (at most the prompt).
        self.cached_tokens = 0
        # False: chat answers leave usage out, and streams ignore include_usage (as some
        # OpenAI-compatible servers do).
        self.reports_usage = True
        # Of an embedding whose request does not ask for ``dimensions``.
        self.embedding_dimensions = 8
        self.line_ending = "\n"  # of a stream's lines: "\n", "\r\n" or "\r"
        self.extra_images = 0  # drawn beyond the n asked (an upstream that overdraws)
        # What a DALL-E answer's images say the prompt was revised to (None: "A picture
        # of" the prompt), for a test of the text a client reads that it did not write.
        self.revised_prompt: str | None = None
        self.request_ids: list[str] = []  # the ids its answers gave, in order
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/rerank", self._rerank, methods=["POST"]),
            Route("/v1/images/generations", self._images, methods=["POST"]),
            Route("/v1/moderations", self._moderations, methods=["POST"]),
            Route("/openai/deployments/{deployment}/images/generations", self._images,
                  methods=["POST"]),
            Route("/openai/deployments/{deployment}/chat/completions", self._chat,
                  methods=["POST"]),
            Route("/openai/deployments/{deployment}/embeddings", self._embeddings,
                  methods=["POST"]),
            Route("/openai/deployments/{deployment}/completions", self._completions,
                  methods=["POST"]),
            *self.audio_routes(),
            *self.image_edit_routes(),
        ], middleware=[Middleware(RequestIds, header="x-request-id", given=self.request_ids)])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    def _authorized(self, request: Request, azure: bool) -> JSONResponse | None:
        if azure:
            if request.headers.get("api-key") != self.api_key:
                return _error(401, "Access denied due to invalid subscription key.",
                              "invalid_request_error", "401")
            if request.query_params.get("api-version") != self.azure_api_version:
                return _error(404, "Resource not found", "invalid_request_error", "404")
            return None
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            shown = request.headers.get("authorization", "")[-4:]
            return _error(401, f"Incorrect API key provided: ...{shown}.",
                          "invalid_request_error", "invalid_api_key")
        return None

    async def _load(self, request: Request, parameters: Collection[str],
                    ) -> tuple[Any, Action, JSONResponse | None]:
        """The request authorized (as Azure's, on a ``/openai/deployments/`` path), its
        body read and journaled, the script's next action taken, and the body's
        parameters checked against the endpoint's: a refusal or scripted failure is the
        third item, to answer as is."""
        azure = "deployment" in request.path_params
        denied = self._authorized(request, azure)
        if denied:
            return None, Action(), denied
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return None, Action(), _invalid("We could not parse the JSON body of your request.")
        self.script.requests.append(body if isinstance(body, dict) else {"_": body})
        if self.journal is not None:
            self.journal.append(self.name)
        self.script.headers.append(dict(request.headers))
        action = self.script.next()
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.status != 200:
            error = action.body or {"error": {"message": f"scripted failure {action.status}",
                                              "type": "server_error", "param": None,
                                              "code": None}}
            return body, action, JSONResponse(error, status_code=action.status,
                                              headers=action.headers)
        return body, action, _unrecognized(body, parameters)

    async def _chat(self, request: Request) -> Response:
        body, action, failed = await self._load(request, CHAT_PARAMETERS)
        if failed:
            return failed
        azure = "deployment" in request.path_params  # the model is the path's
        invalid = _validate_chat({**body, "model": body.get("model", "azure")} if azure else body)
        if invalid:
            return invalid
        model = request.path_params.get("deployment") or body["model"]
        reply = reply_for(body, self.name)
        call_id = _call_id(body["messages"])
        prompt_tokens = sum(len(_text(m.get("content")).split()) + 3 for m in body["messages"])
        choices = 1 if self.ignores_n else int(body.get("n") or 1)
        thought = len(action.reasoning.split()) if action.reasoning else 0
        completion_tokens = (len((reply.text or reply.arguments_json).split()) + thought) * choices
        audio_in = input_audio_tokens(body["messages"])
        audio_out = output_audio_tokens(reply.text or "") * choices if speaks(body) else 0
        prompt_tokens += audio_in
        completion_tokens += audio_out
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens,
                 "prompt_tokens_details": {
                     "cached_tokens": min(self.cached_tokens, prompt_tokens)}}
        if thought:
            usage["completion_tokens_details"] = {"reasoning_tokens": thought * choices}
        if audio_in or audio_out:  # as OpenAI details a spoken chat's
            usage["prompt_tokens_details"]["audio_tokens"] = audio_in
            usage["completion_tokens_details"] = {"reasoning_tokens": thought * choices,
                                                  "audio_tokens": audio_out}
        logprobs = bool(body.get("logprobs"))
        if body.get("stream"):
            include_usage = self.reports_usage and bool(
                (body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._chunks(model, reply, usage, include_usage, action, logprobs, choices,
                            call_id, speaks(body)),
                media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None,
                                   "annotations": []}
        if speaks(body) and not reply.tool_name:
            message = spoken_message(reply.text or "")
        if action.reasoning:
            message["reasoning_content"] = action.reasoning
        finish = "stop"
        if reply.tool_name:
            message["tool_calls"] = [{"id": call_id, "type": "function",
                                      "function": {"name": reply.tool_name,
                                                   "arguments": reply.arguments_json}}]
            finish = "tool_calls"
        answer = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_fake",
            "choices": [{"index": index, "message": message,
                         "logprobs": _logprobs(words(reply.text or "")) if logprobs else None,
                         "finish_reason": finish} for index in range(choices)],
        }
        if self.reports_usage:
            answer["usage"] = usage
        return JSONResponse(answer, headers=action.headers)

    async def _chunks(self, model: str, reply: Reply, usage: dict[str, Any],
                      include_usage: bool, action: Action,
                      logprobs: bool = False, choices: int = 1,
                      call_id: str = "call_fake_1", spoken: bool = False,
                      ) -> AsyncIterator[bytes]:
        end = self.line_ending
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}

        def event(choices: list[dict[str, Any]], usage_value: Any = None) -> bytes:
            chunk: dict[str, Any] = {**head, "choices": choices}
            if include_usage:
                chunk["usage"] = usage_value
            return f"data: {json.dumps(chunk)}{end}{end}".encode()

        events: list[bytes] = []
        for index in range(choices):  # each choice's chunks in turn
            def choice(delta: dict[str, Any], finish: str | None = None,
                       index: int = index) -> dict[str, Any]:
                content = delta.get("content")
                scored = _logprobs([content]) if logprobs and content else None
                return {"index": index, "delta": delta, "logprobs": scored,
                        "finish_reason": finish}

            events.append(event([choice({"role": "assistant", "content": "", "refusal": None})]))
            events.extend(event([choice({"reasoning_content": piece})])
                          for piece in words(action.reasoning or "") if action.reasoning)
            if reply.tool_name:
                events.append(event([choice({"tool_calls": [{
                    "index": 0, "id": call_id, "type": "function",
                    "function": {"name": reply.tool_name, "arguments": ""}}]})]))
                arguments = reply.arguments_json
                for start in range(0, len(arguments), 7):
                    events.append(event([choice({"tool_calls": [{
                        "index": 0, "function": {"arguments": arguments[start:start + 7]}}]})]))
                events.append(event([choice({}, "tool_calls")]))
            elif spoken:
                events.extend(event([choice(delta)]) for delta in spoken_deltas(reply.text or ""))
                events.append(event([choice({}, "stop")]))
            else:
                for piece in words(reply.text or ""):
                    events.append(event([choice({"content": piece})]))
                events.append(event([choice({}, "stop")]))
        if include_usage:
            events.append(event([], usage))
        events.append(f"data: [DONE]{end}{end}".encode())
        for number, item in enumerate(events):
            if action.cut_stream_after is not None and number >= action.cut_stream_after:
                raise ConnectionResetError("scripted disconnect")
            yield item
            await asyncio.sleep(action.event_delay_s)
            if number + 1 == action.stall_after:  # an upstream that stops mid-answer
                await asyncio.sleep(action.stall_s)

    async def _completions(self, request: Request) -> Response:
        """The legacy completions API: the brain's answer to the prompt (and ``[suffix]``
        after it, when one is sent), cut at ``max_tokens`` words."""
        body, action, failed = await self._load(request, COMPLETION_PARAMETERS)
        if failed:
            return failed
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        ids = prompt if isinstance(prompt, list) and prompt and all(
            type(token) is int for token in prompt) else None
        if ids is not None:  # token ids: the fake has no tokenizer, so reads them written out
            prompt = " ".join(map(str, ids))
        if not isinstance(prompt, str):
            return _invalid("The fake takes one prompt: a text, or token ids.", "prompt")
        if body.get("stream") and (body.get("best_of") or 1) > 1:
            return _invalid("Cannot stream results with best_of greater than 1.", "best_of")
        said = decide(self.name, prompt, [], None, False).text or ""
        if body.get("suffix"):
            said += f" [{body['suffix']}]"
        pieces = said.split(" ")
        limit = int(body.get("max_tokens") or 16)
        finish = "length" if len(pieces) > limit else "stop"
        text = " ".join(pieces[:limit])
        echoed = prompt + text if body.get("echo") else text
        choices = int(body.get("n") or 1)
        prompt_tokens = (len(prompt.split()) if ids is None else len(ids)) + (
            len(body.get("suffix", "").split()))
        completion_tokens = len(text.split()) * max(choices, int(body.get("best_of") or 1))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        scored = body.get("logprobs") is not None
        head = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": request.path_params.get("deployment") or body.get("model"),
                "system_fingerprint": "fp_fake"}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._text_chunks(head, words(echoed), finish, choices, scored,
                                  usage if include_usage else None, action),
                media_type="text/event-stream")
        return JSONResponse({**head, "choices": [
            {"text": echoed, "index": index,
             "logprobs": _text_logprobs(words(echoed)) if scored else None,
             "finish_reason": finish} for index in range(choices)], "usage": usage},
            headers=action.headers)

    async def _text_chunks(self, head: dict[str, Any], pieces: list[str], finish: str,
                           choices: int, scored: bool, usage: dict[str, Any] | None,
                           action: Action) -> AsyncIterator[bytes]:
        """A completions stream: a chunk a word, the last of a choice with its finish
        reason; with usage asked for, ``"usage": null`` on each and a last chunk with it."""

        def event(listed: list[dict[str, Any]], usage_value: Any = None) -> bytes:
            chunk: dict[str, Any] = {**head, "choices": listed}
            if usage is not None:
                chunk["usage"] = usage_value
            return f"data: {json.dumps(chunk)}\n\n".encode()

        events = []
        for index in range(choices):
            for number, piece in enumerate(pieces):
                last = number == len(pieces) - 1
                events.append(event([{
                    "text": piece, "index": index,
                    "logprobs": _text_logprobs([piece]) if scored else None,
                    "finish_reason": finish if last else None}]))
        if usage is not None:
            events.append(event([], usage))
        events.append(b"data: [DONE]\n\n")
        for number, item in enumerate(events):
            if action.cut_stream_after is not None and number >= action.cut_stream_after:
                raise ConnectionResetError("scripted disconnect")
            yield item
            await asyncio.sleep(action.event_delay_s)

    async def _embeddings(self, request: Request) -> Response:
        body, _action, failed = await self._load(request, EMBEDDING_PARAMETERS)
        if failed:
            return failed
        inputs = body.get("input")
        # A string, a list of them, one list of token ids, or a list of those.
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and all(isinstance(i, int) for i in inputs)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not (
                all(isinstance(i, str) for i in inputs) or all(
                    isinstance(i, list) and i and all(isinstance(t, int) for t in i)
                    for i in inputs)):
            return _invalid("'$.input' is invalid. Please check the API reference: "
                            "https://platform.openai.com/docs/api-reference.", "input")
        dimensions = int(body.get("dimensions") or self.embedding_dimensions)
        data = []
        for index, text in enumerate(inputs):
            vector = bag_of_words(str(text), dimensions)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(item) if isinstance(item, list) else len(item.split())
                     for item in inputs)
        return JSONResponse({"object": "list", "data": data,
                             "model": request.path_params.get("deployment") or body.get("model"),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _rerank(self, request: Request) -> Response:
        """vLLM's /v1/rerank: the Jina shape, every field but RERANK_PARAMETERS refused."""
        body, _action, failed = await self._load(request, RERANK_PARAMETERS)
        if failed:
            return failed
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list) or not documents \
                or not all(isinstance(text, str) for text in documents):
            return _invalid("query must be a string and documents a non-empty list of them",
                            "documents")
        tokens = sum(len(query.split()) + len(text.split()) for text in documents)
        return JSONResponse({
            "id": f"rerank-{hashlib.sha256(query.encode()).hexdigest()[:16]}",
            "model": body.get("model"),
            "usage": {"total_tokens": tokens},
            "results": [{"index": index, "document": {"text": documents[index]},
                         "relevance_score": score}
                        for index, score in ranked(query, documents, body.get("top_n"))],
        })

    async def _images(self, request: Request) -> Response:
        body, _action, failed = await self._load(request, IMAGE_PARAMETERS)
        if failed:
            return failed
        return self._drawn(request, body, "image_generation", 0)

    def _drawn(self, request: Request, body: dict[str, Any], events: str,
               image_tokens: int) -> Response:
        """The images ``body`` asks for (a generation's, or an edit's read from its form);
        ``events``: the stream's event names' prefix; ``image_tokens``: the input images'
        tokens a gpt-image model reports."""
        prompt, n = body.get("prompt"), body.get("n", 1)
        if not isinstance(prompt, str) or not prompt:
            return _invalid("Missing required parameter: 'prompt'.", "prompt")
        if not isinstance(n, int) or not 1 <= n <= 10:
            return _invalid(f"Invalid value for 'n': {n!r}.", "n")
        model = str(request.path_params.get("deployment") or body.get("model") or "dall-e-2")
        token_billed = model.startswith("gpt-image")
        if token_billed and "response_format" in body:
            return _invalid("Unknown parameter: 'response_format'.", "response_format")
        digest = hashlib.sha256(f"{model}:{prompt}".encode()).hexdigest()[:12]
        data: list[dict[str, Any]] = []
        for index in range(n + self.extra_images):
            if token_billed or body.get("response_format") == "b64_json":
                row: dict[str, Any] = {"b64_json": base64.b64encode(
                    f"fake image {index} of {prompt}".encode()).decode()}
            else:
                row = {"url": f"https://images.fake.test/{digest}-{index}.png"}
            if not token_billed:
                row["revised_prompt"] = self.revised_prompt if self.revised_prompt \
                    is not None else f"A picture of {prompt}"
            data.append(row)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        tokens = {"input_tokens": len(prompt.split()) + image_tokens,
                  "input_tokens_details": {"text_tokens": len(prompt.split()),
                                           "image_tokens": image_tokens}}
        if body.get("stream") is True:
            if not token_billed:
                return _invalid("Streaming is only supported for gpt-image models.", "stream")
            return self._image_events(body, data[0]["b64_json"], tokens, events)
        if token_billed:
            answer.update(size=body.get("size", "1024x1024"), quality=body.get("quality", "high"),
                          background="opaque", output_format="png",
                          usage={**tokens, "output_tokens": 272 * len(data),
                                 "total_tokens": tokens["input_tokens"] + 272 * len(data)})
        return JSONResponse(answer)

    def _image_events(self, body: dict[str, Any], image: str, tokens: dict[str, Any],
                      events: str) -> StreamingResponse:
        """A gpt-image stream, as OpenAI's API reference shows its events."""
        shown = {"created_at": int(time.time()), "size": body.get("size", "1024x1024"),
                 "quality": body.get("quality", "high"), "background": "opaque",
                 "output_format": "png"}
        listed = [(f"{events}.partial_image",
                   {"type": f"{events}.partial_image", "b64_json": image, **shown,
                    "partial_image_index": index})
                  for index in range(body.get("partial_images", 0))]
        listed.append((f"{events}.completed", {
            "type": f"{events}.completed", "b64_json": image, **shown,
            "usage": {**tokens, "output_tokens": 272,
                      "total_tokens": tokens["input_tokens"] + 272}}))
        chunks = [f"event: {name}\ndata: {json.dumps(event)}\n\n".encode()
                  for name, event in listed]
        return StreamingResponse(self._spoken(chunks), media_type="text/event-stream")

    async def _moderations(self, request: Request) -> Response:
        body, _action, failed = await self._load(request, MODERATION_PARAMETERS)
        if failed:
            return failed
        raw = body.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
            texts = raw
        elif isinstance(raw, list) and raw and all(isinstance(item, dict) for item in raw):
            texts = [" ".join(str(part.get("text", "")) for part in raw)]  # one result
        else:
            return _invalid("'$.input' is invalid.", "input")
        categories = ("harassment", "hate", "illicit", "self-harm", "sexual", "violence")
        results = []
        for text in texts:
            hit = "attack" in text.lower()
            results.append({
                "flagged": hit,
                "categories": {name: hit and name == "violence" for name in categories},
                "category_scores": {name: 0.9 if hit and name == "violence" else 0.01
                                    for name in categories},
                "category_applied_input_types": {name: ["text"] for name in categories}})
        return JSONResponse({"id": f"modr-{hashlib.sha256(repr(raw).encode()).hexdigest()[:8]}",
                             "model": body.get("model") or "omni-moderation-latest",
                             "results": results})


def bag_of_words(text: str, dimensions: int) -> list[float]:
    """A deterministic embedding that is close for texts of mostly the same words: each
    word (lower case, punctuation left out) hashed to a dimension and a sign, the sum
    normalised. Word order does not count, nor does a word said twice."""
    vector = [0.0] * dimensions
    for word in set(re.findall(r"[a-z0-9']+", text.lower())):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm else vector


def _text_logprobs(tokens: list[str]) -> dict[str, Any]:
    """Log probabilities as the legacy completions API gives them (fixed values)."""
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": [-0.25] * len(tokens),
            "top_logprobs": [{token: -0.25} for token in tokens], "text_offset": offsets}


def _logprobs(tokens: list[str]) -> dict[str, Any]:
    """Log probabilities as OpenAI gives them for ``logprobs: true`` (fixed values)."""
    return {"content": [{"token": token, "logprob": -0.25, "bytes": list(token.encode()),
                         "top_logprobs": []} for token in tokens], "refusal": None}
