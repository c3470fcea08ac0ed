"""POST /v1/images/generations: images from a prompt, over the providers that draw them.

Request, as OpenAI takes it: ``{model, prompt, n?, size?, quality?, style?,
response_format? (url | b64_json), background?, output_format?, user?, ...}``; answer
OpenAI's ``{created, data: [{url | b64_json, revised_prompt?}], usage?}`` (and the
upstream's size, quality, background, output_format where it sent them). The fields
besides ``model`` go to an OpenAI-shaped upstream as the client set them.

The call goes through the stages of runtime/route_call.py, as an embeddings call does
(key, Cedar, limits and budget, the attempt loop, billing, ledger, access log, metrics,
tracing: GenAI's ``generate_content``). Its hold is ``n`` images at the size's price
(``price.per_image_by_size``, else ``per_image``; the dearest where no size is priced),
with the prompt's tokens and, for a token-billed model (gpt-image-1), ``n`` times the
deployment's max_output_tokens at its output price; the bill is the images answered at
the size they came in (one the table does not name: ``per_image``, else the dearest
size, never nothing), with the tokens the answer's ``usage`` reports. A size that no
member prices, where sizes alone are priced, is a 400 naming ``size``.

The route's input guardrails check the prompt (the upstream is sent it as they left it);
its output guardrails each image's ``revised_prompt`` (DALL-E 3 rewrites the prompt, and
the client reads the rewrite): a redaction is what the client receives, a block
withholds the whole answer (a 400 ``guardrail_blocked``, the images billed), as a
transcript's is.

``stream: true`` (gpt-image-1, one image, ``partial_images`` 0 to 3): OpenAI's events,
``image_generation.partial_image`` then ``image_generation.completed``, passed on as
they come (runtime/media_stream.py) and billed for the completed event's usage. They
hold no text for output guardrails to read (an image, its size, quality, format and
usage: gpt-image models do not revise the prompt, and DALL-E 3, which does, does not
stream).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey, Deployment, Route

from .chat import resolve_route
from .chat_request import bad_request
from .errors import BadRequest, quoted
from .guardrails import Check
from .media_stream import passed_on
from .providers.base import ImageCall, ImageResult, Usage
from .providers.events import EventStream, image_events_adapter
from .route_call import Weighed, answer_headers, call_route
from .routing.candidates import Candidate, InputAsk
from .telemetry.tracing import Span

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("aigw.routing")

# OpenAI's own bounds: 1 to 10 images a request (DALL-E 3 takes 1), a prompt of at most
# 32,000 characters (gpt-image-1's; DALL-E's are shorter, and their API says so).
MAX_IMAGES = 10
MAX_PROMPT_CHARS = 32_000


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer fields (moderation, ...) pass through

    model: Annotated[str, Field(min_length=1)]
    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    n: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGES)] = 1
    size: Annotated[StrictStr, Field(pattern=r"^(auto|[1-9][0-9]*x[1-9][0-9]*)$")] | None = None
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    user: StrictStr | None = None
    stream: StrictBool | None = None
    partial_images: Annotated[StrictInt, Field(ge=0, le=3)] | None = None


async def generate_images(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    """Counted against the key's (its team's, the end user's) rpm, tpm and budget, and
    written to the spend ledger, as an embeddings call is."""
    try:
        request = ImageRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc
    check_stream(request)
    exchange.identify(key, request.user)
    route = resolve_route(exchange.live.graph, request.model)
    live = exchange.live
    params = request.model_dump(exclude_none=True, exclude={"model", "prompt", "n"})

    def weigh(texts: tuple[str, ...]) -> Weighed:
        tokens = live.counter.count(texts[0])
        # Cut short, the images asked for were most likely drawn and billed.
        return Weighed(tokens, InputAsk(live.adapters, "image", tokens, tokens, "prompt"),
                       Usage(tokens, 0, images=1 if request.stream else request.n,
                             image_size=request.size))

    weighed = weigh((request.prompt,))

    def call(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[ImageResult]]:
        (prompt,) = texts  # as the route's input guardrails left it
        drawing = ImageCall(candidate.deployment, prompt, request.n, request.size,
                            request.response_format, params, tokens)
        return partial(_drawn, candidate, drawing)

    def held(deployment: Deployment, sent: Weighed) -> float:
        return images_held(deployment, sent.prompt_tokens, request.n, request.size)

    def events(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[EventStream]]:
        (prompt,) = texts  # as the route's input guardrails left it
        drawing = ImageCall(candidate.deployment, prompt, 1, request.size,
                            request.response_format, params, tokens)
        return partial(image_events_adapter(candidate.adapter, candidate.deployment)
                       .generate_image_events, drawing)

    return await drawn(exchange, key, route, request, weighed, weigh, held, call, events)


_T = TypeVar("_T")
_Called = Callable[[Candidate, tuple[str, ...], int], Callable[[], Awaitable[_T]]]


async def drawn(exchange: Exchange, key: ApiKey, route: Route, request: ImageRequest,
                weighed: Weighed, weigh: Callable[[tuple[str, ...]], Weighed],
                held: Callable[[Deployment, Weighed], float], call: _Called[ImageResult],
                events: _Called[EventStream]) -> Response:
    """``route`` called for images (drawn or edited: ``call`` and ``events`` make the
    attempts), its prompt through the input guardrails: the events passed on as they
    come when streamed, else the images answered whole."""
    routed = partial(
        call_route, exchange, key, route, kind="image", model=request.model,
        prompt_tokens=weighed.prompt_tokens, cost=held, operation="generate_content",
        check=partial(check_size, route.name, request.size),
        cut=weighed.cut, ask=weighed.ask, texts=(request.prompt,), weigh=weigh)
    if request.stream:
        return await passed_on(exchange, route,
                               partial(routed, call=events, noted=noted_image_events))
    won = await routed(call=call, noted=noted_images, checked=checked_images)
    return JSONResponse(images_body(won.value), headers=answer_headers(exchange, route, won))


def check_stream(request: ImageRequest) -> None:
    """A streamed image (``stream: true``) is one image: another ``n`` is a 400."""
    if request.stream and request.n != 1:
        raise BadRequest("A streamed image ('stream': true) is one image: leave 'n' out or "
                         f"set it to 1 (it is {request.n}).", param="n")


def images_held(deployment: Deployment, input_tokens: int, n: int, size: str | None) -> float:
    """What ``n`` images of ``size`` are held at: the input's tokens, ``n`` times the
    deployment's max_output_tokens (a token-billed model's), and ``n`` images at the
    size's price (the dearest where the size is not priced)."""
    price = deployment.price
    return (price.cost(input_tokens, n * deployment.max_output_tokens)
            + n * price.dearest_image(size))


