"""A real ``aigw serve`` process serving POST /v1/images/generations over OpenAI's and
Azure OpenAI's image APIs (the OpenAI fake) and echo's offline PNGs, asked with the
official openai SDK: URLs and base64, ``n`` and the size billed per image in the ledger
and the access log, gpt-image-1's tokens, a fallback between two upstreams, a route of
another kind refused, and each bad request's 400."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from .painters_gateway import PROMPT, Painters

pytestmark = pytest.mark.e2e


def test_urls_are_answered_and_n_images_billed_at_their_size(painters: Painters) -> None:
    raw = painters.client.images.with_raw_response.generate(
        model="dall-e-3", prompt=PROMPT, n=2, size="1792x1024")
    answer = raw.parse()
    assert answer.data is not None and len(answer.data) == 2
    assert all((image.url or "").startswith("https://images.fake.test/")
               for image in answer.data)
    assert answer.data[0].revised_prompt == f"A picture of {PROMPT}"
    assert answer.data[0].b64_json is None and answer.usage is None
    assert painters.upstream.script.requests[-1] == {
        "model": "dall-e-3", "prompt": PROMPT, "n": 2, "size": "1792x1024"}
    request_id = raw.headers["x-request-id"]
    row = painters.server.ledger_row(request_id)
    assert (row["route"], row["deployment"], row["status"]) == ("dall-e-3", "dall-e-3", 200)
    assert row["cost"] == pytest.approx(2 * 0.08)  # the size's own price, twice
    line = painters.server.access_line(request_id)
    assert line is not None
    assert (line["endpoint"], line["route"], line["status"]) == ("images", "dall-e-3", 200)
    assert line["cost"] == pytest.approx(0.16)

    unpriced = painters.client.images.with_raw_response.generate(
        model="dall-e-3", prompt=PROMPT, size="1024x1024")
    assert painters.server.ledger_row(unpriced.headers["x-request-id"])["cost"] == \
        pytest.approx(0.04)  # per_image


@pytest.mark.parametrize(("model", "cost"), [
    ("dall-e-3", 2 * 0.08), ("gpt-image", (4 * 5 + 2 * 272 * 40) / 1e6)])
def test_an_upstream_that_draws_more_than_n_is_billed_n(
    painters: Painters, model: str, cost: float,
) -> None:
    """The hold was for ``n`` images: the first ``n`` are passed on and billed (the
    output tokens in proportion), the excess logged."""
    painters.upstream.extra_images = 3
    raw = painters.client.images.with_raw_response.generate(
        model=model, prompt=PROMPT, n=2, size="1792x1024")
    answer = raw.parse()
    assert answer.data is not None and len(answer.data) == 2
    row = painters.server.ledger_row(raw.headers["x-request-id"])
    assert (row["status"], row["cost"]) == (200, pytest.approx(cost))
    assert "answered 5 images where 2 were asked" in painters.server.log


def test_base64_is_answered_when_asked(painters: Painters) -> None:
    answer = painters.client.images.generate(model="dall-e-3", prompt=PROMPT,
                                             response_format="b64_json", quality="hd",
                                             style="natural")
    assert answer.data is not None and answer.data[0].url is None
    assert base64.b64decode(answer.data[0].b64_json or "") == f"fake image 0 of {PROMPT}".encode()
    sent = painters.upstream.script.requests[-1]
    assert (sent["response_format"], sent["quality"], sent["style"]) == ("b64_json", "hd",
                                                                         "natural")


def test_gpt_image_usage_is_passed_on_and_billed_in_tokens(painters: Painters) -> None:
    raw = painters.client.images.with_raw_response.generate(
        model="gpt-image", prompt=PROMPT, n=3, size="1024x1536", background="opaque")
    answer = raw.parse()
    assert answer.usage is not None
    prompt_tokens = len(PROMPT.split())
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (prompt_tokens, 3 * 272)
    assert (answer.size, answer.quality, answer.output_format) == ("1024x1536", "high", "png")
    assert answer.data is not None and all(image.b64_json for image in answer.data)
    row = painters.server.ledger_row(raw.headers["x-request-id"])
    assert (row["tokens_in"], row["tokens_out"]) == (prompt_tokens, 3 * 272)
    assert row["cost"] == pytest.approx((prompt_tokens * 5 + 3 * 272 * 40) / 1_000_000)


def test_azure_is_called_at_its_deployments_url(painters: Painters) -> None:
    answer = painters.client.images.generate(model="azure", prompt=PROMPT)
    assert answer.data is not None and len(answer.data) == 1
    assert painters.upstream.script.requests[-1] == {"prompt": PROMPT, "n": 1}  # no model
    assert painters.upstream.script.headers[-1]["api-key"] == painters.upstream.api_key


def test_a_failing_upstream_falls_back_to_the_next_member(painters: Painters) -> None:
    painters.upstream.script.actions.append(Action(status=500))
    raw = painters.client.images.with_raw_response.generate(model="draw", prompt=PROMPT)
    assert (raw.headers["x-aigw-deployment"], raw.headers["x-aigw-attempts"]) == (
        "azure-dalle", "2")
    assert len(painters.upstream.script.requests) == 2  # dall-e-3 failed, then Azure
    row = painters.server.ledger_row(raw.headers["x-request-id"])
    assert (row["deployment"], row["cost"]) == ("azure-dalle", pytest.approx(0.05))


def test_echo_draws_pngs_offline(painters: Painters) -> None:
    answer = painters.client.images.generate(model="local", prompt=PROMPT, n=2)
    assert answer.data is not None
    pngs = [base64.b64decode(image.b64_json or "") for image in answer.data]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs) and pngs[0] != pngs[1]


def test_a_route_of_another_kind_is_refused_both_ways(painters: Painters) -> None:
    with pytest.raises(openai.BadRequestError) as drawn:
        painters.client.images.generate(model="chat", prompt=PROMPT)
    assert "'chat' is a chat model; it does not serve image" in str(drawn.value)
    with pytest.raises(openai.BadRequestError) as chatted:
        painters.client.chat.completions.create(
            model="dall-e-3", messages=[{"role": "user", "content": "hi"}])
    assert "dall-e-3 is an image model" in str(chatted.value)
    assert painters.upstream.script.requests == []


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"n": 0}, 400, "n", "greater than or equal to 1"),
    ({"n": 11}, 400, "n", "less than or equal to 10"),
    ({"n": "2"}, 400, "n", "valid integer"),
    ({"prompt": ""}, 400, "prompt", "at least 1 character"),
    ({"prompt": "x" * 32_001}, 400, "prompt", "at most 32000 characters"),
    ({"prompt": None}, 400, "prompt", "valid string"),
    ({"size": "big"}, 400, "size", "'size'"),
    ({"response_format": "png"}, 400, "response_format", "'url' or 'b64_json'"),
    ({"quality": "ultra"}, 400, "quality", "'quality'"),
    ({"stream": True, "n": 2}, 400, "n", "A streamed image ('stream': true) is one image"),
    ({"partial_images": 4}, 400, "partial_images", "less than or equal to 3"),
    ({"model": "local", "prompt": " ".join(["word"] * 20)}, 422, "prompt",
     "echo-image takes a prompt of at most 16 tokens; this one has 20"),
])
def test_bad_requests_are_refused_naming_the_field(
    painters: Painters, body: dict[str, Any], status: int, param: str, words: str,
) -> None:
    response = painters.post(**{"model": "dall-e-3", "prompt": PROMPT, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert painters.upstream.script.requests == []  # refused before any call went out
    missing = painters.post(model="dall-e-3")
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "prompt")


def test_a_streamed_gpt_image_passes_its_events_on_and_bills_the_completed_usage(
    painters: Painters,
) -> None:
    raw = painters.client.images.with_raw_response.generate(
        model="gpt-image", prompt=PROMPT, stream=True, partial_images=2, size="1024x1536")
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = list(raw.parse())
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]  # type: ignore[union-attr]
    done = events[-1]
    assert done.type == "image_generation.completed" and done.size == "1024x1536"
    assert done.usage.output_tokens == 272
    sent = painters.upstream.script.requests[-1]
    assert (sent["stream"], sent["partial_images"], sent["n"]) == (True, 2, 1)
    prompt_tokens = len(PROMPT.split())
    row = painters.server.ledger_row(raw.headers["x-request-id"], wait_s=10)
    assert (row["status"], row["tokens_in"], row["tokens_out"]) == (200, prompt_tokens, 272)
    assert row["cost"] == pytest.approx((prompt_tokens * 5 + 272 * 40) / 1_000_000)


def test_echo_streams_an_image_offline(painters: Painters) -> None:
    events = list(painters.client.images.generate(model="local", prompt="a dot", stream=True,
                                                  partial_images=1))
    assert [event.type for event in events] == ["image_generation.partial_image",
                                                "image_generation.completed"]
    assert base64.b64decode(events[-1].b64_json).startswith(b"\x89PNG")


def test_a_client_gone_before_the_images_is_billed_the_images_asked_for(
    painters: Painters,
) -> None:
    """The images of a call cut short were most likely drawn and billed: its estimate is
    them at their size, not the prompt's tokens (which a per-image price bills at 0)."""
    painters.upstream.script.actions.append(Action(delay_s=3))
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{painters.server.base_url}/v1/images/generations", timeout=0.5,
                   headers={"authorization": f"Bearer {DEV_KEY}"},
                   json={"model": "dall-e-3", "prompt": PROMPT, "n": 2, "size": "1792x1024"})
    rows = painters.server.ledger_rows(2)
    assert [(row["status"], row["estimated"]) for row in rows] == [(499, 0), (499, 1)]
    assert rows[1]["cost"] == pytest.approx(2 * 0.08)
