"""A real ``aigw serve`` process serving POST /v1/images/edits over OpenAI's and Azure OpenAI's
image APIs (the OpenAI fake) and echo's offline PNGs, asked with the official openai SDK:
the images, mask and fields arriving upstream as the client sent them, gpt-image-1's
tokens (its input images' among them) and DALL-E's per-image prices billed, the events of
a streamed edit, the route's input guardrails on the prompt, a form past its cap (413),
and each bad form's 400."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.openai_image_edits import IMAGE_TOKENS
from .painters_gateway import PROMPT, UPLOAD_CAP, Painters

pytestmark = pytest.mark.e2e

# Every byte value, CRLFs and dashes among them: what a multipart reader could mangle.
FIRST = bytes(range(256)) * 8 + b"\r\n--boundary\r\n"
SECOND = bytes(reversed(range(256))) * 4
MASK = b"\x89PNG\r\n\x1a\n" + bytes(range(0, 256, 3))
PROMPT_TOKENS = len(PROMPT.split())


def _sent(painters: Painters) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The last edit the upstream received: its fields, and its files."""
    seen = dict(painters.upstream.script.requests[-1])
    files = seen.pop("files")
    assert isinstance(files, list)
    return seen, files


def test_the_images_mask_and_fields_arrive_upstream_as_sent_and_tokens_are_billed(
    painters: Painters,
) -> None:
    raw = painters.client.images.with_raw_response.edit(
        model="gpt-image", image=[("first.png", FIRST, "image/png"),
                                  ("second.webp", SECOND, "image/webp")],
        mask=("mask.png", MASK, "image/png"), prompt=PROMPT, n=2, size="1024x1536",
        quality="high", input_fidelity="high", background="opaque")
    answer = raw.parse()
    fields, files = _sent(painters)
    assert fields == {"model": "gpt-image-1", "prompt": PROMPT, "n": "2", "size": "1024x1536",
                      "quality": "high", "input_fidelity": "high", "background": "opaque"}
    assert files == [
        {"field": "image[]", "filename": "first.png", "content_type": "image/png",
         "data": FIRST},
        {"field": "image[]", "filename": "second.webp", "content_type": "image/webp",
         "data": SECOND},
        {"field": "mask", "filename": "mask.png", "content_type": "image/png", "data": MASK}]
    tokens_in = PROMPT_TOKENS + 2 * IMAGE_TOKENS  # the images sent are input tokens
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (tokens_in, 2 * 272)
    assert answer.data is not None and len(answer.data) == 2
    request_id = raw.headers["x-request-id"]
    row = painters.server.ledger_row(request_id)
    assert (row["route"], row["status"], row["tokens_in"], row["tokens_out"]) == (
        "gpt-image", 200, tokens_in, 2 * 272)
    assert row["cost"] == pytest.approx((tokens_in * 5 + 2 * 272 * 40) / 1_000_000)
    line = painters.server.access_line(request_id)
    assert line is not None
    assert (line["endpoint"], line["route"], line["status"]) == ("image_edits", "gpt-image", 200)


def test_a_dall_e_edit_is_billed_per_image_and_azure_is_sent_no_model(
    painters: Painters,
) -> None:
    raw = painters.client.images.with_raw_response.edit(
        model="dall-e-3", image=("first.png", FIRST, "image/png"), prompt=PROMPT,
        size="1792x1024", response_format="url")
    answer = raw.parse()
    assert answer.data is not None and (answer.data[0].url or "").startswith("https://")
    fields, files = _sent(painters)
    assert fields == {"model": "dall-e-3", "prompt": PROMPT, "size": "1792x1024",
                      "response_format": "url"}
    assert [(file["field"], file["data"]) for file in files] == [("image", FIRST)]
    assert painters.server.ledger_row(raw.headers["x-request-id"])["cost"] == \
        pytest.approx(0.08)  # the size's own price

    painters.client.images.edit(model="azure", image=("first.png", FIRST, "image/png"),
                                prompt=PROMPT)
    fields, files = _sent(painters)
    assert fields == {"prompt": PROMPT}  # the deployment's URL names the model
    assert painters.upstream.script.headers[-1]["api-key"] == painters.upstream.api_key


