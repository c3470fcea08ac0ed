"""The seam between the gateway and an upstream: one call in, one result (or a stream) out.

The gateway speaks OpenAI's chat format inside. Adapters translate a ``ChatCall``
into a provider's own wire format and its answer back into a ``ChatResult`` (or a
stream of ``ChatDelta``), raising ``UpstreamError`` subclasses for failures. Tests put
an upstream fake that speaks the provider's real protocol behind an adapter; they
never mock the adapter's callers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aigw.compiler.graph import Deployment, Price, Provider

from ..chat_request import ChatRequest
from ..errors import NoDeploymentAvailable, UpstreamServerError
from ..tokens import TokenCounter, audio_prompt_tokens


class ToldSoFar:
    """The usage a streaming provider has reported before its stream's end (Anthropic's
    ``message_start``, Gemini's running ``usageMetadata``), kept by its adapter as it reads:
    a stream cut before its end is billed these counts, and the gateway's estimate only
    for what they leave out (``guard.SentOutput.cut``)."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One attempt at one deployment; ``told``: its stream's usage reported so far (the
    one part of a call that changes, written by the adapter that streams it)."""

    request: ChatRequest
    deployment: Deployment
    prompt_tokens: int
    max_output_tokens: int
    told: ToldSoFar = field(default_factory=ToldSoFar, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens read from the provider's prompt cache
    cache_creation_tokens: int = 0  # prompt tokens written to it (Anthropic bills these)
    reasoning_tokens: int = 0  # output tokens spent thinking (in completion_tokens too)
    search_units: int = 0  # a rerank call's, as Cohere bills it (a query of <= 100 documents)
    images: int = 0  # an image call's, priced per image (of ``image_size``)
    image_size: str | None = None
    audio_seconds: float = 0.0  # a transcription's audio, as whisper is billed by the minute
    characters: int = 0  # a speech call's input, as tts is billed
    # Of prompt_tokens: audio not read from the provider's cache; of completion_tokens:
    # audio. Priced at the deployment's audio prices (8-16x the text ones at OpenAI).
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    # False: the provider reported none (an OpenAI-compatible server that ignores
    # include_usage, say); the adapters' guard counts the answer's tokens instead.
    reported: bool = True

    def __post_init__(self) -> None:
        # A provider's negative count would bill a credit and break the counters.
        if min(self.prompt_tokens, self.completion_tokens, self.cached_tokens,
               self.cache_creation_tokens, self.reasoning_tokens, self.search_units,
               self.images, self.audio_seconds, self.characters, self.audio_input_tokens,
               self.audio_output_tokens) < 0:
            raise ValueError(f"negative token counts in {self}")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost(self, price: Price) -> float:
        """What this usage costs at ``price``: every kind of token, unit and second it
        counts at its own price (the one place a call's usage is priced)."""
        # An upstream's audio count past the prompt's uncached share (or its output)
        # is billed as the share: the text tokens are not billed below nothing.
        fresh = self.prompt_tokens - self.cached_tokens - self.cache_creation_tokens
        return price.cost(self.prompt_tokens, self.completion_tokens, self.cached_tokens,
                          self.cache_creation_tokens, self.search_units, self.images,
                          self.image_size, self.audio_seconds, self.characters,
                          min(self.audio_input_tokens, max(0, fresh)),
                          min(self.audio_output_tokens, self.completion_tokens))


def unreported_usage(call: ChatCall) -> Usage:
    """The usage of an answer whose provider reported none: the prompt as the gateway
    counted it, its ``input_audio`` parts as audio tokens (as its hold priced them), the
    output to be counted from the answer (``GuardedAdapter``)."""
    return Usage(call.prompt_tokens, 0, reported=False,
                 audio_input_tokens=audio_prompt_tokens(call.request.messages))


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    content: str | None
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None
    logprobs: Any = None  # as an OpenAI-format upstream sent them
    # Message fields the gateway passes through as they came, unread: audio,
    # annotations, the legacy function_call (OpenAI-format upstreams only).
    extra: Mapping[str, Any] | None = None
    # The stop sequence the answer ended at, where the upstream says which (Anthropic's
    # do): /v1/messages answers stop_reason "stop_sequence" with it. OpenAI has no field.
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    model: str
    choices: tuple[Choice, ...]
    usage: Usage
    # The provider's id of the call (its x-request-id, request-id), where it gave one:
    # for a ticket to the provider. Never cached: a cached answer had no call.
    upstream_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: its id and name come first, then argument fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """A piece of a streamed answer for one choice, or its end, or (alone) the usage."""

    index: int = 0
    content: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: str | None = None
    logprobs: Any = None  # as in ``Choice``
    extra: Mapping[str, Any] | None = None
    stop_sequence: str | None = None  # with finish_reason, as in ``Choice``
    upstream_request_id: str | None = None  # on a stream's first, as in ``ChatResult``


class StreamedTools:
    """A provider's streamed tool-use blocks as OpenAI tool calls, numbered in order.

    A call with an empty input streams no argument fragment (Anthropic's and Bedrock's
    streams), so its arguments would end as "", which is not JSON; when its block ends
    with none, the call gets "{}", as the whole answer's ``json.dumps({})`` gives it."""

    def __init__(self) -> None:
        self._position: dict[int, int] = {}  # the provider's block index -> call index
        self._argued: set[int] = set()  # blocks that had an argument fragment

    def start(self, block: int, call_id: str, name: str) -> list[ChatDelta]:
        position = self._position[block] = len(self._position)
        return [ChatDelta(tool_calls=(ToolCallDelta(position, id=call_id, name=name,
                                                    arguments=""),))]

    def fragment(self, block: int, arguments: str) -> list[ChatDelta]:
        position = self._position.get(block)
        if position is None or not arguments:
            return []
        self._argued.add(block)
        return [ChatDelta(tool_calls=(ToolCallDelta(position, arguments=arguments),))]

    def stop(self, block: int) -> list[ChatDelta]:
        position = self._position.get(block)
        if position is None or block in self._argued:
            return []
        self._argued.add(block)
        return [ChatDelta(tool_calls=(ToolCallDelta(position, arguments="{}"),))]


class BlockStream:
    """What a reader of a stream of content blocks (Anthropic's Messages, Bedrock's
    ConverseStream) keeps: the usage counts the provider sent, whether ``end`` (the event
    that ends a whole answer) came, and the tool calls; ``last`` ends the stream."""

    end = ""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.counts: dict[str, Any] = {}
        self.stopped = False
        self._tools = StreamedTools()

    def last(self, call: ChatCall, usage: Callable[[Mapping[str, Any]], Usage]) -> ChatDelta:
        """The usage-only delta a stream ends with, its counts read by ``usage``; a stream
        cut before ``end`` is an error (``stream_cut``)."""
        if not self.stopped:
            raise stream_cut(self.provider, self.end)
        return ChatDelta(usage=usage(self.counts) if self.counts else unreported_usage(call))


_FLOAT32_MAX = 3.4028235e38  # the largest float32, as written: base64 packs "<f"


# One input to embed: text, or token ids (in the tokenizer of the model that made them).
EmbeddingInput = str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EmbeddingCall:
    """Inputs are all text or all token ids; token ids reach only the adapters of the
    provider types in ``registry.EMBEDS_TOKEN_IDS``."""

    deployment: Deployment
    inputs: tuple[EmbeddingInput, ...]
    dimensions: int | None
    user: str | None
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    model: str
    vectors: tuple[Sequence[float], ...]
    prompt_tokens: int

    @property
    def usage(self) -> Usage:
        """What it used, as a chat answer says it: its inputs, no output."""
        return Usage(self.prompt_tokens, 0)


def embedding_vector(value: object, provider: Provider) -> tuple[float, ...]:
    """One embedding as floats; anything but a non-empty list of finite numbers a float32
    holds is the provider's fault (a base64 string, say, which was not asked for). A
    NaN or infinity cannot be written as JSON, nor a number past float32 in base64."""
    if not isinstance(value, list) or not value:
        raise UpstreamServerError(
            f"provider '{provider.name}' returned an embedding that is not a list of numbers",
            provider=provider.name)
    vector = tuple(map(float, value))  # a number in a string passes; anything else raises
    if not all(abs(number) <= _FLOAT32_MAX for number in vector):  # False for NaN too
        raise UpstreamServerError(
            f"provider '{provider.name}' returned an embedding with a number that is not "
            f"a finite float32 (NaN, infinite, or past {_FLOAT32_MAX:g})",
            provider=provider.name)
    return vector


@dataclass(frozen=True, slots=True)
class RerankCall:
    """``documents`` ranked by relevance to ``query``; ``prompt_tokens``: the query with
    each document, as the gateway counted them (the call's hold, and its bill where the
    provider reports no count)."""

    deployment: Deployment
    query: str
    documents: tuple[str, ...]
    top_n: int | None
    max_tokens_per_doc: int | None
    prompt_tokens: int

    @property
    def search_units(self) -> int:
        """Cohere's billing unit, where the provider reports none: a query over up to
        100 documents."""
        return -(-len(self.documents) // DOCUMENTS_PER_SEARCH_UNIT)


DOCUMENTS_PER_SEARCH_UNIT = 100


@dataclass(frozen=True, slots=True)
class RerankResult:
    model: str
    ranking: tuple[tuple[int, float], ...]  # (document index, relevance score), best first
    prompt_tokens: int
    search_units: int

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, 0, search_units=self.search_units)


def parse_ranking(document: Mapping[str, Any], call: RerankCall,
                  provider: Provider) -> tuple[tuple[int, float], ...]:
    """The ``results`` of a Cohere- or Jina-shaped rerank answer, best first, at most
    ``top_n``: an index out of range, twice, or a score that is not a finite number is
    the provider's fault (which document would the client be shown?)."""
    rows = document.get("results")
    if not isinstance(rows, list) or len(rows) > len(call.documents):
        raise UpstreamServerError(
            f"provider '{provider.name}' returned "
            f"{len(rows) if isinstance(rows, list) else 'no'} results for "
            f"{len(call.documents)} documents", provider=provider.name)
    ranking: dict[int, float] = {}
    for row in rows:
        index, score = row.get("index"), float(row.get("relevance_score"))
        if isinstance(index, bool) or not isinstance(index, int) \
                or not 0 <= index < len(call.documents) or index in ranking \
                or not abs(score) < float("inf"):
            raise UpstreamServerError(
                f"provider '{provider.name}' returned a result that names no document once "
                f"(index {index!r}) or has no finite score ({score!r})", provider=provider.name)
        ranking[index] = score
    best = sorted(ranking.items(), key=lambda pair: (-pair[1], pair[0]))
    return tuple(best[:call.top_n] if call.top_n is not None else best)


def reported_count(value: object, provider: Provider, what: str) -> int | None:
    """A count a provider reported (tokens, search units), or None where it reported
    none; a negative or non-numeric one is its fault, not a refund to bill."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value < float("inf"):
        raise UpstreamServerError(
            f"provider '{provider.name}' reported {what} that is not a count ({value!r})",
            provider=provider.name)
    return int(value)


@dataclass(frozen=True, slots=True)
class ImageCall:
    """``n`` images of ``prompt``; ``params``: the request's other fields as the client
    set them (size, quality, style, response_format, background, ...), for an
    OpenAI-shaped upstream to take as they are."""

    deployment: Deployment
    prompt: str
    n: int
    size: str | None
    response_format: str | None
    params: Mapping[str, Any]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    url: str | None
    b64_json: str | None
    revised_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class ImageResult:
    """``answer``: the upstream's fields besides data and usage (gpt-image-1's size,
    quality, background, output_format), passed on; ``reported_usage``: its usage as it
    sent it, or None (DALL-E reports none)."""

    model: str
    created: int
    images: tuple[GeneratedImage, ...]
    size: str | None  # what the images are billed at: the answer's size, else the request's
    prompt_tokens: int
    output_tokens: int
    answer: Mapping[str, Any]
    reported_usage: Mapping[str, Any] | None

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.output_tokens, images=len(self.images),
                     image_size=self.size)


@dataclass(frozen=True, slots=True)
class ModerationCall:
    """``input`` as the client sent it: a text, texts, or one list of parts; ``results``:
    how many results the answer must hold (one a text, one for the parts)."""

    deployment: Deployment
    input: str | tuple[str, ...] | tuple[Mapping[str, Any], ...]
    results: int
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class ModerationResult:
    id: str
    model: str
    results: tuple[Mapping[str, Any], ...]  # OpenAI's: flagged, categories, category_scores
    prompt_tokens: int

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, 0)


def stream_cut(provider: Provider, end: str) -> UpstreamServerError:
    """The error of a stream that closed cleanly before ``end``, the event (or field)
    that ends a whole answer: what came is not a whole answer, so the client is told
    rather than given an end it would trust."""
    return UpstreamServerError(f"provider '{provider.name}' ended the stream before {end}",
                               provider=provider.name)


def not_served(deployment: Deployment, provider: Provider, what: str) -> NoDeploymentAvailable:
    """The error of an adapter asked for what its provider's API has not (images,
    moderation, ...; ``Refusals``): the compiler refuses such a deployment (AGW321,
    AGW354), so it is never raised for a config that compiled."""
    return NoDeploymentAvailable(
        f"Deployment '{deployment.name}' is on provider '{provider.name}' ({provider.type}), "
        f"which has no {what} API this gateway speaks.")


class Refusals:
    """The calls of every API an adapter's provider lacks, each refused with
    ``not_served``: an adapter inherits them and defines the calls its provider serves
    (``class BedrockAdapter(Refusals)`` defines ``complete`` and ``stream``, and so
    refuses embeddings, rerank, images and moderation alike)."""

    provider: Provider

    async def complete(self, call: ChatCall) -> ChatResult:
        raise not_served(call.deployment, self.provider, "chat")

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        raise not_served(call.deployment, self.provider, "chat")
        yield  # an async generator, as the protocol's stream is

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        raise not_served(call.deployment, self.provider, "embeddings")

    async def rerank(self, call: RerankCall) -> RerankResult:
        raise not_served(call.deployment, self.provider, "rerank")

    async def generate_images(self, call: ImageCall) -> ImageResult:
        raise not_served(call.deployment, self.provider, "image generation")

    async def moderate(self, call: ModerationCall) -> ModerationResult:
        raise not_served(call.deployment, self.provider, "moderation")


@runtime_checkable
class CountsTokens(Protocol):
    """An adapter whose provider counts a prompt's tokens exactly for its model (Gemini's
    and Vertex's ``countTokens``): what count-tokens endpoints ask, where they can."""

    async def count_tokens(self, call: ChatCall) -> int | None:
        """The prompt tokens of ``call`` as its model counts them; None: this
        deployment's model has no such count here (Claude on Vertex)."""
        ...


class ChatAdapter(Protocol):
    """What every provider adapter offers. ``stream`` must end with a usage-only delta."""

    async def complete(self, call: ChatCall) -> ChatResult: ...

    def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]: ...

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult: ...

    async def rerank(self, call: RerankCall) -> RerankResult: ...

    async def generate_images(self, call: ImageCall) -> ImageResult: ...

    async def moderate(self, call: ModerationCall) -> ModerationResult: ...

    async def aclose(self) -> None: ...


async def close_deltas(deltas: AsyncIterator[ChatDelta]) -> None:
    """Close a stream (an async generator's ``aclose``), so that its provider's response
    is released now and not when the generator is collected."""
    closer = getattr(deltas, "aclose", None)
    if closer is not None:
        await closer()


class AdapterFactory(Protocol):
    def __call__(self, provider: Provider, counter: TokenCounter) -> ChatAdapter: ...
