"""What a request is held as before the call: its prompt's tokens as providers bill them."""

from __future__ import annotations

import base64

from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.completions_wire import parse, to_chat_request
from aigw.runtime.tokens import TokenCounter, audio_prompt_tokens

from ..media import wav_base64

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


def test_audio_in_a_prompt_is_held_at_ten_tokens_a_second(counter: TokenCounter) -> None:
    """A WAV file's seconds at the byte rate its header gives; an MP3's (any other's) at
    16,000 bytes a second, from its base64 length: 10 audio tokens a second, held at the
    audio input price (``audio_prompt_tokens``). They were held as no tokens at all."""
    text_only = counter.count_request(_request())
    wav = {"type": "input_audio", "input_audio": {"data": wav_base64(3.0, 24_000), "format": "wav"}}
    mp3 = {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"\xff" * 32_000).decode(), "format": "mp3"}}
    assert counter.count_request(_request(wav)) == text_only + 31  # 3 s and its header
    assert counter.count_request(_request(mp3)) == text_only + 20  # 2 s at 128 kbit/s
    both = _request(wav, mp3)
    assert counter.count_request(both) == text_only + 51
    assert audio_prompt_tokens(both.messages) == 51
    assert audio_prompt_tokens(_request().messages) == 0


def test_a_completions_prompt_of_token_ids_is_its_count(counter: TokenCounter) -> None:
    """One token an id, exactly: no chat message's overhead, nor a tokenizer's count of
    the ids written out; a ``suffix`` is text, counted as such."""
    ids = parse(b'{"model": "m", "prompt": [[' + b", ".join([b"1234567"] * 500) + b"]]}")
    assert counter.count_request(to_chat_request(ids)) == 500
    fill = parse(b'{"model": "m", "prompt": [1, 2, 3], "suffix": "return total"}')
    assert counter.count_request(to_chat_request(fill)) == 3 + counter.count("return total")
