"""POST /v1/images/edits: images edited from the client's images (and a mask) and a prompt,
over the providers that edit them.

Request, OpenAI's multipart form: ``image`` (one file; gpt-image models take up to 16, as
``image[]``), ``mask`` (optional), ``prompt``, ``model``, and ``n``, ``size``,
``quality``, ``response_format``, ``background``, ``output_format``, ``input_fidelity``,
``stream``, ``partial_images``, ``user``, ... The body is refused past
``settings.max_image_upload_bytes`` as it arrives (413), read by the shared multipart
reader (runtime/multipart.py: its refusals of a hostile form), and its fields validated
as a generation's are (``ImageRequest``). The form goes upstream as the client sent it
(its files, its fields in its order, the prompt as the route's input guardrails left
it, the deployment's model); the answer is a generation's: ``{created, data: [{url |
b64_json}], usage?}``.

Everything else is a generation's (runtime/images.py): the route, key, Cedar, limits
and hold, the attempt loop, billing per image at its size or in the answer's tokens
(gpt-image-1's ``usage.input_tokens`` counts the images sent), ledger, access log,
metrics and tracing. The hold adds ``IMAGE_INPUT_TOKENS`` for each image sent. Every
provider that draws images edits them (providers/image_edits.py: OpenAI, Azure OpenAI,
OpenAI-compatible servers, echo, which answers its PNGs offline, the images unread).
``stream: true`` answers OpenAI's ``image_edit.partial_image`` and
``image_edit.completed`` events, passed on as they come (runtime/media_stream.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError
from starlette.responses import Response

from aigw.compiler.graph import ApiKey, Deployment

from .chat import resolve_route
from .chat_request import bad_request
from .errors import BadRequest, quoted
from .images import ImageRequest, at_most_n, check_stream, drawn, images_held
from .multipart import FormUpload, FormWords, MultipartForm, flag_field
from .providers.base import ImageCall, ImageResult, Usage
from .providers.events import EventStream
from .providers.image_edits import ImageEditCall, image_edit_adapter
from .route_call import Weighed
from .routing.candidates import Candidate, InputAsk
from .upstream_aiohttp import FormFile

if TYPE_CHECKING:
    from .exchange import Exchange

# OpenAI's bound: gpt-image models edit up to 16 images at once (DALL-E 2 one).
MAX_EDIT_IMAGES = 16
# What each image sent is held at, in input tokens: a 1024x1024 image at gpt-image-1's
# high input fidelity (135 at low). The bill is the answer's own count.
IMAGE_INPUT_TOKENS = 3_050
_IMAGE_FIELDS = ("image", "image[]")
# The files an edit takes: its images, a mask, and gpt-image's newer markup (sent on).
_FILES = (*_IMAGE_FIELDS, "mask", "markup")
# A form's fields besides the files: OpenAI's edit takes about fifteen.
_MAX_FIELDS = 64
# The most bytes of one: a prompt is at most 32,000 characters (four bytes each at most).
_FIELD_MOST = 1 << 20
_FORM = FormWords(file="an image", cut_short="The multipart body ends before its closing "
                  "boundary ('{closing}'): it was cut short.")
_INTEGERS = ("n", "partial_images", "output_compression")


class ImageEditRequest(ImageRequest):
    input_fidelity: Literal["high", "low"] | None = None


async def edit_images(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    """Counted against the key's (its team's, the end user's) rpm, tpm and budget, and
    written to the spend ledger, as a generation is."""
    form = _form(exchange, body)
    files = _files(form.uploads)
    request = _request(form.fields)
    check_stream(request)
    exchange.identify(key, request.user)
    route = resolve_route(exchange.live.graph, request.model)
    live = exchange.live
    params = request.model_dump(exclude_none=True, exclude={"model", "prompt", "n"})
    images = sum(file.field in _IMAGE_FIELDS for file in files)
    image_tokens = images * IMAGE_INPUT_TOKENS
    # Sent on as the client wrote them, but for the model (the deployment's), the prompt
    # (as checked) and stream (as read here: an upstream reading '1' otherwise would
    # answer whole where events are awaited).
    forwarded = tuple((name, ("true" if request.stream else "false") if name == "stream"
                       else value) for name, value in form.fields if name != "model")

    def weigh(texts: tuple[str, ...]) -> Weighed:
        tokens = live.counter.count(texts[0])
        # Cut short, the images asked for were most likely drawn and billed, the images
        # sent read.
        return Weighed(tokens, InputAsk(live.adapters, "image", tokens, tokens, "prompt"),
                       Usage(tokens + image_tokens, 0,
                             images=1 if request.stream else request.n,
                             image_size=request.size))

    weighed = weigh((request.prompt,))

    def edit(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> ImageEditCall:
        (prompt,) = texts  # as the route's input guardrails left it
        # The prompt's tokens: an answer without usage (DALL-E's) is billed per image,
        # and shows no guess at the images' tokens as counted.
        drawing = ImageCall(candidate.deployment, prompt, request.n, request.size,
                            request.response_format, params, tokens)
        fields = tuple((name, prompt if name == "prompt" else value)
                       for name, value in forwarded)
        return ImageEditCall(drawing, fields, files)

    def call(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[ImageResult]]:
        return partial(_edited, candidate, edit(candidate, texts, tokens))

    def events(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[EventStream]]:
        return partial(image_edit_adapter(candidate.adapter, candidate.deployment)
                       .edit_image_events, edit(candidate, texts, tokens))

    def held(deployment: Deployment, sent: Weighed) -> float:
        return images_held(deployment, sent.prompt_tokens + image_tokens, request.n,
                           request.size)

    return await drawn(exchange, key, route, request, weighed, weigh, held, call, events)


async def _edited(candidate: Candidate, call: ImageEditCall) -> ImageResult:
    result = await image_edit_adapter(candidate.adapter, candidate.deployment).edit_images(call)
    return at_most_n(result, call.drawing)


def _form(exchange: Exchange, body: bytes) -> MultipartForm:
    """The form read from the body already read (within its cap); 400s naming what is
    wrong (runtime/multipart.py)."""
    content_type = exchange.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):  # any case (RFC 9110)
        raise BadRequest("The request must be multipart/form-data, with the image in 'image' "
                         f"(it is {content_type or 'of no content type'}).", param="image")
    form = MultipartForm(content_type, _FORM, most_fields=_MAX_FIELDS, field_most=_FIELD_MOST,
                         unique=True, files=_FILES, most_files=MAX_EDIT_IMAGES + 2,
                         keeps_files=True)
    form.write(body)
    form.end(len(body), None)  # read whole by read_body: no declared length to check
    return form


def _files(uploads: tuple[FormUpload, ...]) -> tuple[FormFile, ...]:
    """The form's files as they are sent on: at least one image, at most
    ``MAX_EDIT_IMAGES``, at most one mask and one markup, none empty."""
    images = sum(upload.field in _IMAGE_FIELDS for upload in uploads)
    if not images:
        given = " (a mask is the part of an image to edit: send the image too)" \
            if any(upload.field == "mask" for upload in uploads) else ""
        raise BadRequest("Missing required parameter: 'image' (the image to edit, as a "
                         f"multipart file){given}.", param="image")
    if images > MAX_EDIT_IMAGES:
        raise BadRequest(f"The upload has {images} images; an edit takes at most "
                         f"{MAX_EDIT_IMAGES}.", param="image")
    for name in ("mask", "markup"):
        if sum(upload.field == name for upload in uploads) > 1:
            raise BadRequest(f"The upload has more than one '{name}'.", param=name)
    for upload in uploads:
        if not upload.data:
            raise BadRequest(f"'{upload.field}' ({quoted(upload.filename)}) is empty.",
                             param=upload.field)
    return tuple(FormFile(upload.field, upload.filename or "image",
                          upload.content_type or "application/octet-stream", upload.data)
                 for upload in uploads)


def _request(fields: tuple[tuple[str, str], ...]) -> ImageEditRequest:
    """The form's fields validated as a generation's body is (each given once: the
    reader refused a repeated one): a count read as an integer, ``stream`` as a flag."""
    values: dict[str, object] = dict(fields)
    for name in _INTEGERS:
        value = values.get(name)
        if isinstance(value, str):
            try:
                values[name] = int(value)
            except ValueError:
                raise BadRequest(f"Invalid value for '{name}': {quoted(value)}; expected an "
                                 "integer.", param=name) from None
    if "stream" in values:
        values["stream"] = flag_field(fields, "stream")
    if "model" not in values:
        raise BadRequest("Missing required parameter: 'model'.", param="model")
    try:
        return ImageEditRequest.model_validate(values)
    except ValidationError as exc:
        raise bad_request(exc) from exc
