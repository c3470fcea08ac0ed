"""The legacy /v1/completions request, validated at the door and lowered into the chat core.

    {"model", "prompt": "def f(", "suffix": ..., "max_tokens": 16, ...}
        -> TextChatRequest(messages=[user "def f("], completion=TextParams(suffix=...))

One prompt a request: a string, or a list holding one string (what the SDK sends for
``prompt=[text]``), or token ids: a list of ints (or a list holding one), each 0 to
``MAX_TOKEN_ID``, as OpenAI's API and vLLM take them. Several prompts are a 400 naming
``prompt``: the gateway does not fan a request out. Token ids are in the tokenizer of
the model that made them, which the gateway cannot know: they go as they came to an
OpenAI-format deployment's own /completions (``prompt_ids``), count one token each, and
no chat-only provider is sent them (runtime/completions.py).
``max_tokens`` is 16 when left out or null, as OpenAI's API (and vLLM's) default it,
so the hold, the cap and every provider agree on what the client asked for. The other
parameters (presence_penalty, logit_bias...) pass on as chat's unknown ones do.
"""

from __future__ import annotations

from typing import Annotated, cast

from pydantic import ConfigDict, Field, StrictBool, StrictInt, ValidationError

from .chat_request import (
    MAX_TOKEN_ID,
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
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    stream: Annotated[StrictBool, null_is(False)] = False
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
    _one_prompt(request.prompt)
    if request.best_of is not None and request.best_of < request.n:
        raise BadRequest("best_of must be greater than or equal to n.", param="best_of")
    return request


def _bad_prompt(exc: ValidationError) -> BadRequest | None:
    """A prompt that is none of its four shapes: one message naming the shapes, where
    pydantic would name the first of its four failures (``prompt.str``)."""
    first = exc.errors(include_url=False)[0]
    if first["loc"] and first["loc"][0] == "prompt" and first["type"] != "missing":
        return BadRequest("Invalid value for 'prompt': expected a string (or a list holding "
                          "one string), or token ids (a list of integers).", param="prompt")
    return None


def _one_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> None:
    """A 400 naming ``prompt`` unless it is one prompt: a text, or token ids in range."""
    if isinstance(prompt, str):
        return
    if not prompt:
        raise BadRequest("Invalid value for 'prompt': the list is empty.", param="prompt")
    ids = prompt[0]
    if isinstance(ids, int):  # one prompt of token ids: [1, 2, 3]
        ids = cast("list[int]", prompt)
    elif len(prompt) > 1:  # texts, or lists of token ids
        raise BadRequest(f"'prompt' holds {len(prompt)} prompts; aigw serves one prompt a "
                         "request: send each as a request of its own.", param="prompt")
    elif isinstance(ids, str):
        return
    elif not ids:  # [[]]
        raise BadRequest("Invalid value for 'prompt': its list of token ids is empty.",
                         param="prompt")
    if min(ids) < 0 or max(ids) > MAX_TOKEN_ID:
        raise BadRequest(f"'prompt' holds a token id out of range (0 to {MAX_TOKEN_ID}).",
                         param="prompt")


def _picked(prompt: str | list[str] | list[int] | list[list[int]]) -> str | list[int]:
    """The one prompt of a request ``parse()`` let through."""
    if isinstance(prompt, str):
        return prompt
    first = prompt[0]
    return first if isinstance(first, str | list) else cast("list[int]", prompt)


def to_chat_request(request: CompletionRequest) -> TextChatRequest:
    """The chat core's request for ``request``: its prompt as the one user message (token
    ids written out there, and kept as they came in ``prompt_ids``)."""
    prompt = _picked(request.prompt)
    fields = request.model_dump(exclude_none=True, exclude={"prompt", *_TEXT_PARAMS})
    if isinstance(prompt, str):
        fields["messages"] = [{"role": "user", "content": prompt}]
    else:
        fields["messages"] = [{"role": "user", "content": " ".join(map(str, prompt))}]
        fields["prompt_ids"] = tuple(prompt)
    fields["completion"] = request.model_dump(include=set(_TEXT_PARAMS), exclude_none=True)
    lowered = chat_request_from(fields, text_completion=True)
    assert isinstance(lowered, TextChatRequest)
    return lowered
