"""What a request is held as before the call: its prompt's tokens as providers bill them."""

from __future__ import annotations

from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.completions_wire import parse, to_chat_request
from aigw.runtime.tokens import TokenCounter

PICTURE = "data:image/png;base64," + "iVBORw0KGgo" * 2000  # its bytes are not read


def _request(*parts: dict[str, object]) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is in these?"}, *parts]}]})


def test_images_in_a_prompt_are_held_as_providers_bill_them(counter: TokenCounter) -> None:
    text_only = counter.count_request(_request())
    high = {"type": "image_url", "image_url": {"url": PICTURE}}
    low = {"type": "image_url", "image_url": {"url": PICTURE, "detail": "low"}}
    # OpenAI's price of a 1024x1024 image at high detail, and of any at low; the base64
    # text itself is not counted as words (it would be ~7,000 tokens here).
    assert counter.count_request(_request(high)) == text_only + 765
    assert counter.count_request(_request(high, low, high)) == text_only + 765 * 2 + 85


def test_a_completions_prompt_of_token_ids_is_its_count(counter: TokenCounter) -> None:
    """One token an id, exactly: no chat message's overhead, nor a tokenizer's count of
    the ids written out; a ``suffix`` is text, counted as such."""
    ids = parse(b'{"model": "m", "prompt": [[' + b", ".join([b"1234567"] * 500) + b"]]}")
    assert counter.count_request(to_chat_request(ids)) == 500
    fill = parse(b'{"model": "m", "prompt": [1, 2, 3], "suffix": "return total"}')
    assert counter.count_request(to_chat_request(fill)) == 3 + counter.count("return total")
