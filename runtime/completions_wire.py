"""The legacy /v1/completions request, validated at the door and lowered into the chat core.

    {"model", "prompt": "def f(", "suffix": ..., "max_tokens": 16, ...}
        -> TextChatRequest(messages=[user "def f("], completion=TextParams(suffix=...))

One prompt a request: a string, or a list holding one string (what the SDK sends for
``prompt=[text]``). Several prompts and token ids are a 400 naming ``prompt``: the
gateway does not fan a request out, and token ids are in a tokenizer it cannot know.
``max_tokens`` is 16 when left out or null, as OpenAI's API (and vLLM's) default it,
so the hold, the cap and every provider agree on what the client asked for. The other
parameters (presence_penalty, logit_bias...) pass on as chat's unknown ones do.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, ValidationError

from .chat_request import (
    StreamOptions,
    TextChatRequest,
    TextParams,
    bad_request,
    chat_request_from,
    finite,
    null_is,
)
from .errors import BadRequest

__all__ = ["CompletionRequest", "parse", "to_chat_request"]

DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


class CompletionRequest(TextParams):
    """POST /v1/completions, as OpenAI's API reference lists its parameters (those only
    a raw prompt has, suffix, echo, logprobs and best_of, are ``TextParams``')."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: Annotated[bool, null_is(False)] = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1), null_is(DEFAULT_MAX_TOKENS)] = DEFAULT_MAX_TOKENS
    n: Annotated[int, Field(ge=1, le=128), null_is(1)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None


# The text-only parameters, kept apart from the chat ones in ``TextParams``.
_TEXT_PARAMS = frozenset(TextParams.model_fields)
# Chat's own fields this API has not (messages, tools...): sent here, they are unknown
# parameters, not extras to pass on (they would be read as chat's).
_CHAT_ONLY = frozenset(TextChatRequest.model_fields) - frozenset(CompletionRequest.model_fields)


def parse(body: bytes) -> CompletionRequest:
    """Parse and validate a request body; any problem is a ``BadRequest`` naming the field."""
    try:
        request = CompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _bad_prompt(exc) or bad_request(exc) from exc
    for name, value in (request.model_extra or {}).items():
        if name in _CHAT_ONLY:  # a chat field (messages, tools...): no such parameter here
            # (worded, and without a param, as OpenAI refuses an unknown argument)
            raise BadRequest(f"Unrecognized request argument supplied: {name}")
        if not finite(value):
            raise BadRequest(f"Invalid value for '{name}': numbers must be finite.", param=name)
    _one_text_prompt(request.prompt)
    if request.best_of is not None and request.best_of < request.n:
        raise BadRequest("best_of must be greater than or equal to n.", param="best_of")
    return request


def _bad_prompt(exc: ValidationError) -> BadRequest | None:
    """A prompt that is none of its four shapes: one message naming the shapes, where
    pydantic would name the first of its four failures (``prompt.str``)."""
    first = exc.errors(include_url=False)[0]
    if first["loc"] and first["loc"][0] == "prompt" and first["type"] != "missing":
        return BadRequest("Invalid value for 'prompt': expected a string (or a list holding "
                          "one string).", param="prompt")
    return None


def _one_text_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> None:
    if isinstance(prompt, str):
        return
    if not prompt:
        raise BadRequest("Invalid value for 'prompt': the list is empty.", param="prompt")
    if not all(isinstance(item, str) for item in prompt):
        raise BadRequest("'prompt' holds token ids; aigw takes text prompts only (token ids "
                         "are in a tokenizer it cannot know): send the text.", param="prompt")
    if len(prompt) > 1:
        raise BadRequest(f"'prompt' holds {len(prompt)} prompts; aigw serves one prompt a "
                         "request: send each as a request of its own.", param="prompt")


def to_chat_request(request: CompletionRequest) -> TextChatRequest:
    """The chat core's request for ``request``: its prompt as the one user message."""
    prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
    assert isinstance(prompt, str)  # parse() let only text through
    fields = request.model_dump(exclude_none=True, exclude={"prompt", *_TEXT_PARAMS})
    fields["messages"] = [{"role": "user", "content": prompt}]
    fields["completion"] = request.model_dump(include=set(_TEXT_PARAMS), exclude_none=True)
    lowered = chat_request_from(fields, text_completion=True)
    assert isinstance(lowered, TextChatRequest)
    return lowered