def test_a_streamed_edit_passes_its_events_on_and_bills_the_completed_usage(
    painters: Painters,
) -> None:
    raw = painters.client.images.with_raw_response.edit(
        model="gpt-image", image=("first.png", FIRST, "image/png"), prompt=PROMPT,
        stream=True, partial_images=1)
    events = list(raw.parse())
    assert [event.type for event in events] == ["image_edit.partial_image",
                                                "image_edit.completed"]
    fields, _files = _sent(painters)
    assert (fields["stream"], fields["partial_images"]) == ("true", "1")
    row = painters.server.ledger_row(raw.headers["x-request-id"], wait_s=10)
    assert (row["status"], row["tokens_in"], row["tokens_out"]) == (
        200, PROMPT_TOKENS + IMAGE_TOKENS, 272)


def test_echo_edits_offline(painters: Painters) -> None:
    answer = painters.client.images.edit(model="local", image=("first.png", FIRST, "image/png"),
                                         prompt="a dot", n=2)
    assert answer.data is not None and len(answer.data) == 2
    assert all(base64.b64decode(image.b64_json or "").startswith(b"\x89PNG")
               for image in answer.data)
    events = list(painters.client.images.edit(
        model="local", image=("first.png", FIRST, "image/png"), prompt="a dot", stream=True))
    assert [event.type for event in events] == ["image_edit.completed"]


def test_the_prompt_goes_through_the_routes_input_guardrails(painters: Painters) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        painters.client.images.edit(model="guarded", image=("first.png", FIRST, "image/png"),
                                    prompt="paint sk-" + "a" * 24)
    assert caught.value.code == "guardrail_blocked" and "no-secrets" in caught.value.message
    assert painters.upstream.script.requests == []  # blocked before any call went out
    painters.client.images.edit(model="guarded", image=("first.png", FIRST, "image/png"),
                                prompt="a lighthouse for bob@example.com")
    fields, files = _sent(painters)
    assert "bob@example.com" not in fields["prompt"] and "lighthouse" in fields["prompt"]
    assert files[0]["data"] == FIRST


def test_a_form_past_the_upload_cap_is_a_413(painters: Painters) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        painters.client.images.edit(model="gpt-image", prompt=PROMPT,
                                    image=("big.png", b"\0" * UPLOAD_CAP, "image/png"))
    assert caught.value.status_code == 413
    assert painters.upstream.script.requests == []


_IMAGE = ("image", ("first.png", FIRST, "image/png"))
_MASK = ("mask", ("mask.png", MASK, "image/png"))


@pytest.mark.parametrize(("fields", "files", "param", "words"), [
    ({}, [], "image", "Missing required parameter: 'image'"),
    ({}, [_MASK], "image", "a mask is the part of an image to edit"),
    ({}, [("image[]", ("x.png", FIRST, "image/png"))] * 17, "image",
     "The upload has 17 images; an edit takes at most 16"),
    ({}, [_IMAGE, _MASK, _MASK], "mask", "more than one 'mask'"),
    ({}, [("photo", ("x.png", FIRST, "image/png"))], "photo",
     "goes in 'image' or 'image[]' or 'mask' or 'markup'"),
    ({}, [("image", ("x.png", b"", "image/png"))], "image", "'image' ('x.png') is empty"),
    ({"n": "two"}, [_IMAGE], "n", "expected an integer"),
    # A value or a filename (up to 1 MiB, and the parser's header bound) is cut short.
    ({"n": "7" * 100_000}, [_IMAGE], "n", "... (100000 characters); expected an integer"),
    ({}, [("image", ("x" * 1_000, b"", "image/png"))], "image",
     "... (1000 characters)) is empty"),
    ({"n": "11"}, [_IMAGE], "n", "less than or equal to 10"),
    ({"size": "big"}, [_IMAGE], "size", "'size'"),
    ({"prompt": ""}, [_IMAGE], "prompt", "at least 1 character"),
    ({"input_fidelity": "max"}, [_IMAGE], "input_fidelity", "'high' or 'low'"),
    ({"stream": "true", "n": "2"}, [_IMAGE], "n", "is one image"),
    ({"stream": "maybe"}, [_IMAGE], "stream", "expected true or false"),
])
def test_bad_forms_are_refused_naming_the_field(
    painters: Painters, fields: dict[str, str], files: list[tuple[str, Any]], param: str,
    words: str,
) -> None:
    response = painters.post_edit({"model": "gpt-image", "prompt": PROMPT, **fields}, files)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], words in error["message"]) == (param, True), error
    assert painters.upstream.script.requests == []  # refused before any call went out


def test_a_body_that_is_not_a_form_is_refused(painters: Painters) -> None:
    response = httpx.post(f"{painters.server.base_url}/v1/images/edits", timeout=10,
                          json={"model": "gpt-image", "prompt": PROMPT},
                          headers={"authorization": f"Bearer {DEV_KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"
    assert "must be multipart/form-data" in response.json()["error"]["message"]