def check_size(route: str, size: str | None, members: list[Deployment]) -> None:
    """A 400 naming ``size``, before the request is admitted, for a size no member of
    the route prices: priced by size alone, a deployment's table is the sizes it draws
    (the upstream's own are the model's, which aigw does not know). Passed on, it was
    held at the dearest size and billed nothing, or, by an upstream that drew it, an
    image aigw has no price for."""
    if size is None or any(member.price.prices_image(size) for member in members):
        return
    sizes = sorted({named for member in members for named, _ in member.price.image_by_size})
    raise BadRequest(f"Invalid value: {quoted(size)}. Supported values for '{route}' are: "
                     + ", ".join(f"'{named}'" for named in sizes) + ".", param="size")


async def _drawn(candidate: Candidate, drawing: ImageCall) -> ImageResult:
    """The images ``drawing`` asked for, at most its ``n``: an upstream that answered
    more has the first ``n`` passed on and billed (a token-billed model's output tokens
    in proportion), its excess logged. The hold was for ``n``, and the client asked for
    ``n``; a 502 instead would bill nothing for images the provider most likely charged,
    and send the prompt to the next member to be drawn and charged again."""
    return at_most_n(await candidate.adapter.generate_images(drawing), drawing)


def at_most_n(result: ImageResult, drawing: ImageCall) -> ImageResult:
    """``result`` cut to the ``n`` images ``drawing`` asked for (see ``_drawn``)."""
    if len(result.images) <= drawing.n:
        return result
    log.warning("deployment '%s' answered %d images where %d were asked: the first %d "
                "passed on and billed", drawing.deployment.name, len(result.images),
                drawing.n, drawing.n)
    return replace(result, images=result.images[:drawing.n],
                   output_tokens=result.output_tokens * drawing.n // len(result.images))


async def checked_images(result: ImageResult, check: Check) -> ImageResult:
    """``result`` with each image's ``revised_prompt`` (DALL-E 3's rewrite of the prompt,
    a text the client reads) through the route's output guardrails; ``result`` itself
    when none changed. The images themselves are no text to read."""
    revised = tuple(image.revised_prompt or "" for image in result.images)
    if not any(revised):
        return result
    checked = await check.texts(revised)
    if checked is revised:
        return result
    return replace(result, images=tuple(
        image if image.revised_prompt is None else replace(image, revised_prompt=text)
        for image, text in zip(result.images, checked, strict=True)))


def noted_images(span: Span, result: ImageResult) -> None:
    span.set("gen_ai.response.model", result.model)
    span.set("gen_ai.usage.input_tokens", result.prompt_tokens)
    span.set("gen_ai.usage.output_tokens", result.output_tokens)


def noted_image_events(span: Span, result: EventStream) -> None:
    span.set("gen_ai.usage.input_tokens", result.usage.prompt_tokens)


def images_body(result: ImageResult) -> dict[str, object]:
    data: list[dict[str, Any]] = []
    for image in result.images:
        row: dict[str, Any] = {"b64_json": image.b64_json} if image.b64_json is not None \
            else {"url": image.url}
        if image.revised_prompt is not None:
            row["revised_prompt"] = image.revised_prompt
        data.append(row)
    body: dict[str, object] = {**result.answer, "created": result.created, "data": data}
    if result.reported_usage is not None:
        body["usage"] = result.reported_usage
    return body

