"""The OpenAI chat completions request, validated at the door.

Known fields are type-checked the way OpenAI checks them; unknown fields are kept
(``extra="allow"``) so that an OpenAI-compatible upstream can still receive them.
A bad body becomes a ``BadRequest`` naming the offending parameter.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from .errors import BadRequest

# The largest token id a prompt or an input may hold: past int32 is no vocabulary's (nor
# a number every server's tensors hold).
MAX_TOKEN_ID = 2**31 - 1


# Booleans of OpenAI's chat API that aigw passes on as they came (extras, not fields: the
# adapters read them there), checked as the fields are: OpenAI refuses "yes" or 1 for
# one, where an upstream of another family might take it as set.
PASSED_ON_BOOLEANS = frozenset({"logprobs", "parallel_tool_calls", "store"})


def null_is(default: object) -> BeforeValidator:
    """OpenAI's spec lets an optional parameter be null, meaning what leaving it out
    means: for one with a default value rather than None, null is that default."""
    return BeforeValidator(lambda value: default if value is None else value)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text: the string content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: Annotated[StrictBool, null_is(False)] = False


class ChatRequest(BaseModel):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: Annotated[StrictBool, null_is(False)] = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128), null_is(1)] = 1
    # NaN and 1e999 (an infinity) are refused as what they are: "less than or equal to
    # 2" said of NaN sent a client looking for a number too large.
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # True on a request lowered from Anthropic's Messages API that carries cache_control
    # marks or top_k (``HintedChatRequest``): Anthropic's own hints then, which the
    # Anthropic-family adapters honour and the OpenAI-format ones leave out (the app
    # never wrote them for such a server, and some refuse them). Those a client sends
    # itself pass through as ever. A class's, not a private attribute: pydantic sets
    # those up (a deep copy of the default) on every request parsed.
    anthropic_hints: ClassVar[bool] = False
    # True on a request from the legacy /v1/completions (``TextChatRequest``): its
    # one user message is the prompt, which OpenAI-format upstreams get as a raw prompt.
    text_completion: ClassVar[bool] = False
    # True on a request from Gemini's API whose functionCallingConfig mode is VALIDATED
    # (``ValidatedChatRequest``): the model answers text or calls a function, its calls
    # held to their schemas. In OpenAI's terms it is tool_choice auto with strict
    # functions (where a schema can be strict); a Gemini-family adapter sends VALIDATED
    # itself, which holds every schema, strict or not.
    validated_calls: ClassVar[bool] = False

    @property
    def samples(self) -> int:
        """How many completions the upstream writes (and bills) per request: ``n``."""
        return self.n

    @property
    def output_limit(self) -> int | None:
        """The client's cap on output tokens (max_completion_tokens wins over max_tokens)."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def speaks(self) -> bool:
        """Whether it asks for spoken answers (``modalities`` with "audio"), whose output
        tokens are billed at the audio output price."""
        modalities = (self.model_extra or {}).get("modalities")
        return isinstance(modalities, list) and "audio" in modalities

    @property
    def audio_format(self) -> str | None:
        """The format a whole spoken answer's audio is asked in (``audio.format``); a
        streamed one's is pcm16 whatever is asked (``tokens.STREAMED_AUDIO_FORMAT``)."""
        audio = (self.model_extra or {}).get("audio")
        chosen = audio.get("format") if isinstance(audio, dict) else None
        return chosen if isinstance(chosen, str) else None


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a request body; any problem is a ``BadRequest`` naming the field."""
    try:
        request = ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc
    # A parameter aigw passes on as it came (presence_penalty, say) is not validated by a
    # field; a number too large for a float (1e999) parses as infinity, which no JSON
    # encoder will send upstream.
    for name, value in (request.model_extra or {}).items():
        if not finite(value):
            raise BadRequest(f"Invalid value for '{name}': numbers must be finite.", param=name)
        if name in PASSED_ON_BOOLEANS and value is not None and not isinstance(value, bool):
            raise BadRequest(f"Invalid value for '{name}': Input should be a valid boolean.",
                             param=name)
    if request.tools is not None and not finite(request.tools):
        raise BadRequest("Invalid value for 'tools': numbers must be finite.", param="tools")
    return request


def chat_request_from(body: dict[str, Any], *, anthropic_hints: bool = False,
                      text_completion: bool = False,
                      validated_calls: bool = False) -> ChatRequest:
    """A request built by the gateway from another wire format (Anthropic's Messages):
    what does not validate (an empty content list, say) is the client's ``BadRequest``,
    never a 500. ``anthropic_hints``: see ``ChatRequest.anthropic_hints``;
    ``text_completion``: a ``TextChatRequest``, from /v1/completions;
    ``validated_calls``: see ``ChatRequest.validated_calls``."""
    kind: type[ChatRequest]
    if validated_calls:
        kind = HintedValidatedChatRequest if anthropic_hints else ValidatedChatRequest
    else:
        kind = (HintedChatRequest if anthropic_hints else
                TextChatRequest if text_completion else ChatRequest)
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc


class HintedChatRequest(ChatRequest):
    """A request from Anthropic's Messages API with Anthropic's hints in it (see
    ``ChatRequest.anthropic_hints``)."""

    anthropic_hints: ClassVar[bool] = True


class ValidatedChatRequest(ChatRequest):
    """A request from Gemini's API of function calling mode VALIDATED (see
    ``ChatRequest.validated_calls``)."""

    validated_calls: ClassVar[bool] = True


class HintedValidatedChatRequest(HintedChatRequest):
    """Of mode VALIDATED, with the top_k that Gemini's API keeps as Anthropic's is."""

    validated_calls: ClassVar[bool] = True


class TextParams(BaseModel):
    """What only a raw-prompt completion takes (OpenAI's legacy /v1/completions): an
    OpenAI-format upstream gets them as they came; no chat API has them."""

    model_config = ConfigDict(extra="forbid")

    suffix: str | None = None
    echo: Annotated[StrictBool, null_is(False)] = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(ge=1, le=20)] | None = None

    def asked(self) -> tuple[str, ...]:
        """The parameters set that only a raw-prompt completion can honour.

        >>> TextParams(suffix="}", best_of=1).asked()
        ('suffix',)
        """
        asked = (("suffix", self.suffix is not None), ("echo", self.echo),
                 ("logprobs", self.logprobs is not None),
                 ("best_of", self.best_of is not None and self.best_of > 1))
        return tuple(name for name, set_ in asked if set_)


class TextChatRequest(ChatRequest):
    """A /v1/completions request lowered into the chat core: its prompt is the one user
    message (what guardrails check, caches key on and chat-only providers are sent);
    ``completion`` holds the rest of what the legacy API takes.

    ``prompt_ids``: a prompt of token ids, as it came, sent as it came to the upstream's
    own /completions; the user message then holds them written out (``"1 2 3"``), what
    the echo provider answers, and no text a guardrail could check."""

    text_completion: ClassVar[bool] = True

    completion: TextParams = Field(default_factory=TextParams)
    prompt_ids: tuple[int, ...] | None = None

    @property
    def samples(self) -> int:
        """``best_of`` completions are written (and billed) to return ``n`` of them."""
        return max(self.n, self.completion.best_of or 1)


def finite(value: object) -> bool:
    """Whether every number in ``value`` (nested lists and dicts too) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(item) for item in value.values())
    if isinstance(value, list):
        return all(finite(item) for item in value)
    return True


def bad_request(exc: ValidationError) -> BadRequest:
    """The client-facing error for a body that failed validation, naming the first field."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return BadRequest(f"We could not parse the JSON body of your request: {first['msg']}")
    if first["type"] in ("model_type", "dict_type") and not first["loc"]:
        return BadRequest("The request body must be a JSON object.")
    param = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        return BadRequest(f"Missing required parameter: '{param}'.", param=param)
    return BadRequest(f"Invalid value for '{param}': {first['msg']}.", param=param)
